"""Fixtures for the catalogue tests: an open catalogue on each backend, a fake clock, tiny inputs.

`cat` runs every test that uses it twice (see `catalogue_urls` in tests/services.py): on SQLite +
a folder, and on PostgreSQL + SeaweedFS S3 (marked `services`).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from PIL import Image

from catalogue import Catalogue
from clocks import ManualClock as FakeClock  # noqa: F401  (the name these tests use)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC))


@pytest.fixture
def cat(catalogue_urls, clock) -> Catalogue:
    """A migrated, empty catalogue on the backend under test, with the fake clock."""
    catalogue = Catalogue.open(catalogue_urls.database_url, catalogue_urls.store_url, clock=clock)
    catalogue.migrate()
    yield catalogue
    catalogue.close()


def tiny_png(color: tuple[int, ...] = (200, 30, 30), size: tuple[int, int] = (64, 64), mode: str = "RGB") -> bytes:
    """A small PNG as an engine would hand it over (no metadata)."""
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def make_png() -> Callable[..., bytes]:
    return tiny_png


def job_record(asset_id: str = "hero", seed: int = 1, **overrides) -> dict:
    """A record shaped like linstudio_jobs' JobSpec.to_record(), with a key derived from its content."""
    record = {
        "team": "film",
        "project": "night-city",
        "asset_id": asset_id,
        "prompt": "a neon street at night, rain",
        "negative_prompt": "blurry, lowres",
        "seed": seed,
        "width": 64,
        "height": 64,
        "model": "tiny-sd15",
        "model_identity": "sha256:" + hashlib.sha256(b"tiny-sd15").hexdigest(),
        "steps": 4,
        "guidance": 7.5,
        "scheduler": "ddim",
        "attention": "linear",
        "strategy": "direct",
        "tileable": False,
        "tags": ["street", "night"],
        "conditioning": {},
        "parent_render_id": None,
        "manifest_path": "film/night-city.yaml",
        "manifest_line": 12,
    }
    record.update(overrides)
    if "key" not in overrides:
        identity = f"{record['team']}/{record['project']}/{record['asset_id']}/{record['seed']}/{record['prompt']}"
        record["key"] = hashlib.sha256(identity.encode()).hexdigest()
    return record


@pytest.fixture
def make_record() -> Callable[..., dict]:
    return job_record


@pytest.fixture
def plan(cat) -> Callable[..., list[dict]]:
    """plan(record, ...) -> the records, planned under one new submission."""

    def _plan(*records: dict) -> list[dict]:
        first = records[0]
        submission = cat.create_submission(first["team"], first["project"], first["manifest_path"], "0" * 64,
                                           len(records))
        cat.plan_jobs(submission, list(records))
        return list(records)

    return _plan


@pytest.fixture
def rendered(cat, plan) -> Callable[..., tuple[str, dict]]:
    """rendered(record=None, png=None, worker='w1') -> (render_id, record): planned, claimed and ingested."""

    def _rendered(record: dict | None = None, png: bytes | None = None, worker: str = "w1") -> tuple[str, dict]:
        record = record or job_record()
        plan(record)
        assert cat.claim(record["key"], worker, 600)
        full = {**record, "engine": {"name": "tiny", "attention": "linear"}, "timings": {"render_s": 0.25}}
        return cat.ingest(record["key"], png or tiny_png(), full, worker), full

    return _rendered
