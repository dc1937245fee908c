"""Gallery hardening: disabled users, revoked tokens, sign-in back-off, background exports.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

- `users.disabled_at` and `api_tokens.revoked_at`: `linstudio users disable` / `tokens revoke`
  refuse the next request without deleting what review history refers to.
- `sign_in_failures`: failed sign-ins per account name and per client address, shared by every
  gallery process (catalogue.web.throttle).
- `exports`: deliveries run in the background with their progress (catalogue.web.exports);
  `active_key` is unique so two requests for the same selection share one export.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
EXPORT_STATES = ("queued", "running", "done", "failed")


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("disabled_at", TS, nullable=True))
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("revoked_at", TS, nullable=True))

    op.create_table(
        "sign_in_failures",
        sa.Column("key", sa.String(216), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_sign_in_failures"),
    )
    op.create_index("ix_sign_in_failures_last_failure_at", "sign_in_failures", ["last_failure_at"])

    op.create_table(
        "exports",
        sa.Column("id", sa.String(26), nullable=False),
        sa.Column("selection_sha256", sa.String(64), nullable=False),
        sa.Column("active_key", sa.String(64), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("requested_by", sa.String(200), nullable=False),
        sa.Column("destination", sa.Text(), nullable=False),
        sa.Column("options", JSON, nullable=False),
        sa.Column("render_ids", JSON, nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("written", JSON, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.CheckConstraint(f"state IN {EXPORT_STATES!r}", name="ck_exports_state"),
        sa.PrimaryKeyConstraint("id", name="pk_exports"),
        sa.UniqueConstraint("active_key", name="uq_exports_active_key"),
    )
    op.create_index("ix_exports_state_lease_expires_at", "exports", ["state", "lease_expires_at"])


def downgrade() -> None:
    op.drop_index("ix_exports_state_lease_expires_at", table_name="exports")
    op.drop_table("exports")
    op.drop_index("ix_sign_in_failures_last_failure_at", table_name="sign_in_failures")
    op.drop_table("sign_in_failures")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("revoked_at")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("disabled_at")
