"""The planner's memory estimate against the peak actually measured on the CPU.

Measured in a fresh process with glibc told to return freed memory at once (mmap for every large
block), so the sampled RSS above the level before the render is the render's own peak; the
estimate's weights part is left out on both sides (the weights are loaded before the render).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SCRIPT = r"""
import json
from linfusion_engine import Engine, RenderRequest, planner
from linfusion_engine.registry import ModelRegistry
from linstudio.settings import get_settings
out = []
for model, strategy, width, height in [("tiny-sd15", "direct", 512, 512), ("tiny-sd15", "sdedit", 256, 256),
                                       ("tiny-sdxl", "direct", 384, 384)]:
    engine = Engine(model, device="cpu", registry=ModelRegistry.from_settings(get_settings()))
    engine.load()
    meta = engine.render(RenderRequest("x", width=width, height=height, steps=1, strategy=strategy)).metadata
    weights = planner.PROFILES["tiny"].weights_bytes * 2  # fp32
    out.append({"case": f"{model} {strategy} {width}x{height}", "measured": meta["memory"]["measured_rss_bytes"],
                "estimated": meta["memory"]["estimate_bytes"] - weights})
print(json.dumps(out))
"""


def test_estimate_is_within_a_factor_of_two_of_the_measured_peak(tmp_path):
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0",
           "LINSTUDIO_HOME": os.environ.get("LINSTUDIO_HOME", str(tmp_path))}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    for case in json.loads(done.stdout.strip().splitlines()[-1]):
        ratio = case["estimated"] / case["measured"]
        assert 0.5 <= ratio <= 2.0, f"{case['case']}: estimated {case['estimated']}, measured {case['measured']}"
