"""bench/quality_bench.py stays runnable: one case, two prompts, two steps, read back and reported.

The bench's figures are reported in docs/quality.md, never asserted here (a threshold on them would
make CI flaky); this only checks that a run produces a well-formed result and report.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BENCH = Path(__file__).resolve().parents[1] / "bench" / "quality_bench.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("quality_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def test_a_tiny_run_reads_its_images_back_and_reports_them(tmp_path):
    bench = load_bench()
    results = tmp_path / "quality.json"
    bench.main(["--cases", "128-direct-softmax", "--prompts", "2", "--steps", "2", "--no-write",
                "--results", str(results)])
    found = json.loads(results.read_text())["128-direct-softmax"]
    assert found["prompts"] == 2 and found["steps"] == 2
    assert set(found["rates"]) == {"color", "shape", "position", "background", "geometry", "all", "single"}
    assert all(0.0 <= rate <= 1.0 and rate * 2 == round(rate * 2) for rate in found["rates"].values())
    text = bench.report(json.loads(results.read_text()), 2, 7.5)
    assert "| 128-direct-softmax | softmax (the base) | 2 | 2 |" in text
    assert "--cases 128-direct-softmax" in text


def test_the_wrap_seam_is_the_jump_across_the_edge_against_the_ordinary_column_step():
    bench = load_bench()
    ramp = np.tile(np.arange(0, 64, 1, dtype=np.uint8)[None, :, None], (8, 1, 3))  # (8, 64, 3): +1 per column
    seam = bench.wrap_seam(Image.fromarray(ramp))
    assert seam["columns"] == 1.0 and seam["wrap"] == 63.0
