"""Property-based fuzzing: whatever a manifest file holds, validation answers with errors, never a traceback.

Three sources of input: arbitrary text, arbitrary YAML-able structures, and random mutations of a
valid manifest (structural edits and raw character edits). Each goes through `load_manifests`, and
some through `linstudio validate`; every answer must be a set of well-formed one-line errors
(or a valid manifest whose jobs expand), within a deadline.
"""

from __future__ import annotations

import copy
import re
from datetime import timedelta
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from linstudio.cli import app
from manifests import expand_jobs, load_manifests
from linstudio.settings import get_settings

FUZZ = settings(max_examples=200, deadline=timedelta(seconds=2), derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

VALID = {
    "version": 1,
    "team": "film",
    "project": "night-city",
    "defaults": {"model": "tiny-sd15", "steps": 4, "guidance": 7.5, "scheduler": "euler", "attention": "auto",
                 "negative_prompt": "blurry", "sizes": ["64x64"]},
    "assets": [
        {"id": "skyline", "prompt": "neon skyline", "seeds": [1, 2], "sizes": ["128x64", "64x64"],
         "strategy": "auto", "tags": ["environment"], "tileable": False},
        {"id": "alley", "prompt": "rainy alley", "variants": 2,
         "ip_adapter": {"images": ["s3://refs-bucket/mood.png"], "scale": 0.6},
         "controlnet": [{"type": "canny", "image": "s3://refs-bucket/canny.png", "scale": 0.8}],
         "init_image": {"image": "s3://refs-bucket/paint.png", "strength": 0.5}},
    ],
}
VALID_TEXT = yaml.safe_dump(VALID, sort_keys=False)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["64x64", "1024", "16384x16384", "8x7", "sd15", "tiny-sd15", "euler", "x", "auto",
                     "../up.png", "/etc/passwd", "s3://b/k", "film", 1, 0, -1, 2**32, 64, 201]),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=12), children, max_size=4)),
    max_leaves=25,
)
FIELD_NAMES = ["version", "team", "project", "defaults", "assets", "id", "prompt", "model", "steps", "guidance",
               "scheduler", "attention", "negative_prompt", "sizes", "seeds", "variants", "strategy", "tags",
               "controlnet", "ip_adapter", "init_image", "lora", "tileable", "type", "image", "scale", "images",
               "strength", "mask", "name"]


def check_answer(path: Path) -> None:
    """The properties every answer must have."""
    result = load_manifests([path], settings=get_settings())
    text = path.read_bytes().decode("utf-8", "replace")
    lines_in_file = len(re.findall("\r\n|[\n\r\x85\u2028\u2029]", text)) + 1  # YAML's line breaks
    for error in result.errors:
        shown = str(error)
        assert "\n" not in shown and "Traceback" not in shown
        assert error.message and error.path == path
        assert error.line is None or 1 <= error.line <= lines_in_file, shown
    if result.errors:
        assert result.manifests == []
    for loaded in result.manifests:
        for job in expand_jobs(loaded):
            assert re.fullmatch(r"[0-9a-f]{64}", job.key)


@given(text=st.text(max_size=400))
@FUZZ
def test_any_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("text", numbered=True) / "m.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    check_answer(path)


@given(data=values)
@FUZZ
def test_any_yaml_structure(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("structure", numbered=True) / "m.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    check_answer(path)


def _paths(node, prefix=()):
    """Every location in a nested structure: dict keys and list indexes."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, prefix + (index,))


@st.composite
def mutated_manifests(draw):
    """The valid manifest after one to three random edits: replace, delete, rename, add or duplicate."""
    doc = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        locations = [p for p in _paths(doc) if p]
        where = draw(st.sampled_from(locations))
        parent = doc
        for part in where[:-1]:
            parent = parent[part]
        last = where[-1]
        action = draw(st.sampled_from(["replace", "delete", "rename", "add", "duplicate"]))
        if action == "replace":
            parent[last] = draw(values)
        elif action == "delete":
            del parent[last]
        elif action == "rename" and isinstance(parent, dict):
            new = draw(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=10)))
            parent[new] = parent.pop(last)
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(FIELD_NAMES))] = draw(values)
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
    return doc


@given(doc=mutated_manifests())
@FUZZ
def test_structural_mutations_of_a_valid_manifest(tmp_path_factory, doc):
    path = tmp_path_factory.mktemp("mutation", numbered=True) / "m.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    check_answer(path)


@st.composite
def edited_text(draw):
    """The valid manifest's YAML text with a few characters inserted, deleted or replaced."""
    text = VALID_TEXT
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.one_of(st.sampled_from([":", "-", " ", "\n", "[", "]", "{", "}", "&a", "*a", "!", "#", "'",
                                                '"', "|", ">", "<<: ", "\t", "---\n", "0x"]),
                               st.text(max_size=3)))
        if action == "insert":
            text = text[:at] + piece + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + len(piece):]
        else:
            text = text[:at] + piece + text[at + len(piece):]
    return text


@given(text=edited_text())
@FUZZ
def test_character_edits_of_a_valid_manifest(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("edit", numbered=True) / "m.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    check_answer(path)


@given(doc=st.one_of(mutated_manifests(), values), raw=edited_text(), use_raw=st.booleans())
@settings(max_examples=120, deadline=timedelta(seconds=3), derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
def test_cli_never_shows_a_traceback(tmp_path_factory, doc, raw, use_raw):
    path = tmp_path_factory.mktemp("cli", numbered=True) / "m.yaml"
    if use_raw:
        path.write_text(raw, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 1)
    assert "Traceback" not in result.output
    if result.exit_code == 1:
        *errors, summary = result.stderr.splitlines()
        assert errors and all(line.startswith(str(path)) for line in errors)
        assert re.fullmatch(r"1 manifest, 1 invalid, \d+ errors?", summary)
    else:
        assert result.stdout == "1 manifest, all valid\n"
