"""The worklist: patients admitted for more than ``hours`` without a new lab test.

A patient is on the worklist at ``as_of`` when an admission of theirs is open at ``as_of``
(no release, or released after it), began more than ``hours`` before it, and no lab test of
theirs was ordered or performed in the ``hours`` before it. Nothing after ``as_of`` counts,
so any moment can be replayed.

Ingestion keeps each patient's latest lab activity in ``monitoring_last_tests``, so the
present moment is one join over the open admissions, never a scan of the lab tables. When
that latest activity lies after ``as_of`` (a replay of the past), the patient's latest
activity up to ``as_of`` is looked up through the lab tables' indexes instead.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from core.db import database
from plugins.monitoring.models import Admission, LastTest

# Each sort key, as the SQL ordering that puts its quantity in ascending order; descending
# reverses every part. Fewer hours since the last test means a more recent test, and a
# patient never tested has the most.
SORTS = {
    "hours_since_last_test": (("w.last_at IS NULL", "ASC"), ("w.last_at", "DESC")),
    "hours_admitted": (("w.admitted_at", "DESC"),),
    "admitted_at": (("w.admitted_at", "ASC"),),
    "last_test_at": (("w.last_at IS NULL", "ASC"), ("w.last_at", "ASC")),
    "name": (
        ("LOWER(COALESCE(w.last_name, ''))", "ASC"),
        ("LOWER(COALESCE(w.first_name, ''))", "ASC"),
    ),
    "mrn": (("w.patient_id", "ASC"),),
    "department": (("LOWER(COALESCE(w.department, ''))", "ASC"),),
    "room": (("w.room", "ASC"),),
}
DEFAULT_SORT = "hours_since_last_test"


@dataclass(frozen=True)
class Criteria:
    as_of: datetime.datetime  # aware
    hours: int = 48
    department: str | None = None
    q: str | None = None
    sort: str = DEFAULT_SORT
    descending: bool = True  # the longest without a test first


@dataclass(frozen=True)
class Row:
    mrn: str
    name: str
    first_name: str | None
    last_name: str | None
    admission_id: str
    department: str | None
    room: str | None
    admitted_at: datetime.datetime
    hours_admitted: float
    last_test_at: datetime.datetime | None
    last_test_name: str | None
    hours_since_last_test: float | None
    never_tested: bool


def _naive_utc(moment: datetime.datetime) -> datetime.datetime:
    return moment.astimezone(datetime.UTC).replace(tzinfo=None)


def _latest(as_of: str, what: str) -> str:
    """A correlated lookup of the patient's latest lab activity up to ``as_of``."""
    orders = (
        f"SELECT t.ordered_at AS at, t.test_name AS name FROM monitoring_lab_tests t "
        f"WHERE t.patient_id = c.patient_id AND t.ordered_at <= {as_of}"
    )
    results = (
        f"SELECT r.performed_at AS at, t.test_name AS name FROM monitoring_lab_results r "
        f"JOIN monitoring_lab_tests t ON t.test_id = r.test_id "
        f"WHERE t.patient_id = c.patient_id AND r.performed_at <= {as_of}"
    )
    return f"(SELECT e.{what} FROM ({orders} UNION ALL {results}) e ORDER BY e.at DESC LIMIT 1)"


def _is_replay(as_of: datetime.datetime) -> bool:
    """Whether some patient's stored latest activity lies after ``as_of`` (one index probe)."""
    return LastTest.select().where(LastTest.last_test_at > as_of).exists()


def _needs_names(criteria: Criteria) -> bool:
    """Whether filtering or sorting reads the names (otherwise they join after the page)."""
    return bool(criteria.q) or criteria.sort == "name"


def _query(criteria: Criteria) -> tuple[str, list]:
    """The worklist as SQL: every matching row, unsorted and unpaged."""
    p = database.param
    as_of = _naive_utc(criteria.as_of)
    cutoff = as_of - datetime.timedelta(hours=criteria.hours)
    params: list = [cutoff, as_of]
    if criteria.department:
        params.append(criteria.department)
    if _is_replay(criteria.as_of):
        # The stored latest activity is exact when it lies at or before as_of; otherwise
        # the lab tables say what it was at as_of.
        current = f"(c.lt_at IS NULL OR c.lt_at <= {p})"
        last_at = f"CASE WHEN {current} THEN c.lt_at ELSE {_latest(p, 'at')} END"
        last_name = f"CASE WHEN {current} THEN c.lt_name ELSE {_latest(p, 'name')} END"
        params += [as_of] * 6
    else:  # the present (or later): the stored latest activity is the answer for everyone
        last_at, last_name = "c.lt_at", "c.lt_name"
    names = (
        ", pt.first_name, pt.last_name FROM c LEFT JOIN core_patients pt ON pt.mrn = c.patient_id"
        if _needs_names(criteria)
        else " FROM c"
    )
    sql = f"""
        WITH c AS (
            SELECT a.patient_id, a.case_number, a.department, a.room, a.admitted_at,
                   lt.last_test_at AS lt_at, lt.last_test_name AS lt_name
            FROM monitoring_admissions a
            LEFT JOIN monitoring_last_tests lt ON lt.patient_id = a.patient_id
            WHERE a.admitted_at < {p}
              AND (a.released_at IS NULL OR a.released_at > {p})
              {"AND a.department = " + p if criteria.department else ""}
        ),
        w AS (
            SELECT c.patient_id, c.case_number, c.department, c.room, c.admitted_at,
                   {last_at} AS last_at, {last_name} AS last_name_of_test{names}
        )
        SELECT * FROM w
        WHERE (w.last_at IS NULL OR w.last_at <= {p})
    """
    params.append(cutoff)
    if criteria.q:
        pattern = "%" + _escape_like(criteria.q.strip().lower()) + "%"
        sql += (
            f" AND (LOWER(w.patient_id) LIKE {p} ESCAPE '\\' "
            f"OR LOWER(COALESCE(w.first_name, '')) LIKE {p} ESCAPE '\\' "
            f"OR LOWER(COALESCE(w.last_name, '')) LIKE {p} ESCAPE '\\' "
            f"OR LOWER(w.case_number) LIKE {p} ESCAPE '\\')"
        )
        params += [pattern] * 4
    return sql, params


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _order_by(criteria: Criteria) -> str:
    flip = {"ASC": "DESC", "DESC": "ASC"}
    parts = [
        f"{expression} {flip[direction] if criteria.descending else direction}"
        for expression, direction in SORTS.get(criteria.sort, SORTS[DEFAULT_SORT])
    ]
    return ", ".join(parts + ["w.patient_id ASC", "w.case_number ASC"])  # a stable order


def count(criteria: Criteria) -> int:
    sql, params = _query(criteria)
    return database.execute_sql(f"SELECT COUNT(*) FROM ({sql}) n", params).fetchone()[0]


def page_sql(criteria: Criteria, *, limit: int | None = None, offset: int = 0) -> tuple[str, list]:
    """The SQL of one sorted page, with the total of all pages on every row (``total``),
    and its parameters (the benchmark times it bare)."""
    sql, params = _query(criteria)
    order = _order_by(criteria)
    # The total is a window over every row, the page a top-N sort by the same ORDER BY. (A
    # ROW_NUMBER() window to carry the order out of the subquery sorted every row in full and
    # cost a third of the first page's time: 61 ms instead of 44, p50 on the benchmark's data.)
    page = f"SELECT w.*, COUNT(*) OVER () AS total FROM ({sql}) w ORDER BY {order}"
    if limit is not None:
        page += f" LIMIT {int(limit)} OFFSET {int(offset)}"
    if _needs_names(criteria):
        return page, params
    # Names only for the rows of the page: a join over 10 rows instead of all of them. The
    # join does not keep the subquery's order, so the page is sorted again (its rows only).
    return (
        f"SELECT w.*, pt.first_name, pt.last_name FROM ({page}) w "
        f"LEFT JOIN core_patients pt ON pt.mrn = w.patient_id ORDER BY {order}",
        params,
    )


def rows(criteria: Criteria, *, limit: int | None = None, offset: int = 0) -> list[Row]:
    return page(criteria, limit=limit, offset=offset)[0]


def page(criteria: Criteria, *, limit: int | None = None, offset: int = 0) -> tuple[list[Row], int]:
    """One page of the worklist and the number of rows on all pages, in one query."""
    cursor = database.execute_sql(*page_sql(criteria, limit=limit, offset=offset))
    names = [column[0] for column in cursor.description]
    records = [dict(zip(names, values, strict=True)) for values in cursor]
    if records:
        total = records[0]["total"]
    else:  # past the last page (or an empty list): the window had no row to count on
        total = count(criteria) if offset else 0
    return [_row(record, criteria) for record in records], total


def _row(record: dict, criteria: Criteria) -> Row:
    to_time = Admission.admitted_at.python_value  # parses SQLite text, makes UTC aware
    admitted_at = to_time(record["admitted_at"])
    last_at = to_time(record["last_at"]) if record["last_at"] is not None else None
    as_of = criteria.as_of.astimezone(datetime.UTC)
    first, last = record["first_name"], record["last_name"]
    return Row(
        mrn=record["patient_id"],
        name=", ".join(part for part in (last, first) if part) or "(name not recorded)",
        first_name=first,
        last_name=last,
        admission_id=record["case_number"],
        department=record["department"],
        room=record["room"],
        admitted_at=admitted_at,
        hours_admitted=round((as_of - admitted_at).total_seconds() / 3600, 1),
        last_test_at=last_at,
        last_test_name=record["last_name_of_test"],
        hours_since_last_test=(
            round((as_of - last_at).total_seconds() / 3600, 1) if last_at else None
        ),
        never_tested=last_at is None,
    )


def departments() -> list[str]:
    query = (
        Admission.select(Admission.department)
        .where(Admission.department.is_null(False))
        .distinct()
        .order_by(Admission.department)
    )
    return [admission.department for admission in query]


def latest_data_at() -> datetime.datetime | None:
    """The latest moment the ingested data speaks of (for replaying a stale data set)."""
    times = [
        Admission.select(Admission.admitted_at).order_by(Admission.admitted_at.desc()).scalar(),
        LastTest.select(LastTest.last_test_at).order_by(LastTest.last_test_at.desc()).scalar(),
    ]
    times = [Admission.admitted_at.python_value(t) for t in times if t is not None]
    return max(times) if times else None
