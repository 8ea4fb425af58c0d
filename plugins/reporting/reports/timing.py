"""ISO weeks in a time zone, when a subscription is due, and which week it reports.

A subscription says "Monday 08:00 Europe/Berlin": each occurrence is computed in the
subscriber's zone from the wall-clock time, never by adding 7 x 24 hours to the previous
one, so 08:00 stays 08:00 local across daylight-saving changes (the UTC moment moves).

Two local times need a rule, and these are the rules:

- A time that does not exist that day (the clocks jump from 02:00 to 03:00, and the
  subscription says 02:30) runs as late as the jump: 02:30 is read with the offset before
  the change, which is 03:30 after it. The report is late by the gap, never skipped.
- A time that happens twice (the clocks go back from 03:00 to 02:00, and the subscription
  says 02:30) runs at the first 02:30 only: one email, never two.

Each occurrence reports the last complete ISO week before the day it falls on: Monday
2026-11-23 reports 2026-W47 (16 to 22 November), and so does Friday 2026-11-27.
"""

from __future__ import annotations

import datetime
import re
import zoneinfo

TIME_PATTERN = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")  # fullmatch: ASCII digits only


def parse_time(text: str) -> datetime.time:
    match = TIME_PATTERN.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise ValueError("Give the time as HH:MM on a 24-hour clock, e.g. 08:00.")
    return datetime.time(int(match[1]), int(match[2]))


def zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA zone ``name``; ``ValueError`` if unknown."""
    try:
        if not name or name != name.strip() or name.startswith("/"):
            raise ValueError
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"{name!r} is not an IANA time zone; use a name such as Europe/Berlin or UTC."
        ) from None


def local_moment(day: datetime.date, at: datetime.time, tz: zoneinfo.ZoneInfo) -> datetime.datetime:
    """``day`` at ``at`` in ``tz``, in UTC, by the rules above (fold=0 does both: in a gap
    it takes the offset before the change, and of a repeated hour the first)."""
    return datetime.datetime.combine(day, at, tzinfo=tz).replace(fold=0).astimezone(datetime.UTC)


def next_due(weekday: int, at: str, zone_name: str, after: datetime.datetime) -> datetime.datetime:
    """The first occurrence strictly after ``after`` (aware), in UTC."""
    tz, local_time = zone(zone_name), parse_time(at)
    # Start a day early: the local date of ``after`` may already be past a moment that a
    # jump of the clocks put on the previous local date.
    day = after.astimezone(tz).date() - datetime.timedelta(days=1)
    day += datetime.timedelta(days=(weekday - day.weekday()) % 7)
    while True:
        moment = local_moment(day, local_time, tz)
        if moment > after:
            return moment
        day += datetime.timedelta(days=7)


def latest_due(weekday: int, at: str, zone_name: str, now: datetime.datetime) -> datetime.datetime:
    """The last occurrence at or before ``now``."""
    moment = next_due(weekday, at, zone_name, now - datetime.timedelta(days=8))
    while True:
        following = next_due(weekday, at, zone_name, moment)
        if following > now:
            return moment
        moment = following


def reported_week(moment: datetime.datetime, zone_name: str) -> str:
    """The ISO week an occurrence at ``moment`` reports: the last complete one before it."""
    local_day = moment.astimezone(zone(zone_name)).date()
    return format_week(local_day - datetime.timedelta(days=7))


# ISO weeks ----------------------------------------------------------------------------
#
# A week runs from Monday 00:00 to the next Monday 00:00 *local* time, so a week holding a
# daylight-saving change lasts 167 or 169 hours: bounds are built from local dates and only
# then turned into instants, never by adding 7 x 24 hours to an instant.

_WEEK = re.compile(r"([0-9]{4})-W([0-9]{2})")  # ASCII digits: \d takes any script's


def _zone(timezone: str | datetime.tzinfo) -> datetime.tzinfo:
    return zoneinfo.ZoneInfo(timezone) if isinstance(timezone, str) else timezone


def parse_week(week: str) -> tuple[int, int]:
    """``"2026-W47"`` -> ``(2026, 47)``; a ``ValueError`` naming the text otherwise."""
    match = _WEEK.fullmatch(week) if isinstance(week, str) else None
    if match:
        year, number = int(match[1]), int(match[2])
        try:
            datetime.date.fromisocalendar(year, number, 1)
        except ValueError:
            match = None
    if not match:
        raise ValueError(
            f"{week!r} is not an ISO week: write it as YYYY-Www, such as 2026-W47 "
            "(weeks 01 to 52, or 53 in a year that has one)"
        )
    return year, number


def normalise_week(week: str) -> str:
    """``week`` checked and written the one way the ledger and runs store it."""
    return format_week(week_monday(week))


def format_week(day: datetime.date) -> str:
    """The ISO week holding the date ``day``, as ``YYYY-Www``."""
    year, number, _ = day.isocalendar()
    return f"{year:04d}-W{number:02d}"


def week_monday(week: str) -> datetime.date:
    """The Monday (a date) that starts ``week``."""
    year, number = parse_week(week)
    return datetime.date.fromisocalendar(year, number, 1)


def day_bounds(week: str, timezone: str | datetime.tzinfo) -> list[datetime.datetime]:
    """The eight local midnights from Monday 00:00 of ``week`` to the next Monday 00:00 in
    ``timezone``, as aware UTC datetimes.

    UTC because Python subtracts two datetimes of the same zone by wall clock: in local
    time the week of an autumn change would seem 7 x 24 hours long, not 169. (Where a zone
    skips midnight, zoneinfo's ``fold=0`` reading gives the day's first instant that exists.)
    """
    monday = week_monday(week)
    zone = _zone(timezone)
    return [
        datetime.datetime.combine(
            monday + datetime.timedelta(days=i), datetime.time(0), zone
        ).astimezone(datetime.UTC)
        for i in range(8)
    ]


def week_bounds(
    week: str, timezone: str | datetime.tzinfo
) -> tuple[datetime.datetime, datetime.datetime]:
    """``(start, end)``: Monday 00:00 and the next Monday 00:00 local time in ``timezone``,
    as aware UTC datetimes; the week holds the instants ``start <= t < end``."""
    bounds = day_bounds(week, timezone)
    return bounds[0], bounds[-1]


def week_of(moment: datetime.datetime, timezone: str | datetime.tzinfo) -> str:
    """The ISO week that holds the aware ``moment`` in ``timezone``."""
    if moment.tzinfo is None:
        raise ValueError("week_of needs an aware datetime: a naive one is ambiguous")
    return format_week(moment.astimezone(_zone(timezone)).date())


def previous_week(week: str) -> str:
    """The ISO week before ``week`` (``"2026-W01"`` -> ``"2025-W53"`` or ``"2025-W52"``)."""
    return format_week(week_monday(week) - datetime.timedelta(days=7))


def last_full_week(moment: datetime.datetime, timezone: str | datetime.tzinfo) -> str:
    """The last week that had ended by ``moment`` in ``timezone``: what a weekly report
    sent at ``moment`` covers."""
    return previous_week(week_of(moment, timezone))
