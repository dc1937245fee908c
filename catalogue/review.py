"""Review decisions on renders: approve, reject or ask for changes, with a note, kept as history.

Each decision is a new `reviews` row (never an update), and the render's `review_status` column
is set to the latest decision in the same transaction, so the gallery can filter on status with
an index while the full history (who, when, what they wrote) stays intact.

Functions take the caller's session and never commit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from catalogue.errors import CatalogueError
from catalogue.models import REVIEW_STATUSES, Render, Review

NOTE_LIMIT = 5000


class ReviewError(CatalogueError, ValueError):
    """A review that cannot be recorded (unknown render, unknown status, note too long)."""


class UnknownRenderError(ReviewError, LookupError):
    """A review of a render that is not in the catalogue (the gallery answers 404)."""


def record_review(session: Session, render_id: str, status: str, note: str, reviewer: str,
                  now: datetime) -> dict[str, Any]:
    """Record `reviewer`'s decision on `render_id`; returns it as `review_dict` shapes it."""
    if status not in REVIEW_STATUSES:
        raise ReviewError(f"review of {render_id}: status {status!r} is not one of {', '.join(REVIEW_STATUSES)}")
    if len(note) > NOTE_LIMIT:
        raise ReviewError(f"review of {render_id}: note is {len(note)} characters, the limit is {NOTE_LIMIT}")
    if not reviewer:
        raise ReviewError(f"review of {render_id}: no reviewer (sign in or use an API token)")
    updated = session.execute(update(Render).where(Render.id == render_id).values(review_status=status))
    if updated.rowcount != 1:
        raise UnknownRenderError(f"review of {render_id}: no such render in the catalogue")
    review = Review(render_id=render_id, status=status, note=note, reviewer=reviewer, created_at=now)
    session.add(review)
    session.flush()
    return review_dict(review)


def history(session: Session, render_id: str) -> list[dict[str, Any]]:
    """Every decision on `render_id`, newest first."""
    reviews = session.scalars(select(Review).where(Review.render_id == render_id).order_by(Review.id.desc()))
    return [review_dict(review) for review in reviews]


def review_dict(review: Review) -> dict[str, Any]:
    """The public shape of one review (API and pages)."""
    return {"id": review.id, "render_id": review.render_id, "status": review.status, "note": review.note,
            "reviewer": review.reviewer, "created_at": review.created_at.isoformat()}
