"""Keeps bench/gallery_bench.py honest: the same script, at a tiny size, runs end to end with no errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gallery_bench.py"


def test_gallery_bench_runs_at_a_tiny_size():
    spec = importlib.util.spec_from_file_location("gallery_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    (result,) = bench.main(["--sizes", "30,120", "--backends", "sqlite", "--requests", "12", "--clients", "4",
                            "--load-seconds", "1", "--no-write"])
    assert set(result["sizes"]) == {30, 120}
    for size in (30, 120):
        assert set(result["sizes"][size]) == {"search", "gallery", "asset"}
        assert all(0 < p50 <= p95 for p50, p95 in result["sizes"][size].values())
    assert result["load"]["requests"] > 0 and result["load"]["errors"] == 0, result["load"]["error_samples"]
    text = bench.report([result], [30, 120], 4, 1, "cmd")
    assert "| sqlite | search |" in text and "| sqlite | 0 |" not in text
