"""The interactions plugin's rules without a database: times, text, the picture's placement,
and what an amendment changed."""

import datetime
import types

import marshmallow as ma
import pytest

from plugins.interactions import schemas, views
from plugins.interactions.records import changed_fields
from plugins.interactions.schemas import (
    CLOCK_SKEW,
    InteractionsAmendmentSchema,
    InteractionsErrorMarkSchema,
    InteractionsNewSchema,
)

NOW = datetime.datetime(2024, 11, 20, 12, 0, tzinfo=datetime.UTC)


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    """The server's clock stands still at NOW: no assertion depends on timing."""
    monkeypatch.setattr(schemas, "utcnow", lambda: NOW)


def new(**fields):
    return InteractionsNewSchema().load(
        {"kind": "visit", "summary": "Seen", "outcome": "healthy"} | fields
    )


def errors_of(schema, data):
    with pytest.raises(ma.ValidationError) as raised:
        schema.load(data)
    return raised.value.messages


@pytest.mark.parametrize(
    "moment",
    [
        NOW.isoformat(),
        (NOW + CLOCK_SKEW).isoformat(),  # a device clock two minutes ahead
        "2024-11-20T13:01:00+01:00",  # one minute ahead, written in another zone
        "1900-01-01T00:00:00+00:00",
    ],
)
def test_times_up_to_the_clock_skew_are_accepted(moment):
    assert new(occurred_at=moment)["occurred_at"] == datetime.datetime.fromisoformat(moment)


@pytest.mark.parametrize(
    ("moment", "message"),
    [
        ((NOW + CLOCK_SKEW + datetime.timedelta(seconds=1)).isoformat(), "in the future"),
        ("2024-11-20T14:00:00+01:00", "in the future"),
        ("1899-12-31T23:59:59+00:00", "before 1900-01-01"),
        ("0001-01-01T00:00:00+01:00", "before 1900-01-01"),  # overflows in UTC
        ("2024-11-20T11:00:00", "no offset"),
        ("20.11.2024 11:00", "Not an ISO 8601 time"),
    ],
)
def test_times_in_the_future_or_implausible_are_refused(moment, message):
    assert message in errors_of(InteractionsNewSchema(), {"occurred_at": moment})["occurred_at"][0]


def test_the_time_is_optional_and_empty_means_not_given():
    assert "occurred_at" not in new()
    assert "occurred_at" not in new(occurred_at="  ")


def test_text_is_trimmed_line_breaks_normalised_and_empty_optional_text_is_null():
    loaded = new(summary="  Seen  ", notes="one\r\ntwo\rthree  ", status_note=" ")
    assert loaded["summary"] == "Seen"
    assert loaded["notes"] == "one\ntwo\nthree"
    assert loaded["status_note"] is None


def test_notes_may_hold_line_breaks_and_tabs_but_the_summary_may_not():
    assert new(notes="a\n\tb")["notes"] == "a\n\tb"
    assert "summary" in errors_of(InteractionsNewSchema(), {"summary": "a\tb"})
    # A non-breaking space pasted from a word processor is text, not a control character.
    assert new(summary="BP 120/80\u00a0mmHg")["summary"] == "BP 120/80\u00a0mmHg"


@pytest.mark.parametrize("character", ["\u202a", "\u202e", "\u2066", "\u2069", "\u2028", "\u2029"])
def test_one_line_of_text_refuses_direction_controls_and_line_separators(character):
    messages = errors_of(InteractionsNewSchema(), {"summary": f"Seen{character}gnorw"})
    assert "text-direction controls" in " ".join(messages["summary"])
    # Free text keeps them (a note may quote right-to-left text).
    assert new(notes=f"a{character}b")["notes"] == f"a{character}b"


def test_text_over_its_limit_is_named_for_its_length_only():
    messages = errors_of(InteractionsNewSchema(), {"summary": "\x00" * 100_000})
    assert messages["summary"] == ["Enter a summary of 1 to 200 characters."]


def test_every_kind_and_outcome_is_accepted_and_nothing_else():
    for kind in ("visit", "ward_round", "phone_call", "video_call", "other"):
        assert new(kind=kind)["kind"] == kind
    for outcome in ("healthy", "not_healthy"):
        assert new(outcome=outcome)["outcome"] == outcome
    messages = errors_of(InteractionsNewSchema(), {"kind": "home", "outcome": "ok"})
    assert set(messages) >= {"kind", "outcome", "summary"}


def test_an_amendment_needs_a_reason_and_takes_any_subset_of_fields():
    assert InteractionsAmendmentSchema().load({"reason": "r", "outcome": "not_healthy"}) == {
        "reason": "r",
        "outcome": "not_healthy",
    }
    assert errors_of(InteractionsAmendmentSchema(), {"outcome": "healthy"}) == {
        "reason": ["Give a reason."]
    }
    assert InteractionsAmendmentSchema().load({"reason": "r", "notes": None})["notes"] is None
    assert "reason" in errors_of(InteractionsErrorMarkSchema(), {"reason": " "})


def version(**fields):
    base = {
        "occurred_at": NOW,
        "kind": "visit",
        "summary": "Seen",
        "notes": None,
        "outcome": "healthy",
        "status_note": None,
    }
    return types.SimpleNamespace(**(base | fields))


def test_changed_fields_name_what_an_amendment_changed_in_the_forms_order():
    assert changed_fields(None, version()) == []
    assert changed_fields(version(), version()) == []
    assert changed_fields(
        version(), version(outcome="not_healthy", occurred_at=NOW.replace(hour=9))
    ) == [
        "occurred_at",
        "outcome",
    ]


def entry(entry_id, hours_ago, outcome="healthy"):
    current = types.SimpleNamespace(
        occurred_at=NOW - datetime.timedelta(hours=hours_ago), outcome=outcome
    )
    return types.SimpleNamespace(id=entry_id, current=current, error_mark=None)


def test_the_picture_places_each_interaction_by_time_in_its_outcome_lane():
    entries = [entry(1, 100), entry(2, 50, "not_healthy"), entry(3, 25), entry(4, 0)]
    drawn = views.picture(entries, NOW)
    assert drawn["first"] == NOW - datetime.timedelta(hours=100) and drawn["last"] == NOW
    lanes = {
        outcome: [(m.entry.id, m.x) for m in marks] for outcome, marks in drawn["lanes"].items()
    }
    # The edges are kept a mark's width inside the track, so no mark is cut in half.
    assert lanes == {"healthy": [(1, 1.0), (3, 75.0), (4, 99.0)], "not_healthy": [(2, 50.0)]}


def test_the_picture_runs_to_now_and_copes_with_one_interaction_or_none():
    assert views.picture([], NOW) == {"lanes": {}, "first": None, "last": None}
    (mark,) = views.picture([entry(1, 10)], NOW)["lanes"]["healthy"]
    assert mark.x == 1.0
    # Recorded with clock skew, a moment ahead of now: the right edge moves to it.
    ahead = entry(2, -0.01)
    drawn = views.picture([entry(1, 10), ahead], NOW)
    assert drawn["last"] == ahead.current.occurred_at
    assert drawn["lanes"]["healthy"][-1].x == 99.0
