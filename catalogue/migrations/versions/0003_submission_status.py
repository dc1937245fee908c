"""Submissions get a status: queued (in the inbox), running, done, failed (with why), cancelled.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

STATUSES = ("queued", "running", "done", "failed", "cancelled")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("submissions") as batch:
        # Submissions recorded before this revision came from finished `linstudio run` calls.
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="done"))
        batch.add_column(sa.Column("error", sa.Text(), nullable=True))
        batch.add_column(sa.Column("submitted_by", sa.String(200), nullable=True))
        batch.add_column(sa.Column("finished_at", TS, nullable=True))
        batch.create_check_constraint("ck_submissions_status", f"status IN {STATUSES!r}")
    op.create_index("ix_submissions_status_created_at", "submissions", ["status", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_submissions_status_created_at", table_name="submissions")
    with op.batch_alter_table("submissions") as batch:
        batch.drop_constraint("ck_submissions_status", type_="check")
        batch.drop_column("finished_at")
        batch.drop_column("submitted_by")
        batch.drop_column("error")
        batch.drop_column("status")
