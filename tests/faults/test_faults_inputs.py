"""Corrupt inputs: broken control maps and reference images, and a manifest edited while its batch runs.

Where a problem shows decides what happens to it:
- at validation (`linstudio validate`, and the first step of `linstudio run`): a file that is not
  an image, or is cut short, is refused with the manifest's file, line and key path, and nothing
  renders;
- at render time: what validation cannot see — a PNG whose chunks are intact but whose pixel data
  stops half-way, an s3:// reference (validation never goes to the network), a file changed after
  the job was planned — fails that job with a reason naming the input, and the other jobs go on.
Either way nothing is half-written: `catalogue check` stays clean.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fault_support import (
    PRODUCTION,
    job_records,
    keys_by_status,
    lost_jobs,
    noise_png,
    png_with_short_pixel_data,
    renders_per_key,
    write_manifest,
)

pytestmark = pytest.mark.services  # `linstudio run` needs a Prefect server

PLAIN_AND_CONTROLLED = """
version: 1
team: film
project: inputs
defaults: {model: tiny-sd15, steps: 2, sizes: [64x64]}
assets:
  - id: street
    prompt: "a plain street"
    seeds: [1, 2]
  - id: skyline
    prompt: "a controlled skyline"
    seeds: [1]
    controlnet:
      - {type: canny, image: controls/map.png, scale: 0.8}
"""

BAD_REFERENCES = """
version: 1
team: film
project: inputs
defaults: {model: tiny-sd15, steps: 2, sizes: [64x64]}
assets:
  - id: street
    prompt: "a plain street"
    seeds: [1]
  - id: skyline
    prompt: "a controlled skyline"
    seeds: [1]
    controlnet:
      - {type: canny, image: controls/cut.png, scale: 0.8}
  - id: moody
    prompt: "a moody alley"
    seeds: [1]
    ip_adapter: {images: [refs/mood.png], scale: 0.6}
  - id: paintover
    prompt: "a painted-over square"
    seeds: [1]
    init_image: {image: paintovers/square.png, strength: 0.5}
"""



def after_location(reason: str, manifest: Path) -> str:
    """A failed input's reason after its `manifest:line: ` prefix, checking that it names the manifest
    and the asset's line (so whoever reads it knows which entry to fix)."""
    location, sep, rest = reason.partition(": ConditioningInputError")
    assert sep, reason
    path, _, line = location.rpartition(":")
    assert Path(path).resolve() == Path(manifest).resolve() and line.isdigit(), reason
    return "ConditioningInputError" + rest

def line_of(manifest: Path, text: str) -> int:
    """The 1-based line of `manifest` holding `text`."""
    return next(n for n, line in enumerate(manifest.read_text().splitlines(), 1) if text in line)


@pytest.mark.parametrize("studio", ["embedded"], indirect=True)  # refused before the catalogue is touched
def test_inputs_validation_can_see_are_refused_before_anything_renders(studio, tmp_path):
    folder = tmp_path / "film"
    manifest = write_manifest(folder, "inputs.yaml", BAD_REFERENCES)
    (folder / "controls").mkdir()
    (folder / "controls" / "cut.png").write_bytes(noise_png()[:600])  # the file stops mid-IDAT
    (folder / "refs").mkdir()
    (folder / "refs" / "mood.png").write_text("a mood board: rain, neon, reflections\n")
    (folder / "paintovers").mkdir()
    (folder / "paintovers" / "square.png").write_bytes(b"<html><body>403 Forbidden</body></html>")

    done = studio.linstudio("run", str(manifest))
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if "not an image" in line]
    expected = [
        (line_of(manifest, "controls/cut.png"), "assets[1].controlnet[0].image", "controls/cut.png"),
        (line_of(manifest, "refs/mood.png"), "assets[2].ip_adapter.images[0]", "refs/mood.png"),
        (line_of(manifest, "paintovers/square.png"), "assets[3].init_image.image", "paintovers/square.png"),
    ]
    assert len(errors) == len(expected), done.stderr
    for error, (line, key_path, reference) in zip(errors, expected):
        assert f"inputs.yaml:{line} {key_path}: not an image (PNG/JPEG/WebP/TIFF expected): {reference}" in error
    assert "nothing rendered: 3 error(s) in the manifests" in done.stderr

    catalogue = studio.catalogue
    assert catalogue.submissions() == [] and catalogue.renders() == []  # refused before planning
    assert catalogue.check().ok


# The input, not the backend, is under test: the failed job's record is written by the same code as
# any failure's (tests/flows/test_batch.py::test_one_failing_job_does_not_stop_the_others, both backends).
@pytest.mark.parametrize("studio", PRODUCTION, indirect=True)
def test_a_control_map_cut_short_inside_fails_its_job_and_the_others_render(studio, tmp_path, fault_log):
    folder = tmp_path / "film"
    manifest = write_manifest(folder, "inputs.yaml", PLAIN_AND_CONTROLLED)
    (folder / "controls").mkdir()
    control_map = folder / "controls" / "map.png"
    control_map.write_bytes(png_with_short_pixel_data())
    assert studio.linstudio("validate", str(manifest)).returncode == 0  # its header and chunks are fine

    street_1, street_2, skyline = (r["key"] for r in job_records([manifest]))
    started = time.perf_counter()
    status, summary = studio.run(manifest)
    assert status == 1, summary
    by_status = keys_by_status(summary)
    assert by_status == {"rendered": {street_1, street_2}, "failed": {skyline}}
    (failure,) = [job for job in summary["jobs"] if job["status"] == "failed"]
    assert after_location(failure["reason"], manifest).startswith(
        f"ConditioningInputError: controlnet[0].image: {control_map} is not a readable image: image file is truncated"
    ), failure["reason"]
    catalogue = studio.catalogue
    assert catalogue.job(skyline)["state"] == "failed"
    assert catalogue.job(skyline)["error"] == failure["reason"]
    assert renders_per_key(catalogue) == {street_1: 1, street_2: 1}
    assert catalogue.check().ok

    # A good control map under the same name is a different input, so a different job: it renders.
    control_map.write_bytes(noise_png())
    status, again = studio.run(manifest)
    assert status == 0, again
    (fixed,) = keys_by_status(again)["rendered"]
    assert fixed != skyline and renders_per_key(catalogue)[fixed] == 1
    assert catalogue.check().ok
    fault_log.record("corrupt input: control map cut short inside valid chunks", jobs_in_flight=3,
                     lost=len(lost_jobs(catalogue, [street_1, street_2, fixed])),
                     recovery_seconds=round(time.perf_counter() - started, 2),
                     outcome="its job failed naming the file; the others rendered; a fixed file rendered",
                     backend=studio.kind)


def test_references_on_s3_that_are_not_images_fail_their_jobs_at_render_time(studio, fault_seaweed, tmp_path,
                                                                              fault_log):
    """Validation never reads s3:// inputs, so an IP-Adapter reference or init image there that is not an
    image reaches render time: its job fails naming the URI and the field, the others render."""
    bucket = studio.store_url[len("s3://"):].split("/")[0]
    s3 = fault_seaweed.endpoint.client()
    s3.put_object(Bucket=bucket, Key="refs/mood.png", Body=b"a mood board, as text\n")
    s3.put_object(Bucket=bucket, Key="paintovers/square.png", Body=b"<html><body>403 Forbidden</body></html>")
    manifest = write_manifest(tmp_path / "film", "inputs.yaml", f"""
        version: 1
        team: film
        project: inputs
        defaults: {{model: tiny-sd15, steps: 2, sizes: [64x64]}}
        assets:
          - id: street
            prompt: "a plain street"
            seeds: [1, 2]
          - id: moody
            prompt: "a moody alley"
            seeds: [1]
            ip_adapter: {{images: ["s3://{bucket}/refs/mood.png"], scale: 0.6}}
          - id: paintover
            prompt: "a painted-over square"
            seeds: [1]
            init_image: {{image: "s3://{bucket}/paintovers/square.png", strength: 0.5}}
    """)
    street_1, street_2, moody, paintover = (r["key"] for r in job_records([manifest]))
    status, summary = studio.run(manifest)
    assert status == 1, summary
    assert keys_by_status(summary) == {"rendered": {street_1, street_2}, "failed": {moody, paintover}}
    reasons = {job["key"]: job["reason"] for job in summary["jobs"] if job["status"] == "failed"}
    assert after_location(reasons[moody], manifest).startswith(
        f"ConditioningInputError: ip_adapter.images[0]: s3://{bucket}/refs/mood.png is not a readable image"), reasons
    assert after_location(reasons[paintover], manifest).startswith(
        f"ConditioningInputError: init_image.image: s3://{bucket}/paintovers/square.png is not a readable image"), reasons
    catalogue = studio.catalogue
    assert renders_per_key(catalogue) == {street_1: 1, street_2: 1}
    assert catalogue.check().ok
    fault_log.record("corrupt input: IP-Adapter reference and init image on S3 are not images", jobs_in_flight=4,
                     lost=len(lost_jobs(catalogue, [street_1, street_2])), recovery_seconds=None,
                     outcome="their jobs failed naming the URI and field; the others rendered", backend=studio.kind)


@pytest.mark.parametrize("studio", PRODUCTION, indirect=True)  # as above: the files, not the backend
def test_a_manifest_edited_while_its_batch_runs(studio, tmp_path, fault_log):
    """The running batch renders what it validated and planned; an input file changed under it fails its
    job; the edited manifest is read by the next run, with any error named by file and line."""
    folder = tmp_path / "film"
    body = PLAIN_AND_CONTROLLED.replace("seeds: [1, 2]", "seeds: [1, 2, 3, 4, 5, 6]")
    manifest = write_manifest(folder, "inputs.yaml", body)
    (folder / "controls").mkdir()
    control_map = folder / "controls" / "map.png"
    control_map.write_bytes(noise_png(seed=1))
    planned = [r["key"] for r in job_records([manifest])]
    streets, skyline = planned[:-1], planned[-1]

    catalogue = studio.catalogue
    run = studio.start("run", "--json", str(manifest))
    try:
        # 1. Once the run has planned its jobs, edit the manifest (now invalid) and the control map.
        deadline = time.monotonic() + 120
        while len(catalogue.job_states(planned)) < len(planned):
            assert run.alive(), run.output()[-3000:]
            assert time.monotonic() < deadline, "the run planned nothing in 120 s"
            time.sleep(0.02)
        broken = body.replace('prompt: "a plain street"', 'prompt: "a busy street"').replace("[64x64]", "[100x100]")
        manifest.write_text(broken)
        control_map.write_bytes(noise_png(seed=2))
        states_at_edit = catalogue.job_states(planned)
        assert states_at_edit[skyline] != "done", "the batch rendered everything before the edit; make it longer"

        # 2. The running batch finishes what it planned, from the manifest as it was validated.
        returncode = run.wait()
        summary = run.summary()
        assert returncode == 1, summary
        assert keys_by_status(summary) == {"rendered": set(streets), "failed": {skyline}}
        (failure,) = [job for job in summary["jobs"] if job["status"] == "failed"]
        assert after_location(failure["reason"], manifest).startswith(
            f"ConditioningInputError: controlnet[0].image: {control_map} changed since the job was planned"), failure
        assert renders_per_key(catalogue) == {key: 1 for key in streets}
        assert all(r["prompt"] == "a plain street" for r in catalogue.renders(limit=100))
        assert catalogue.check().ok

        # 3. The next run reads the edited file: its error names the file, line and key, nothing renders.
        started = time.perf_counter()
        refused = studio.linstudio("run", str(manifest))
        assert refused.returncode == 1
        assert f"inputs.yaml:{line_of(manifest, '[100x100]')} defaults.sizes[0]: " in refused.stderr, refused.stderr
        assert "nothing rendered" in refused.stderr

        # 4. Fixed, it renders the edited jobs (new prompt, new control map: new keys), each once.
        manifest.write_text(broken.replace("[100x100]", "[64x64]"))
        edited = [r["key"] for r in job_records([manifest])]
        status, final = studio.run(manifest)
        assert status == 0, final
        assert keys_by_status(final)["rendered"] == set(edited)
        assert renders_per_key(catalogue) == {key: 1 for key in [*streets, *edited]}
        assert catalogue.check().ok
        fault_log.record("manifest and control map edited while the batch runs",
                         jobs_in_flight=sum(state != "done" for state in states_at_edit.values()),
                         lost=len(lost_jobs(catalogue, [*streets, *edited])),
                         recovery_seconds=round(time.perf_counter() - started, 2),
                         outcome="the batch rendered what it planned; the changed input failed its job by name; "
                                 "the next run named the edit's error, then rendered the edited jobs",
                         backend=studio.kind)
    finally:
        if run.alive():
            run.kill()
