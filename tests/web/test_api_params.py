"""The API's published patterns take exactly what the server's own rules take (catalogue.web.params)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from catalogue import export as exporting
from catalogue import search
from catalogue.web import actions, params


def test_the_side_pattern_is_the_re_render_rule_number_by_number():
    side = re.compile(params.SIDE_PATTERN)
    for number in range(0, 20000):
        assert bool(side.fullmatch(str(number))) == (64 <= number <= actions.MAX_SIDE and number % 8 == 0), number
    assert not side.fullmatch("0064")  # no leading zeros in the published form


def test_a_size_the_re_render_pattern_takes_is_one_parse_sizes_takes():
    for text in ("64x64", "2048x1024", "16384x16384", "65x64", "64x16392", "64X64", " 64x64", "64x64\n"):
        published = bool(re.fullmatch(params.RERENDER_SIZE_PATTERN, text))
        try:
            actions.parse_sizes([text])
            taken = True
        except actions.ActionError:
            taken = False
        assert not published or taken, text  # the server is never tighter than the spec
    with pytest.raises(ValueError, match="multiple of 8"):
        params._rerender_size("100x72")


@pytest.mark.parametrize("text", ["1024x1024", "1x99999", "0x0", "1024X1024", " 1024x1024", "1024x1024\n", "١٢x١٢",
                                  "123456x1", "x", ""])
def test_the_size_filter_takes_what_its_pattern_says(text):
    published = bool(re.fullmatch(search.SIZE_PATTERN, text))
    try:
        search.parse_size(text)
        taken = True
    except search.SearchError:
        taken = False
    assert published == taken


def test_cursors_the_server_makes_match_the_pattern_and_others_are_refused():
    ulid = "01J9Z8W3Q4R5S6T7V8X9Y0ZABC"
    for cursor, kind in ((search.encode_cursor(ulid), search.ID_CURSOR), (search.encode_cursor("42", "f"), "f")):
        assert re.fullmatch(search.CURSOR_PATTERN, cursor)
        assert str(search.decode_cursor(cursor, kind)) in (ulid, "42")
    for forged in ("../../etc", "i" + ulid.lower(), "f0", "f" + "9" * 19, "x" + ulid, "i" + ulid + "\n"):
        assert not re.fullmatch(search.CURSOR_PATTERN, forged)
        with pytest.raises(search.SearchError):
            search.decode_cursor(forged, forged[0] if forged[0] in "if" else "i")


@pytest.mark.parametrize("template", ["{render_id}", "{team}/{project}/{asset_id}_{seed}_{width}x{height}",
                                      "a{{b}}{seed}", "plain", "{nope}", "{seed:>5}", "{seed!r}", "{", "}{seed}",
                                      "{{seed}}", "{seed}{"])
def test_the_template_pattern_is_check_template(template):
    published = bool(re.fullmatch(params.TEMPLATE_PATTERN, template))
    try:
        exporting.check_template(template)
        taken = True
    except exporting.ExportError:
        taken = False
    assert published == taken, template


def test_the_template_pattern_also_leaves_out_nul():
    """The one rule on top of check_template: PostgreSQL stores the template in JSON, which holds no NUL."""
    exporting.check_template("{seed}\x00")
    assert not re.fullmatch(params.TEMPLATE_PATTERN, "{seed}\x00")


def test_the_destination_pattern_names_this_servers_folders(tmp_path):
    root = tmp_path / "exports"
    pattern = re.compile(params.destination_pattern([root]))
    for taken in (str(root), f"{root}/", f"{root}/a/b", f"file://{root}/x", f"{root}/.hidden/...", "s3://bucket/x",
                  "s3://my.bucket-1"):
        assert pattern.fullmatch(taken), taken
    for refused in (f"{root}/../x", f"{root}/./x", f"{root}x", "/etc", "~root/x", "relative", "s3://A/x",
                    f"{root}/a\x00b", f"{root}//x", f"{Path(root).parent}"):
        assert not pattern.fullmatch(refused), refused
