"""Gallery search on both backends: full text with stemming, every filter, keyset paging, hostile input."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import select, update
from web_support import make_render, record, seed_catalogue

from catalogue import review, search
from catalogue.models import Render, RenderTag


def ids_of(cat, **filters) -> list[str]:
    with cat.transaction() as session:
        return [item["render_id"] for item in search.search(session, search.Filters(**filters), limit=100).items]


def test_full_text_and_filters_agree_on_both_backends(both_cat):
    ids = seed_catalogue(both_cat)
    # Stemming: "forest" finds "forests"; several words must all match; tags are searched too.
    assert ids_of(both_cat, q="forest") == [ids["forest"]]
    assert set(ids_of(both_cat, q="neon rain")) == {ids["hero1"], ids["hero2"], ids["big"]}
    assert ids_of(both_cat, q="neon forest") == []
    assert ids_of(both_cat, q="big") == [ids["big"]]  # only in its tags
    # Filters, alone and combined with text.
    assert ids_of(both_cat, team="games") == [ids["forest"]]
    assert ids_of(both_cat, model="tiny-sdxl") == [ids["hero2"]]
    assert ids_of(both_cat, size="128x128") == [ids["big"]]
    assert ids_of(both_cat, tag="night", q="neon", project="night-city") == [ids["big"], ids["hero2"], ids["hero1"]]
    assert ids_of(both_cat, date_from=date(2030, 1, 2), date_to=date(2030, 1, 2)) == list(reversed(ids.values()))
    assert ids_of(both_cat, date_from=date(2030, 1, 3)) == []
    with both_cat.transaction() as session:
        review.record_review(session, ids["hero2"], "approved", "", "alice", both_cat.clock())
    assert ids_of(both_cat, status="approved") == [ids["hero2"]]
    assert ids["hero2"] not in ids_of(both_cat, status="unreviewed")


@pytest.mark.parametrize("hostile", ['"', 'NEAR(a b)', "a OR b", "tags:x", "'; DROP TABLE renders; --", "*", "a & !b",
                                     "\x00"])
def test_query_syntax_from_artists_is_never_interpreted(web_cat, hostile):
    seed_catalogue(web_cat)
    ids_of(web_cat, q=hostile)  # no error: operators and quotes are not syntax here
    with web_cat.transaction() as session:
        assert session.scalar(select(Render.id).limit(1)) is not None


def test_keyset_pages_cover_everything_once_newest_first(web_cat):
    made = [make_render(web_cat, record("a", seed)) for seed in range(7)]
    seen, cursor = [], None
    while True:
        with web_cat.transaction() as session:
            page = search.search(session, search.Filters(q="street"), limit=3, cursor=cursor)
        seen += [item["render_id"] for item in page.items]
        if page.next is None:
            break
        cursor = page.next
    assert seen == list(reversed(made))


def test_tags_follow_updates_and_deletes(web_cat):
    render_id = make_render(web_cat, record("a", 1))
    with web_cat.transaction() as session:
        session.execute(update(Render).where(Render.id == render_id).values(tags=["moon"], prompt="a quiet moon"))
    assert ids_of(web_cat, tag="moon") == [render_id] and ids_of(web_cat, tag="night") == []
    assert ids_of(web_cat, q="moon") == [render_id] and ids_of(web_cat, q="neon") == []
    web_cat.forget_renders([record("a", 1)["key"]])
    assert ids_of(web_cat, q="moon") == []
    with web_cat.transaction() as session:
        assert session.scalars(select(RenderTag)).all() == []


@pytest.mark.parametrize(("field", "value"), [("size", "big"), ("status", "maybe")])
def test_bad_filters_name_the_parameter(web_cat, field, value):
    with pytest.raises(search.SearchError, match=field):
        ids_of(web_cat, **{field: value})


def test_forged_cursor_is_refused(web_cat):
    with web_cat.transaction() as session, pytest.raises(search.SearchError, match="cursor"):
        search.search(session, search.Filters(), cursor="../../etc")


def test_the_first_and_last_dates_there_are_bound_nothing(web_cat):
    """Any date the API's OpenAPI calls a date is a filter: 9999-12-31 as date_to answered 500 (no day
    after it), 0001-01-01 as date_from wrapped to a large ULID before 1970 and kept nothing."""
    ids = seed_catalogue(web_cat)
    assert sorted(ids_of(web_cat, date_from=date(1, 1, 1), date_to=date.max)) == sorted(ids.values())
