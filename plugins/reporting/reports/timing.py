"""When a subscription is due, and which ISO week it reports.

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

WEEK_PATTERN = re.compile(r"^(\d{4})-W(\d{2})$")
TIME_PATTERN = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def week_label(day: datetime.date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def week_monday(label: str) -> datetime.date:
    """The Monday of an ISO week ``YYYY-Www``; ``ValueError`` if there is no such week."""
    match = WEEK_PATTERN.match(label)
    if not match:
        raise ValueError("Give an ISO week as YYYY-Www, e.g. 2026-W47.")
    try:
        return datetime.date.fromisocalendar(int(match[1]), int(match[2]), 1)
    except ValueError:
        raise ValueError(f"{label} is not a week: {match[1]} has no week {match[2]}.") from None


def parse_time(text: str) -> datetime.time:
    match = TIME_PATTERN.match(text)
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
    return week_label(local_day - datetime.timedelta(days=7))


def week_bounds(label: str) -> tuple[datetime.date, datetime.date]:
    monday = week_monday(label)
    return monday, monday + datetime.timedelta(days=6)
