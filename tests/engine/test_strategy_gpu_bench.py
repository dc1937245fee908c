"""bench/gpu.py: its real configurations are the published architectures, and its --tiny mode runs
end to end on the CPU, writing JSON after every size and a docs table between the markers."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model, unet_params, attn1_layers", [("sd15", 859_520_964, 16), ("sdxl", 2_567_463_684, 70)])
def test_real_configs_build_the_published_architectures(model, unet_params, attn1_layers):
    import torch

    from linfusion_engine.linfusion import self_attention_layers

    unet, vae, text_dim, sdxl = _bench().build(model, False, torch.device("meta"), torch.bfloat16)
    assert sum(p.numel() for p in unet.parameters()) == unet_params
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    assert len(self_attention_layers(unet)) == attn1_layers
    assert next(unet.parameters()).dtype == torch.bfloat16
    assert (text_dim, sdxl) == ((2048, True) if model == "sdxl" else (768, False))


def test_budget_prediction_is_linear_for_linfusion_and_quadratic_for_sdpa():
    bench = _bench()
    previous = {"tokens": 1000, "total_s": 2.0}
    assert bench.predict(previous, "linfusion", 4000) == pytest.approx(8.0)
    assert bench.predict(previous, "sdpa", 4000) == pytest.approx(32.0)
    assert bench.predict(None, "sdpa", 4000) is None


@pytest.mark.slow
def test_tiny_mode_runs_on_the_cpu_and_writes_every_size(tmp_path):
    out = tmp_path / "gpu.json"
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n<!-- bench:gpu -->\nold\n<!-- /bench:gpu -->\n\nafter\n")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--models", "sd15",
                           "--steps", "1", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [(r["width"], r["height"]) for r in report["results"]] == [(64, 64), (128, 128), (256, 128)]
    for row in report["results"]:
        assert row["linfusion"]["total_s"] > 0 and row["sdpa"]["total_s"] > 0
    bench = _bench()
    bench.update_docs(report, docs)
    text = docs.read_text()
    assert "old" not in text and "| sd15 | 256x128 |" in text and text.endswith("after\n")
