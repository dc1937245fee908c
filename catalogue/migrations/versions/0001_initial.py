"""Initial catalogue: submissions, assets, jobs, renders and upload intents.

Revision ID: 0001
Revises:
Create Date: 2025-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Written out here rather than imported from catalogue.models: a migration must keep describing the
# schema as it was at this revision, whatever the models become later.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "submissions",
        sa.Column("id", sa.String(26), nullable=False),
        sa.Column("team", sa.String(200), nullable=False),
        sa.Column("project", sa.String(200), nullable=False),
        sa.Column("manifest_path", sa.Text(), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("job_count", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_submissions"),
    )
    op.create_index("ix_submissions_created_at", "submissions", ["created_at"])
    op.create_index("ix_submissions_team_project_created_at", "submissions", ["team", "project", "created_at"])

    op.create_table(
        "assets",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("team", sa.String(200), nullable=False),
        sa.Column("project", sa.String(200), nullable=False),
        sa.Column("asset_id", sa.String(200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_assets"),
        sa.UniqueConstraint("team", "project", "asset_id", name="uq_assets_team_project_asset_id"),
    )

    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("submission_id", sa.String(26), nullable=False),
        sa.Column("asset_pk", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", TS, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("record", JSON, nullable=False),
        sa.Column("manifest_path", sa.Text(), nullable=True),
        sa.Column("manifest_line", sa.Integer(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.UniqueConstraint("key", name="uq_jobs_key"),
        sa.ForeignKeyConstraint(["submission_id"], ["submissions.id"], name="fk_jobs_submission_id_submissions"),
        sa.ForeignKeyConstraint(["asset_pk"], ["assets.id"], name="fk_jobs_asset_pk_assets"),
        sa.CheckConstraint("state IN ('planned', 'running', 'done', 'failed')", name="ck_jobs_state"),
    )
    op.create_index("ix_jobs_submission_id", "jobs", ["submission_id"])
    op.create_index("ix_jobs_asset_pk", "jobs", ["asset_pk"])
    op.create_index("ix_jobs_state_lease_expires_at", "jobs", ["state", "lease_expires_at"])

    op.create_table(
        "renders",
        sa.Column("id", sa.String(26), nullable=False),
        sa.Column("job_key", sa.String(128), nullable=False),
        sa.Column("submission_id", sa.String(26), nullable=True),
        sa.Column("asset_pk", sa.Integer(), nullable=False),
        sa.Column("team", sa.String(200), nullable=False),
        sa.Column("project", sa.String(200), nullable=False),
        sa.Column("asset_id", sa.String(200), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("negative_prompt", sa.Text(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=True),
        sa.Column("guidance", sa.Float(), nullable=True),
        sa.Column("scheduler", sa.String(200), nullable=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("model_identity", sa.String(200), nullable=True),
        sa.Column("engine", JSON, nullable=False),
        sa.Column("timings", JSON, nullable=False),
        sa.Column("tags", JSON, nullable=False),
        sa.Column("record", JSON, nullable=False),
        sa.Column("worker", sa.String(200), nullable=False),
        sa.Column("object_key", sa.Text(), nullable=False),
        sa.Column("object_uri", sa.Text(), nullable=False),
        sa.Column("thumb_key", sa.Text(), nullable=False),
        sa.Column("thumb_uri", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("thumb_sha256", sa.String(64), nullable=False),
        sa.Column("parent_render_id", sa.String(26), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_renders"),
        sa.UniqueConstraint("job_key", name="uq_renders_job_key"),
        sa.ForeignKeyConstraint(["job_key"], ["jobs.key"], name="fk_renders_job_key_jobs"),
        sa.ForeignKeyConstraint(["submission_id"], ["submissions.id"], name="fk_renders_submission_id_submissions"),
        sa.ForeignKeyConstraint(["asset_pk"], ["assets.id"], name="fk_renders_asset_pk_assets"),
        sa.ForeignKeyConstraint(
            ["parent_render_id"], ["renders.id"], name="fk_renders_parent_render_id_renders", ondelete="SET NULL"
        ),
    )
    op.create_index("ix_renders_submission_id", "renders", ["submission_id"])
    op.create_index("ix_renders_asset_pk", "renders", ["asset_pk"])
    op.create_index("ix_renders_model", "renders", ["model"])
    op.create_index("ix_renders_parent_render_id", "renders", ["parent_render_id"])
    op.create_index("ix_renders_created_at", "renders", ["created_at"])
    op.create_index("ix_renders_team_project_id", "renders", ["team", "project", "id"])

    op.create_table(
        "upload_intents",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_key", sa.String(128), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("object_keys", JSON, nullable=False),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_upload_intents"),
        sa.CheckConstraint("purpose IN ('ingest', 'forget')", name="ck_upload_intents_purpose"),
        sa.CheckConstraint("state IN ('open', 'sweeping')", name="ck_upload_intents_state"),
    )
    op.create_index("ix_upload_intents_job_key", "upload_intents", ["job_key"])
    op.create_index("ix_upload_intents_state_created_at", "upload_intents", ["state", "created_at"])


def downgrade() -> None:
    op.drop_table("upload_intents")
    op.drop_table("renders")
    op.drop_table("jobs")
    op.drop_table("assets")
    op.drop_table("submissions")
