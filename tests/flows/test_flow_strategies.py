"""`linstudio run` end to end with `strategy` and `tileable` (the example
manifests/examples-conditioning/game-tileable.yaml): the jobs render through their strategy, and
the catalogue keeps what each render did (strategy, stages and strengths, tiling, memory)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.services

EXAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "examples-conditioning" / "game-tileable.yaml"


def test_linstudio_run_renders_strategies_and_tileable(prefect_api, backend, tmp_path):
    from catalogue import Catalogue
    from linstudio.settings import get_settings

    manifest = tmp_path / "game-tileable.yaml"
    shutil.copy(EXAMPLE, manifest)
    settings = get_settings()
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "LINSTUDIO_HOME": str(settings.home)}
    linstudio = str(Path(sys.executable).parent / "linstudio")
    done = subprocess.run([linstudio, "run", str(manifest)], env=env, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]

    catalogue = Catalogue.open(settings.resolved_database_url, settings.resolved_store_url)
    try:
        renders = {r["asset_id"]: catalogue.render(r["render_id"]) for r in catalogue.renders(limit=10)}
        assert set(renders) == {"moss-wall-tile", "cavern-panorama"}
        panorama = renders["cavern-panorama"]["engine"]
        assert panorama["strategy"] == "sdedit" and panorama["tileable"] == "x"
        assert [(s["width"], s["height"], s["strength"]) for s in panorama["stages"]] == [
            (128, 64, None), (256, 128, 0.4)]
        assert panorama["tiling"]["wrap_axes"] == "x"
        assert panorama["memory"]["estimate_bytes"] > 0 and panorama["memory"]["measured_rss_bytes"] is not None
        wall = renders["moss-wall-tile"]["engine"]  # 128 px on a 64 px model: 4x the area, so auto -> sdedit
        assert wall["strategy"] == "sdedit" and wall["strategy_requested"] == "auto"
        assert [(s["width"], s["height"], s["strength"]) for s in wall["stages"]] == [(64, 64, None), (128, 128, 0.4)]
        assert wall["tiling"]["wrap_axes"] == "xy"
        png = catalogue.store.get(renders["cavern-panorama"]["object_key"])
        image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float32)
        assert image.shape == (128, 256, 3)
        seam = np.abs(image[:, -1] - image[:, 0]).mean()
        assert seam <= 1.5 * np.abs(np.diff(image, axis=1)).mean()
    finally:
        catalogue.close()
