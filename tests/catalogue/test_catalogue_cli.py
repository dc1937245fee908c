"""`linstudio catalogue ls / show / check` against the catalogue the settings name."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from catalogue import Catalogue
from linstudio.cli import app
from linstudio.settings import get_settings

LS_FIELDS = {"render_id", "job_key", "asset_id", "team", "project", "prompt", "seed", "width", "height", "model",
             "object_uri", "parent_render_id", "worker"}


@pytest.fixture
def configured(catalogue_urls, cat, monkeypatch):
    """Point the settings at the test's catalogue (the same one `cat` writes to)."""
    monkeypatch.setenv("LINSTUDIO_DATABASE_URL", catalogue_urls.database_url)
    monkeypatch.setenv("LINSTUDIO_STORE_URL", catalogue_urls.store_url)
    get_settings.cache_clear()
    yield cat
    get_settings.cache_clear()


def _invoke(*args: str):
    return CliRunner().invoke(app, ["catalogue", *args])


def test_ls_json_lists_renders_with_the_documented_fields(configured, rendered, make_record, clock):
    first_id, _ = rendered(make_record("hero", seed=1))
    clock.advance(1)
    second_id, _ = rendered(make_record("ship", seed=2, project="space-opera", parent_render_id=first_id))

    result = _invoke("ls", "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert [r["render_id"] for r in listed] == [second_id, first_id]
    assert all(LS_FIELDS <= set(r) for r in listed)
    assert listed[0]["parent_render_id"] == first_id and listed[0]["worker"] == "w1"

    only = json.loads(_invoke("ls", "--project", "night-city", "--json").output)
    assert [r["render_id"] for r in only] == [first_id]
    assert json.loads(_invoke("ls", "--team", "nobody", "--json").output) == []


def test_ls_human_and_limit(configured, rendered, make_record, clock):
    ids = []
    for seed in range(3):
        clock.advance(1)
        ids.append(rendered(make_record(seed=seed))[0])
    result = _invoke("ls", "--limit", "2")
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert [line.split()[0] for line in lines] == [ids[2], ids[1]]
    assert "film/night-city/hero" in lines[0]
    page_two = json.loads(_invoke("ls", "--json", "--after", ids[1]).output)
    assert [r["render_id"] for r in page_two] == [ids[0]]


def test_show_prints_one_render(configured, rendered):
    render_id, record = rendered()
    as_json = _invoke("show", render_id, "--json")
    assert as_json.exit_code == 0
    shown = json.loads(as_json.output)
    assert shown["render_id"] == render_id and shown["record"]["key"] == record["key"]
    human = _invoke("show", render_id)
    assert human.exit_code == 0 and f"render_id         {render_id}" in human.output


def test_show_of_an_unknown_id_exits_1(configured):
    result = _invoke("show", "01NOPE")
    assert result.exit_code == 1
    assert "no render '01NOPE'" in result.output


def test_check_exit_code_follows_consistency(configured, rendered):
    render_id, _ = rendered()
    ok = _invoke("check")
    assert ok.exit_code == 0 and "consistent" in ok.output

    configured.store.delete(configured.render(render_id)["thumb_key"])
    bad = _invoke("check", "--json")
    assert bad.exit_code == 1
    report = json.loads(bad.output)
    assert report["ok"] is False
    assert [p["render_id"] for p in report["missing_objects"]] == [render_id]


def test_a_bad_store_url_is_reported_without_a_traceback(isolated_home, monkeypatch):
    monkeypatch.setenv("LINSTUDIO_STORE_URL", "ftp://example.com/renders")
    get_settings.cache_clear()
    result = _invoke("ls")
    assert result.exit_code == 2
    assert "unsupported scheme 'ftp'" in result.output


def test_the_embedded_default_lives_under_linstudio_home(isolated_home):
    result = _invoke("check")
    assert result.exit_code == 0, result.output
    assert (isolated_home / "catalogue.db").is_file()
    assert (isolated_home / "store").is_dir()
    catalogue = Catalogue.from_settings(get_settings())
    try:
        assert catalogue.store.url == (isolated_home / "store").as_uri()
    finally:
        catalogue.close()
