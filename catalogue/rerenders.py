"""Re-renders planned in the catalogue: catalogued renders asked for again at new sizes.

Artists approve a composition at 2K and ask for 8K. Rendering 8K from scratch with the same seed
would not give the same picture, so a re-render starts from the source render's image (image to
image from the upscaled source) and records `parent_render_id`. A re-render is a job like any
other: its key hashes the source render with the rest, so asking twice renders once.

Planning lives here, in the catalogue, because it needs nothing but the catalogue and the job key
format: the gallery plans re-renders without importing orchestration, and records a request to
start them (catalogue.rerender_requests) that `flows` picks up.
"""

from __future__ import annotations

import hashlib
import json

from catalogue.schedules import Selection
from linstudio_jobs import JobSpec, size_problem

RERENDER_PREFIX = "rerender:"
# How far a re-render may move away from its source image: low keeps the approved composition,
# high invents more detail at the new size. Part of the job key.
DEFAULT_STRENGTH = 0.35


class RerenderError(ValueError):
    """A re-render request that cannot be planned (unknown render, bad size); the message says why."""


def parse_size(text: str) -> tuple[int, int]:
    """`2048x1024` -> (2048, 1024), checked by the one size rule every job obeys (`linstudio_jobs`)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise RerenderError(f"size {text!r}: expected WxH, e.g. 2048x1024") from None
    problem = size_problem(width, height)
    if problem is not None:
        raise RerenderError(f"size {text!r}: {problem}")
    return width, height


def rerender_records(source: dict, sizes: list[tuple[int, int]], strength: float = DEFAULT_STRENGTH,
                     schedule: str | None = None) -> list[dict]:
    """Job records that re-render catalogued render `source` (as `Catalogue.render` returns it) at `sizes`.

    The source's stored record is read back as a `JobSpec` whatever version wrote it (fields it
    lacks take their defaults), so a field added to the spec later never stops older renders
    from being re-rendered.
    """
    try:
        spec = JobSpec.from_record(source.get("record") or {})
    except (TypeError, ValueError) as exc:
        raise RerenderError(f"render {source['render_id']}: its stored record cannot be re-rendered: {exc}") from None
    # The source image supersedes the source job's own init image and mask (it already shows them).
    inherited = {k: v for k, v in spec.conditioning.items() if k != "init_image"}
    conditioning = {**inherited, "source_render": {"render_id": source["render_id"], "sha256": source["sha256"],
                                                   "width": source["width"], "height": source["height"],
                                                   "strength": strength}}
    return [spec.derived(source["render_id"], width=width, height=height, conditioning=conditioning,
                         manifest_path=f"{RERENDER_PREFIX}{source['render_id']}", manifest_line=None,
                         schedule=schedule).to_record()
            for width, height in sizes]


def plan_rerenders(catalogue, render_ids: list[str], sizes: list[tuple[int, int]],
                   requested_by: str, schedule: str | None = None) -> list[dict]:
    """Record re-render jobs (one submission per source render); returns their records.

    For a `schedule`'s run, a source already at a target size is not re-rendered at that size
    (nothing to gain, and its own re-render would be selected again next run), and every record
    names the schedule.
    """
    if not sizes:
        raise RerenderError("no target size given")
    planned = []
    for render_id in render_ids:
        source = catalogue.render(render_id)
        if source is None:
            raise RerenderError(f"render {render_id!r} is not in the catalogue")
        wanted = [s for s in sizes if schedule is None or s != (source["width"], source["height"])]
        if not wanted:
            continue
        records = rerender_records(source, wanted, schedule=schedule)
        digest = hashlib.sha256(json.dumps([render_id, sizes, requested_by]).encode()).hexdigest()
        submission = catalogue.create_submission(source["team"], source["project"],
                                                 f"{RERENDER_PREFIX}{render_id} by {requested_by}", digest,
                                                 len(records))
        catalogue.plan_jobs(submission, records)
        planned.extend(records)
    return planned


def select_renders(catalogue, *, team: str | None = None, project: str | None = None, tag: str | None = None,
                   render_ids: list[str] | None = None, limit: int = 10_000) -> list[str]:
    """Render ids chosen by id, or by team / project / tag (all that match), newest first: the
    selection query scheduled re-renders use (`catalogue.schedules.Selection`)."""
    if render_ids:
        return list(render_ids)
    return catalogue.schedule_sources(None, Selection(team=team, project=project, tag=tag))[:limit]
