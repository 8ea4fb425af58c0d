"""The medication period rules, one test per rule, example and special case."""

import datetime
import itertools
import json
import random

import pytest

from plugins.medications.events import read
from plugins.medications.periods import derive
from plugins.medications.plugin import SAMPLE_EVENTS

DAY = datetime.datetime(2024, 11, 20, tzinfo=datetime.UTC)


def at(hour, minute=0):
    return DAY + datetime.timedelta(hours=hour, minutes=minute)


def periods_of(*events, medication="Heparin"):
    """``periods_of(("start", 0), ("stop", 1))`` -> ``[(start hour, end hour or None)]``."""
    periods, anomalies = derive((medication, action, at(hour)) for action, hour in events)
    hours = [
        (
            (p.start - DAY) / datetime.timedelta(hours=1),
            None if p.end is None else (p.end - DAY) / datetime.timedelta(hours=1),
        )
        for p in periods
    ]
    return hours, [(a.type, (a.event_time - DAY) / datetime.timedelta(hours=1)) for a in anomalies]


# The examples.


def test_a_start_and_a_stop_make_a_period():
    assert periods_of(("start", 0), ("stop", 1)) == ([(0, 1)], [])


def test_a_cancelled_start_opens_nothing():
    events = [("start", 0), ("cancel_start", 1), ("start", 2), ("stop", 3)]
    assert periods_of(*events) == ([(2, 3)], [])


def test_a_start_and_a_stop_at_the_same_instant_make_a_zero_length_period():
    assert periods_of(("start", 0), ("stop", 0)) == ([(0, 0)], [])
    assert periods_of(("stop", 0), ("start", 0)) == ([(0, 0)], [])  # arrival order


def test_a_cancelled_stop_leaves_the_period_open():
    assert periods_of(("start", 0), ("stop", 1), ("cancel_stop", 2)) == ([(0, None)], [])


# Rule 1: cancels.


def test_a_cancel_voids_the_latest_live_start_at_or_before_it():
    events = [("start", 0), ("stop", 1), ("start", 2), ("cancel_start", 3), ("stop", 4)]
    # The 02:00 start is voided; the 04:00 stop has nothing open.
    assert periods_of(*events) == ([(0, 1)], [("stop_without_start", 4)])


def test_a_cancel_at_the_same_instant_voids_that_start():
    assert periods_of(("start", 5), ("cancel_start", 5)) == ([], [])


def test_two_cancels_void_two_starts_newest_first():
    events = [("start", 0), ("start", 1), ("cancel_start", 2), ("cancel_start", 3), ("stop", 4)]
    assert periods_of(*events) == ([], [("stop_without_start", 4)])


def test_a_cancel_ignores_events_after_it():
    # The cancel at 01:00 has no start at or before it; the 02:00 start stays.
    events = [("cancel_start", 1), ("start", 2), ("stop", 3)]
    assert periods_of(*events) == ([(2, 3)], [("unmatched_cancel", 1)])


def test_a_cancel_with_nothing_to_void_is_an_anomaly():
    assert periods_of(("cancel_stop", 1)) == ([], [("unmatched_cancel", 1)])
    events = [("start", 0), ("cancel_start", 1), ("cancel_start", 2)]
    assert periods_of(*events) == ([], [("unmatched_cancel", 2)])


# Rules 2 to 4: pairing.


def test_several_periods_of_one_medication():
    events = [("start", 0), ("stop", 1), ("start", 2), ("stop", 3), ("start", 4)]
    assert periods_of(*events) == ([(0, 1), (2, 3), (4, None)], [])


def test_back_to_back_periods_are_not_errors():
    # At equal times a stop closes the open period before a start opens the next.
    events = [("start", 0), ("start", 1), ("stop", 1), ("stop", 2)]
    assert periods_of(*events) == ([(0, 1), (1, 2)], [])


def test_a_start_while_open_is_a_duplicate_and_the_period_keeps_its_first_start():
    events = [("start", 0), ("start", 1), ("stop", 2)]
    assert periods_of(*events) == ([(0, 2)], [("duplicate_start", 1)])


def test_a_stop_without_a_start_is_an_anomaly():
    assert periods_of(("stop", 3)) == ([], [("stop_without_start", 3)])
    events = [("start", 0), ("stop", 1), ("stop", 2)]
    assert periods_of(*events) == ([(0, 1)], [("stop_without_start", 2)])


def test_a_start_without_a_stop_is_open():
    assert periods_of(("start", 7)) == ([(7, None)], [])


def test_two_starts_and_two_stops_at_one_instant():
    events = [("start", 1), ("start", 1), ("stop", 1), ("stop", 1)]
    assert periods_of(*events) == ([(1, 1), (1, 1)], [])


def test_no_events_no_periods():
    assert derive([]) == ([], [])


def test_medications_are_independent_and_may_overlap():
    periods, anomalies = derive(
        [
            ("Heparin", "start", at(0)),
            ("Morphine", "start", at(1)),
            ("Heparin", "stop", at(2)),
            ("Morphine", "stop", at(3)),
            ("Morphine", "cancel_start", at(4)),  # voids Morphine's start, not Heparin's
        ]
    )
    assert [(p.medication, p.start, p.end) for p in periods] == [("Heparin", at(0), at(2))]
    assert [(a.type, a.medication) for a in anomalies] == [("stop_without_start", "Morphine")]


def test_arrival_order_never_matters():
    events = [
        ("Heparin", action, at(hour))
        for action, hour in [
            ("start", 0),
            ("stop", 1),
            ("cancel_stop", 2),
            ("start", 3),
            ("stop", 4),
            ("cancel_start", 4),
            ("start", 4),
            ("stop", 6),
            ("stop", 6),
        ]
    ]
    expected = derive(events)
    shuffled = list(events)
    for seed in range(50):
        random.Random(seed).shuffle(shuffled)
        assert derive(shuffled) == expected


@pytest.mark.parametrize("offset", ["+00:00", "+0000", "+02:00"])
def test_times_with_offsets_compare_as_moments(offset):
    event = {"patient_id": "1", "medication": "A", "action": "stop"}
    (line,) = read([json.dumps({**event, "event_time": f"2024-11-20T10:00:00{offset}"})])
    start = ("A", "start", datetime.datetime(2024, 11, 20, 7, tzinfo=datetime.UTC))
    periods, _ = derive([start, ("A", line.event.action, line.event.event_time)])
    assert periods[0].end == datetime.datetime.fromisoformat(f"2024-11-20T10:00:00{offset}")


def test_the_sample_file_gives_what_its_readme_says():
    with SAMPLE_EVENTS.open() as sample:
        lines = list(read(sample))
    events = sorted((line.event for line in lines if line.event), key=lambda e: e.patient_id)
    found = {}
    for mrn, group in itertools.groupby(events, key=lambda e: e.patient_id):
        periods, anomalies = derive((e.medication, e.action, e.event_time) for e in group)
        assert anomalies == []
        found.setdefault(mrn, []).extend(
            (p.medication, p.start.strftime("%d %H:%M"), p.end and p.end.strftime("%d %H:%M"))
            for p in periods
        )
    assert found == {
        "7792223": [("Heparin", "20 08:00", "21 08:00"), ("Ceftriaxone", "20 09:30", "22 09:30")],
        "2506625": [("Morphine", "20 11:00", None)],
        "6021421": [("Insulin", "20 07:00", "20 07:00")],
    }
    assert [(line.number, line.error.split(":")[0]) for line in lines if line.error] == [
        (12, "event_time"),
        (13, "action"),
        (14, "The event is empty"),
    ]
