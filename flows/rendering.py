"""One job in, PNG bytes and metadata out: the render step on its own, without Prefect.

Kept apart from the job runner (flows/job_runner.py) because two kinds of process run it: a flow
run that renders in its own process, and a GPU worker's long-lived render host
(flows/render_host.py), which keeps models loaded between flow runs.

`render_request` is the one place a job becomes the engine's `RenderRequest`: every field of
`JobSpec` that decides pixels (`linstudio_jobs.pixel_fields()`) is mapped here, and
tests/jobs/test_jobspec.py fails if one is not.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

from flows.conditioning_inputs import request_conditioning
from flows.engines import engine_for
from linfusion_engine.requests import RenderRequest
from linstudio_jobs import JobSpec


def render_request(spec: JobSpec, source_image=None) -> RenderRequest:
    """The engine request for `spec`: its settings, and its conditioning inputs read (files or
    s3://, LoRAs by name). A re-render (`source_image` given) starts from its source render's
    image, upscaled through the job's strategy, so the composition artists approved is kept."""
    conditioning = request_conditioning(dict(spec.conditioning))
    if source_image is not None:
        conditioning["init_image"] = source_image
        conditioning["strength"] = float(spec.conditioning["source_render"]["strength"])
    return RenderRequest(prompt=spec.prompt, negative_prompt=spec.negative_prompt, seed=spec.seed, width=spec.width,
                         height=spec.height, steps=spec.steps, guidance=spec.guidance, scheduler=spec.scheduler,
                         attention=spec.attention, strategy=spec.strategy, tileable=spec.tileable, **conditioning)


def render_png(job: JobSpec | Mapping, device: str | None, dtype: str | None, source_image=None, *,
               registry) -> tuple[bytes, dict]:
    """Render one job (a spec, or the record the catalogue stores) with the process's engine for
    its model, loaded from `registry` (the run's, or the render host's); returns plain PNG bytes and metadata."""
    spec = job if isinstance(job, JobSpec) else JobSpec.from_record(job)
    request = render_request(spec, source_image)
    with engine_for(spec.model, registry, device=device, dtype=dtype) as engine:
        result = engine.render(request)
    buffer = io.BytesIO()
    result.image.save(buffer, format="PNG")
    return buffer.getvalue(), result.metadata
