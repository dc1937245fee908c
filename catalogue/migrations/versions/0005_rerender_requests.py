"""Rerender requests: the gallery asks for renders to start by writing a row, not by importing flows.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

- `rerender_requests`: planned re-render and retry jobs waiting to be started in the background
  (catalogue.rerender_requests); a dispatcher in `flows`, started by `linstudio serve`, claims and
  starts them, so a request survives a restart of the gallery.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
REQUEST_STATES = ("queued", "claimed", "started")
REQUEST_KINDS = ("rerender", "retry")


def upgrade() -> None:
    op.create_table(
        "rerender_requests",
        sa.Column("id", sa.String(26), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("job_keys", JSON, nullable=False),
        sa.Column("requested_by", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("claimed_by", sa.String(200), nullable=True),
        sa.Column("claimed_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.CheckConstraint(f"state IN {REQUEST_STATES!r}", name="ck_rerender_requests_state"),
        sa.CheckConstraint(f"kind IN {REQUEST_KINDS!r}", name="ck_rerender_requests_kind"),
        sa.PrimaryKeyConstraint("id", name="pk_rerender_requests"),
    )
    op.create_index("ix_rerender_requests_state_created_at", "rerender_requests", ["state", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_rerender_requests_state_created_at", table_name="rerender_requests")
    op.drop_table("rerender_requests")
