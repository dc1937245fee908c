"""Conditioning through the flow: `linstudio run` on the conditioning example, files and s3:// inputs.

The end-to-end test runs the real CLI against the session's Prefect server on both backends; on
the production backend the mask comes from the S3 server, so the s3:// path is exercised too.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from flows.conditioning_inputs import ConditioningInputError, read_image, request_conditioning
from linstudio.settings import get_settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "manifests" / "examples-conditioning"


def _copy_example(tmp_path: Path) -> Path:
    folder = tmp_path / "film"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("game-tileable.yaml"))
    return folder / "film-conditioning.yaml"


def _jobs(path: Path):
    from manifests import expand_jobs, load_manifests

    result = load_manifests([path], settings=get_settings())
    assert result.errors == []
    return expand_jobs(result.manifests[0])


def test_job_records_become_engine_inputs(tmp_path):
    from linfusion_engine.conditioning.inputs import ControlInput, IpAdapterInput

    manifest = _copy_example(tmp_path)
    controlled, paintover = (job.to_record() for job in _jobs(manifest))
    kwargs = request_conditioning(controlled["conditioning"])
    assert set(kwargs) == {"controlnets", "ip_adapter"}
    (control,) = kwargs["controlnets"]
    assert isinstance(control, ControlInput) and control.type == "canny" and control.scale == 0.8
    assert control.image.size == Image.open(manifest.parent / "controls" / "skyline-canny.png").size
    assert control.source["path"].endswith("controls/skyline-canny.png") and control.source["hashed"] == "bytes"
    assert isinstance(kwargs["ip_adapter"], IpAdapterInput) and kwargs["ip_adapter"].scale == 0.6
    kwargs = request_conditioning(paintover["conditioning"])
    assert set(kwargs) == {"init_image", "strength", "mask"} and kwargs["strength"] == 0.5


def test_a_file_changed_since_planning_is_refused(tmp_path):
    manifest = _copy_example(tmp_path)
    record = _jobs(manifest)[1].to_record()
    mask = manifest.parent / "masks" / "sky.png"
    Image.new("L", (64, 64), 255).save(mask)
    with pytest.raises(ConditioningInputError, match=r"init_image\.mask: .*sky\.png changed since the job was planned"):
        request_conditioning(record["conditioning"])
    with pytest.raises(ConditioningInputError, match=r"where: cannot read .*absent\.png"):
        read_image({"path": str(tmp_path / "absent.png"), "hashed": "bytes", "sha256": "0"}, "where")


@pytest.mark.services
def test_linstudio_run_renders_the_conditioning_example_end_to_end(prefect_api, backend, tmp_path, request):
    from catalogue import Catalogue
    from linstudio.settings import get_settings

    manifest = _copy_example(tmp_path)
    settings = get_settings()
    if backend == "production":
        # The mask from the S3 server instead of the folder: the render task fetches it.
        s3 = request.getfixturevalue("s3_endpoint").client()
        bucket = settings.resolved_store_url[len("s3://"):].split("/", 1)[0]
        s3.put_object(Bucket=bucket, Key="inputs/sky.png", Body=(manifest.parent / "masks" / "sky.png").read_bytes())
        text = manifest.read_text().replace("mask: masks/sky.png", f"mask: s3://{bucket}/inputs/sky.png")
        assert "s3://" in text
        manifest.write_text(text)
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "LINSTUDIO_HOME": str(settings.home)}
    linstudio = str(Path(sys.executable).parent / "linstudio")
    done = subprocess.run([linstudio, "run", str(manifest)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    catalogue = Catalogue.open(settings.resolved_database_url, settings.resolved_store_url)
    try:
        renders = {r["asset_id"]: catalogue.render(r["render_id"]) for r in catalogue.renders(limit=10)}
        assert set(renders) == {"skyline-controlled", "skyline-paintover"}
        controlled = renders["skyline-controlled"]["engine"]["conditioning"]
        assert controlled["controlnet"][0]["type"] == "canny" and controlled["controlnet"][0]["scale"] == 0.8
        assert controlled["controlnet"][0]["image"]["sha256"] and controlled["ip_adapter"]["scale"] == 0.6
        paintover = renders["skyline-paintover"]["engine"]["conditioning"]
        assert paintover["init_image"]["strength"] == 0.5 and paintover["init_image"]["mask"]["sha256"]
        png = catalogue.store.get(renders["skyline-paintover"]["object_key"])
        assert Image.open(io.BytesIO(png)).size == (64, 64)
        assert catalogue.check().ok
    finally:
        catalogue.close()
