"""The gallery: review status, filter indexes, tags as rows, full-text search, reviews, users, tokens.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

Full-text search lives outside the ORM models (catalogue.search names these objects so schema
comparisons skip them): on SQLite an FTS5 table `renders_fts` kept by triggers; on PostgreSQL a GIN
index over `to_tsvector('english', prompt || ' ' || tags)`, which PostgreSQL keeps by itself.
`render_tags` is kept from `renders.tags` by triggers on both backends, so no writer (the flow's
ingest, a script) has to know about it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
STATUSES = ("approved", "rejected", "changes_requested")

# SQLite: FTS5 with its own copy of the text (an external-content table would key on the implicit
# rowid of `renders`, which VACUUM may renumber). Porter stemming, like PostgreSQL's 'english'.
SQLITE_UP = [
    "CREATE VIRTUAL TABLE renders_fts USING fts5(render_id UNINDEXED, prompt, tags, tokenize='porter unicode61')",
    """CREATE TRIGGER renders_search_ai AFTER INSERT ON renders BEGIN
         INSERT INTO renders_fts(render_id, prompt, tags) VALUES (new.id, new.prompt, new.tags);
         INSERT OR IGNORE INTO render_tags(tag, render_id)
           SELECT substr(value, 1, 200), new.id FROM json_each(new.tags)
           WHERE json_type(new.tags) = 'array' AND type = 'text';
       END""",
    """CREATE TRIGGER renders_search_ad AFTER DELETE ON renders BEGIN
         DELETE FROM renders_fts WHERE render_id = old.id;
       END""",
    """CREATE TRIGGER renders_search_au AFTER UPDATE OF prompt, tags ON renders BEGIN
         DELETE FROM renders_fts WHERE render_id = old.id;
         INSERT INTO renders_fts(render_id, prompt, tags) VALUES (new.id, new.prompt, new.tags);
         DELETE FROM render_tags WHERE render_id = old.id;
         INSERT OR IGNORE INTO render_tags(tag, render_id)
           SELECT substr(value, 1, 200), new.id FROM json_each(new.tags)
           WHERE json_type(new.tags) = 'array' AND type = 'text';
       END""",
    "INSERT INTO renders_fts(render_id, prompt, tags) SELECT id, prompt, tags FROM renders",
    """INSERT OR IGNORE INTO render_tags(tag, render_id)
         SELECT substr(j.value, 1, 200), r.id FROM renders r, json_each(r.tags) j
         WHERE json_type(r.tags) = 'array' AND j.type = 'text'""",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS renders_search_au",
    "DROP TRIGGER IF EXISTS renders_search_ad",
    "DROP TRIGGER IF EXISTS renders_search_ai",
    "DROP TABLE IF EXISTS renders_fts",
]

POSTGRES_UP = [
    # Must match catalogue.search.PG_DOCUMENT exactly, or the planner will not use the index.
    "CREATE INDEX ix_renders_search ON renders USING gin "
    "(to_tsvector('english'::regconfig, prompt || ' ' || tags::text))",
    """CREATE FUNCTION linstudio_render_tags() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         IF TG_OP = 'UPDATE' THEN
           DELETE FROM render_tags WHERE render_id = OLD.id;
         END IF;
         IF jsonb_typeof(NEW.tags) = 'array' THEN
           INSERT INTO render_tags(tag, render_id)
             SELECT DISTINCT left(t, 200), NEW.id FROM jsonb_array_elements_text(NEW.tags) AS t
             ON CONFLICT DO NOTHING;
         END IF;
         RETURN NEW;
       END $$""",
    """CREATE TRIGGER renders_tags_aiu AFTER INSERT OR UPDATE OF tags ON renders
       FOR EACH ROW EXECUTE FUNCTION linstudio_render_tags()""",
    """INSERT INTO render_tags(tag, render_id)
         SELECT DISTINCT left(t, 200), r.id FROM renders r, jsonb_array_elements_text(r.tags) AS t
         WHERE jsonb_typeof(r.tags) = 'array' ON CONFLICT DO NOTHING""",
]
POSTGRES_DOWN = [
    "DROP TRIGGER IF EXISTS renders_tags_aiu ON renders",
    "DROP FUNCTION IF EXISTS linstudio_render_tags()",
    "DROP INDEX IF EXISTS ix_renders_search",
]

FILTER_INDEXES = {
    "ix_renders_team_id": ["team", "id"],
    "ix_renders_project_id": ["project", "id"],
    "ix_renders_model_id": ["model", "id"],
    "ix_renders_review_status_id": ["review_status", "id"],
    "ix_renders_width_height_id": ["width", "height", "id"],
    "ix_renders_asset_pk_id": ["asset_pk", "id"],
}


def upgrade() -> None:
    op.add_column("renders", sa.Column("review_status", sa.String(24), nullable=True))
    for name, columns in FILTER_INDEXES.items():
        op.create_index(name, "renders", columns)

    op.create_table(
        "render_tags",
        sa.Column("tag", sa.String(200), nullable=False),
        sa.Column("render_id", sa.String(26), nullable=False),
        sa.ForeignKeyConstraint(["render_id"], ["renders.id"], name="fk_render_tags_render_id_renders",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tag", "render_id", name="pk_render_tags"),
    )
    op.create_index("ix_render_tags_render_id", "render_tags", ["render_id"])

    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("render_id", sa.String(26), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("reviewer", sa.String(200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.CheckConstraint(f"status IN {STATUSES!r}", name="ck_reviews_status"),
        sa.ForeignKeyConstraint(["render_id"], ["renders.id"], name="fk_reviews_render_id_renders",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_reviews"),
    )
    op.create_index("ix_reviews_render_id_id", "reviews", ["render_id", "id"])

    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("name", name="uq_users_name"),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_api_tokens"),
        sa.UniqueConstraint("name", name="uq_api_tokens_name"),
        sa.UniqueConstraint("token_sha256", name="uq_api_tokens_token_sha256"),
    )

    for statement in SQLITE_UP if op.get_bind().dialect.name == "sqlite" else POSTGRES_UP:
        op.execute(statement)


def downgrade() -> None:
    for statement in SQLITE_DOWN if op.get_bind().dialect.name == "sqlite" else POSTGRES_DOWN:
        op.execute(statement)
    op.drop_table("api_tokens")
    op.drop_table("users")
    op.drop_index("ix_reviews_render_id_id", table_name="reviews")
    op.drop_table("reviews")
    op.drop_index("ix_render_tags_render_id", table_name="render_tags")
    op.drop_table("render_tags")
    for name in FILTER_INDEXES:
        op.drop_index(name, table_name="renders")
    with op.batch_alter_table("renders") as batch:
        batch.drop_column("review_status")
