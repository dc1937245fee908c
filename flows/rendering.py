"""One job record in, PNG bytes and metadata out: the render step on its own, without Prefect.

Kept apart from the job runner (flows/job_runner.py) because two kinds of process run it: a flow
run that renders in its own process, and a GPU worker's long-lived render host
(flows/render_host.py), which keeps models loaded between flow runs.
"""

from __future__ import annotations

import io

from flows.engines import engine_for


def render_png(record: dict, device: str | None, dtype: str | None, source_image=None) -> tuple[bytes, dict]:
    """Render one job with the process's engine for its model; returns plain PNG bytes and metadata.

    A re-render (`source_image` given) starts from its source render's image, upscaled through the
    job's strategy, so the composition artists approved is kept.
    """
    from flows.conditioning_inputs import request_conditioning
    from linfusion_engine import RenderRequest

    conditioning = request_conditioning(record.get("conditioning") or {})
    if source_image is not None:
        conditioning["init_image"] = source_image
        conditioning["strength"] = float(record["conditioning"]["source_render"]["strength"])

    request = RenderRequest(
        prompt=record["prompt"],
        negative_prompt=record["negative_prompt"],
        seed=record["seed"],
        width=record["width"],
        height=record["height"],
        steps=record["steps"],
        guidance=record["guidance"],
        scheduler=record["scheduler"],
        attention=record["attention"],
        strategy=record.get("strategy", "auto"),  # issue 5
        tileable=record.get("tileable", False),  # issue 5
        # issue 6: control maps, references, init image and mask read here (files or s3://), LoRAs by name
        **conditioning,
    )
    with engine_for(record["model"], device=device, dtype=dtype) as engine:
        result = engine.render(request)
    buffer = io.BytesIO()
    result.image.save(buffer, format="PNG")
    return buffer.getvalue(), result.metadata
