"""What a page and its JSON twin both show: one lookup each, shared so the two cannot drift apart.

`/renders/{id}` and `/api/renders/{id}` show the same render, `/submissions/{id}` and its API the
same submission, and so on; each lookup here reads it in one transaction and refuses an unknown id
with the same NotFound (404) either way. The routes then only shape the answer: a template or JSON.
"""

from __future__ import annotations

from typing import Any

from catalogue import panoramas, review, schedules, tiles
from catalogue.api import Catalogue
from catalogue.queries import projection_of
from catalogue.errors import StoreError
from catalogue.schedules import ScheduleRecord
from catalogue.store import ObjectStore
from catalogue.web import exports, service
from catalogue.web.actions import NotFound


def _found(value: dict[str, Any] | None, what: str) -> dict[str, Any]:
    if value is None:
        raise NotFound(f"{what}: not in the catalogue")
    return value


def render_row(catalogue: Catalogue, render_id: str) -> dict[str, Any]:
    """The render as `Catalogue.render` gives it (object and thumbnail keys: for downloads)."""
    return _found(catalogue.render(render_id), f"render {render_id}")


def render_detail(catalogue: Catalogue, render_id: str) -> dict[str, Any]:
    """The asset page's content: the render, its siblings, lineage, review history, re-render jobs and
    the names of the schedules that select it (that would re-render it if they ran now)."""
    with catalogue.transaction() as session:
        render = _found(service.render_full(session, render_id), f"render {render_id}")
        return {"render": render, "siblings": service.siblings(session, render["asset_pk"]),
                "lineage": service.lineage(session, render_id), "reviews": review.history(session, render_id),
                "rerender_jobs": service.rerender_jobs(session, render),
                "schedules": schedules.selecting(session, render_id)}


def viewer_source(render: dict, store: ObjectStore) -> dict:
    """What the page's viewers load: the pyramid for a big render (its descriptor inline, which saves
    the viewer a round trip; `pending` while it is being built), the PNG for a small one, and for an
    equirectangular one the 360° source: Pannellum's cube tiles above 4096 px, else the PNG."""
    rid = render["render_id"]
    width, height = render["width"], render["height"]
    big = tiles.needs_pyramid(width, height)
    projection = projection_of(render.get("record"))
    try:
        descriptor = tiles.read_descriptor(store, render["object_key"]) if big else None
    except StoreError:  # the store blinked: the page still opens, its viewer says "not ready"
        descriptor = None
    source = {"render_id": rid, "width": width, "height": height, "projection": projection,
              "deepzoom": descriptor.tile_source(f"/renders/{rid}/deepzoom_files/") if descriptor else None,
              "pending": big and descriptor is None, "image": f"/renders/{rid}/image"}
    if projection == "equirectangular":
        if panoramas.needs_cube(width, projection):
            if descriptor is not None:  # written after the cube faces: they are all there
                source["cube"] = panoramas.CubeLayout.of(width).viewer_settings(f"/renders/{rid}/cube")
        else:
            source["panorama"] = f"/renders/{rid}/image"
    return source


def submission_detail(catalogue: Catalogue, submission_id: str) -> dict[str, Any]:
    """One submission: its derived status, errors and renders."""
    with catalogue.transaction() as session:
        return _found(service.submission(session, submission_id), f"submission {submission_id}")


def export_detail(catalogue: Catalogue, export_id: str) -> dict[str, Any]:
    """One export: its state, files done of total, and the files once done."""
    with catalogue.transaction() as session:
        return _found(exports.get(session, export_id), f"export {export_id}")


def schedule_json(record: ScheduleRecord) -> dict[str, Any]:
    """A schedule as the API and the Schedules page show it: `ScheduleRecord.to_json()` (what
    `linstudio schedules ls --json` prints), plus what a pause, resume or run now from the gallery
    leaves waiting for the dispatcher in `flows`: `sync_pending` and `run_requested_at`."""
    requested = record.run_requested_at
    return record.to_json() | {"sync_pending": record.sync_pending,
                               "run_requested_at": requested.isoformat() if requested else None}


def schedule_list(catalogue: Catalogue) -> list[dict[str, Any]]:
    """Every schedule, by name."""
    return [schedule_json(record) for record in catalogue.schedules()]
