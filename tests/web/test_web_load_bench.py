"""Keeps bench/web_load_bench.py honest: the same script, tiny (4 clients, 2 s, 6 jobs), runs end to end
against the session's PostgreSQL with no errors and every job of the batch ingested."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "web_load_bench.py"
pytestmark = pytest.mark.services


def test_web_load_bench_runs_at_a_tiny_size(fresh_postgres_url):
    spec = importlib.util.spec_from_file_location("web_load_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--clients", "4", "--seconds", "2", "--jobs", "6", "--renders", "300", "--ingest-workers",
                         "2", "--postgres-url", fresh_postgres_url, "--no-write"])
    for phase in ("alone", "batch"):
        assert result[phase]["requests"] > 0 and result[phase]["errors"] == 0, result[phase]["error_samples"]
        assert set(result[phase]["kinds"]) == {"newest", "search", "gallery", "asset"}
    assert result["ingest"]["ingested"] == 6 and result["ingest"]["errors"] == []
    with pytest.raises(SystemExit, match="127.0.0.1"):
        bench.main(["--postgres-url", "postgresql+psycopg://u@db.example.com/x", "--no-write"])
    with pytest.raises(SystemExit, match="at most"):
        bench.main(["--clients", "5000", "--no-write"])
