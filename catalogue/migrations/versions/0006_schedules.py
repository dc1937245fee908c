"""Schedules: named re-renders that Prefect runs on a cron or at a time (catalogue.schedules).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

- `schedules`: what the studio asked for (selection, sizes, cron or time, time zone, wanted state)
  and what Prefect and the last run reported (next run, last outcome), for the CLI and the gallery.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("selection", JSON, nullable=False),
        sa.Column("sizes", JSON, nullable=False),
        sa.Column("cron", sa.String(200), nullable=True),
        sa.Column("run_at", TS, nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("sync_pending", sa.Boolean(), nullable=False),
        sa.Column("run_requested_at", TS, nullable=True),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("next_run_at", TS, nullable=True),
        sa.Column("last_run_at", TS, nullable=True),
        sa.Column("last_run_state", sa.String(16), nullable=True),
        sa.Column("last_made", sa.Integer(), nullable=True),
        sa.Column("last_skipped", sa.Integer(), nullable=True),
        sa.Column("last_failed", sa.Integer(), nullable=True),
        sa.Column("last_flow_run_id", sa.String(64), nullable=True),
        sa.CheckConstraint("(cron IS NULL) <> (run_at IS NULL)", name="ck_schedules_cron_or_run_at"),
        sa.PrimaryKeyConstraint("name", name="pk_schedules"),
    )


def downgrade() -> None:
    op.drop_table("schedules")
