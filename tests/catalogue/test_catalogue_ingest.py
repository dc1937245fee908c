"""Ingest: the PNG keeps its settings, the thumbnail is small, checksums hold, re-runs change nothing."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image
from sqlalchemy import func, select

from catalogue import read_png_record
from catalogue.models import Render, UploadIntent
from catalogue.thumbs import THUMB_MAX_SIDE


class CountingStore:
    """Wraps a store and counts writes, to prove an idempotent ingest uploads nothing."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.url = inner.url
        self.puts: list[str] = []

    def put(self, key, data, content_type):
        self.puts.append(key)
        self.inner.put(key, data, content_type)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _rows(cat, model) -> int:
    with cat.transaction() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_round_trip_png_keeps_a1111_parameters_and_our_record(cat, rendered, make_record):
    record = make_record(prompt="a neon street at night, rain", negative_prompt="blurry, lowres", seed=1234)
    render_id, full = rendered(record)

    render = cat.render(render_id)
    png = cat.store.get(render["object_key"])
    image = Image.open(io.BytesIO(png))
    parameters = image.text["parameters"]
    prompt_line, negative_line, settings_line = parameters.split("\n")
    assert prompt_line == "a neon street at night, rain"
    assert negative_line == "Negative prompt: blurry, lowres"
    assert "Steps: 4," in settings_line and "Sampler: DDIM," in settings_line and "CFG scale: 7.5," in settings_line
    assert "Seed: 1234," in settings_line and "Size: 64x64," in settings_line and "Model: tiny-sd15," in settings_line
    assert f"Model hash: {record['model_identity'][7:17]}," in settings_line

    embedded = read_png_record(png)
    assert embedded == {**full, "render_id": render_id, "worker": "w1", "created_at": embedded["created_at"]}
    assert "prompt" not in image.text and "workflow" not in image.text  # ComfyUI's keys stay free
    assert image.size == (64, 64) and image.getpixel((0, 0)) == (200, 30, 30)  # pixels untouched

    assert render["sha256"] == hashlib.sha256(png).hexdigest()
    assert render["size_bytes"] == len(png)
    assert render["object_uri"] == cat.store.uri(render["object_key"])
    assert render["record"] == embedded


def test_thumbnail_is_a_small_webp(cat, rendered, make_record, make_png):
    render_id, _ = rendered(make_record(width=640, height=320), png=make_png(size=(640, 320)))
    render = cat.render(render_id)
    thumb = Image.open(io.BytesIO(cat.store.get(render["thumb_key"])))
    assert thumb.format == "WEBP"
    assert max(thumb.size) <= THUMB_MAX_SIDE
    assert thumb.size == (256, 128)
    assert render["thumb_uri"].endswith(".webp")
    assert (render["width"], render["height"]) == (640, 320)


def test_thumbnail_keeps_transparency(cat, rendered, make_png):
    render_id, _ = rendered(png=make_png(color=(0, 0, 255, 0), mode="RGBA"))
    thumb = Image.open(io.BytesIO(cat.store.get(cat.render(render_id)["thumb_key"])))
    assert thumb.mode == "RGBA" and thumb.getpixel((0, 0))[3] == 0


def test_second_ingest_of_a_job_returns_the_first_render_and_uploads_nothing(cat, rendered, make_png):
    render_id, record = rendered()
    counting = CountingStore(cat.store)
    cat.store = counting

    again = cat.ingest(record["key"], make_png(color=(0, 255, 0)), record, "w2")

    assert again == render_id
    assert counting.puts == []
    assert _rows(cat, Render) == 1
    assert cat.check().ok


def test_object_keys_follow_the_job_and_content(cat, rendered, make_record):
    render_id, record = rendered(make_record("hero/../../etc", seed=3))
    render = cat.render(render_id)
    stem = f"film/night-city/hero_.._.._etc/{record['key'][:16]}-{render['sha256'][:12]}"
    assert render["object_key"] == f"renders/{stem}.png"
    assert render["thumb_key"] == f"thumbs/{stem}.webp"


def test_ingest_marks_the_job_done_and_clears_the_lease(cat, rendered):
    _, record = rendered()
    job = cat.job(record["key"])
    assert (job["state"], job["lease_owner"], job["lease_expires_at"]) == ("done", None, None)
    assert _rows(cat, UploadIntent) == 0


def test_a_late_worker_loses_to_the_render_already_committed(cat, plan, make_record, make_png, clock):
    """Worker w1's lease expired, w2 took the job; w1 finishes first. w2's later ingest keeps w1's render."""
    (record,) = plan(make_record())
    assert cat.claim(record["key"], "w1", 60)
    clock.advance(61)
    assert cat.claim(record["key"], "w2", 60)
    first = cat.ingest(record["key"], make_png(), record, "w1")
    second = cat.ingest(record["key"], make_png(color=(1, 2, 3)), record, "w2")
    assert second == first
    assert cat.render(first)["worker"] == "w1"
    assert _rows(cat, Render) == 1
    assert cat.check().ok


def test_ingest_of_an_unplanned_job_names_it(cat, make_png):
    with pytest.raises(KeyError, match="job 'k-unknown' is not planned"):
        cat.ingest("k-unknown", make_png(), {}, "w1")


def test_ingest_refuses_bytes_that_are_not_a_png(cat, plan, make_record):
    (record,) = plan(make_record())
    with pytest.raises(ValueError, match=f"job {record['key']}: render is not a PNG"):
        cat.ingest(record["key"], b"GIF89a...", record, "w1")
    assert _rows(cat, UploadIntent) == 0


def test_renders_list_newest_first_with_keyset_paging_and_filters(cat, rendered, make_record, clock):
    ids = []
    for seed in range(5):
        clock.advance(1)
        ids.append(rendered(make_record("hero", seed=seed))[0])
    clock.advance(1)
    other_id, _ = rendered(make_record("ship", seed=0, project="space-opera"))

    first_page = cat.renders(team="film", project="night-city", limit=2)
    assert [r["render_id"] for r in first_page] == [ids[4], ids[3]]
    second_page = cat.renders(team="film", project="night-city", limit=2, after=first_page[-1]["render_id"])
    assert [r["render_id"] for r in second_page] == [ids[2], ids[1]]
    assert [r["render_id"] for r in cat.renders(limit=100)] == [other_id, *reversed(ids)]
    assert cat.renders(project="space-opera")[0]["asset_id"] == "ship"
    assert cat.renders(team="nobody") == []


def test_forget_renders_deletes_rows_and_objects_and_replans(cat, rendered, plan, make_record, make_png):
    parent_id, parent = rendered(make_record(seed=1))
    child_id, _ = rendered(make_record(seed=2, parent_render_id=parent_id))
    parent_render = cat.render(parent_id)

    assert cat.forget_renders([parent["key"], "never-rendered"]) == [parent_id]

    assert cat.render(parent_id) is None
    assert not cat.store.exists(parent_render["object_key"])
    assert not cat.store.exists(parent_render["thumb_key"])
    assert cat.job_states([parent["key"]]) == {parent["key"]: "planned"}
    assert cat.render(child_id)["parent_render_id"] is None
    assert cat.check().ok
    assert cat.claim(parent["key"], "w1", 60)
    new_id = cat.ingest(parent["key"], make_png(), parent, "w1")
    assert new_id != parent_id and cat.check().ok
