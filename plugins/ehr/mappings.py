"""Mappings as data: for each connector, which of our fields go to which EHR field at which
endpoint, with an optional value transform. Versioned: a save is a new version, old versions
stay readable, and every delivery names the version it used (so an edit changes what new
submissions send, never what an earlier one sent or is still sending).

The document (``MappingVersion.fields`` and the API's ``fields``)::

    {"dob": {"field": "DATE_OF_BIRTH_PATIENT", "endpoint": "demographics",
             "transform": {"kind": "date", "format": "%m/%d/%Y"}},
     "gender": {"field": "GENDER_OF_PATIENT", "endpoint": "demographics",
                "transform": {"kind": "codes", "codes": {"female": "F", "male": "M"}}},
     "name": {"field": "NAME_OF_PAT", "endpoint": "SavePatientDemographics",
              "transform": {"kind": "upper"}}, ...}

A field of ours absent from the mapping is not sent.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from typing import Any

import peewee

from core.db import database
from plugins.ehr import connectors
from plugins.ehr.errors import InputError
from plugins.ehr.fields import DATE_FIELDS, OUR_FIELDS
from plugins.ehr.models import NOTE_MAX_LENGTH, MappingVersion

TRANSFORM_KINDS = ("date", "codes", "upper")
# strftime directives a date format may use: the date's own parts, nothing locale- or
# time-dependent.
DATE_DIRECTIVES = frozenset("YymdbBj%")
DATE_FORMAT_MAX_LENGTH = 40
CODE_MAX_LENGTH = 100
ENTRY_KEYS = ("field", "endpoint", "transform")


class MappingError(InputError):
    """A mapping that cannot be saved; ``errors`` maps each place to what is wrong."""


class MappingConflict(MappingError):
    """The mapping was saved by someone else since ``base_version``; ``current`` is theirs."""

    def __init__(self, current: MappingVersion, base_version: int):
        super().__init__(
            {
                "base_version": f"Version {current.version} was saved by {current.created_by} "
                f"since version {base_version}, which this edit started from; nothing was "
                "saved. Compare the versions, then save again."
            }
        )
        self.current = current


def _who(user: Any) -> str:
    return getattr(user, "email", None) or str(user)


def _newest(connector: str) -> MappingVersion | None:
    return (
        MappingVersion.select()
        .where(MappingVersion.connector == connector)
        .order_by(MappingVersion.version.desc())
        .first()
    )


def current(connector: str) -> MappingVersion:
    """The connector's newest version; version 1 (its default mapping) is created on first use."""
    found = _newest(connector)
    if found is not None:
        return found
    default = connectors.get(connector).default_mapping()
    try:
        with database.atomic():  # a savepoint inside a caller's transaction
            return MappingVersion.create(
                connector=connector,
                version=1,
                fields=default,
                note="The connector's default mapping.",
                created_by="caredeck",
            )
    except peewee.IntegrityError:  # another request created it first
        return _newest(connector)


def versions(connector: str) -> list[MappingVersion]:
    """Every version, newest first (creating version 1 on first use)."""
    current(connector)
    return list(
        MappingVersion.select()
        .where(MappingVersion.connector == connector)
        .order_by(MappingVersion.version.desc())
    )


def version(connector: str, number: int) -> MappingVersion | None:
    current(connector)
    return MappingVersion.get_or_none(
        (MappingVersion.connector == connector) & (MappingVersion.version == number)
    )


# Validation -----------------------------------------------------------------------------


def _date_format_error(format: Any) -> str | None:
    if not isinstance(format, str) or not 1 <= len(format) <= DATE_FORMAT_MAX_LENGTH:
        return f"Give a date format of 1 to {DATE_FORMAT_MAX_LENGTH} characters, e.g. %m/%d/%Y."
    directives = re.findall(r"%(.?)", format)
    unknown = sorted({d for d in directives if d not in DATE_DIRECTIVES})
    if unknown:
        return (
            "A date format may use only %Y %y %m %d %b %B %j and %%; not "
            + ", ".join(f"%{d}" for d in unknown)
            + "."
        )
    if not ({"Y", "y"} & set(directives)) or not (
        "j" in directives or ({"m", "b", "B"} & set(directives) and "d" in directives)
    ):
        return "A date format must write the year, month and day (e.g. %m/%d/%Y)."
    if any(ord(character) < 32 for character in format):
        return "A date format must not contain control characters."
    return None


def _transform_errors(ours: str, transform: Any) -> dict[str, str]:
    where = f"{ours}.transform"
    if transform is None:
        return {}
    if not isinstance(transform, Mapping):
        return {where: "Give null or an object with a kind."}
    kind = transform.get("kind")
    if kind not in TRANSFORM_KINDS:
        return {f"{where}.kind": "Choose one of: " + ", ".join(TRANSFORM_KINDS) + "."}
    allowed = {"date": {"kind", "format"}, "codes": {"kind", "codes"}, "upper": {"kind"}}[kind]
    unknown = sorted(set(transform) - allowed)
    if unknown:
        return {where: f"Unknown for a {kind} transform: {', '.join(unknown)}."}
    if kind == "date":
        if ours not in DATE_FIELDS:
            fields = ", ".join(DATE_FIELDS)
            return {f"{where}.kind": f"A date transform applies to a date field ({fields})."}
        problem = _date_format_error(transform.get("format"))
        return {f"{where}.format": problem} if problem else {}
    if kind == "codes":
        codes = transform.get("codes")
        if not isinstance(codes, Mapping) or not codes:
            return {f"{where}.codes": "Give the code list: an object of our value -> EHR code."}
        for ours_value, code in codes.items():
            if not (isinstance(code, str) and 1 <= len(code) <= CODE_MAX_LENGTH) or not (
                1 <= len(ours_value) <= CODE_MAX_LENGTH
            ):
                return {
                    f"{where}.codes": f"Each value and code is text of 1 to {CODE_MAX_LENGTH} "
                    f"characters; {ours_value!r} is not mapped to one."
                }
    return {}


def validate(connector: str, fields: Any) -> dict[str, str]:
    """What is wrong with a mapping document for ``connector``, by place (``"dob.field"``,
    ``"gender.transform.codes"``; ``"mapping"`` for the document as a whole); empty when
    it is valid."""
    try:
        target = connectors.get(connector)
    except connectors.UnknownConnector as error:
        return {"connector": str(error)}
    if not isinstance(fields, Mapping):
        return {"mapping": "Give an object of our field -> {field, endpoint, transform}."}
    if not fields:
        return {"mapping": "Map at least one field."}
    errors: dict[str, str] = {}
    targets: dict[tuple[str, str], str] = {}
    for ours, entry in fields.items():
        if ours not in OUR_FIELDS:
            errors[str(ours)] = "Not one of our fields: " + ", ".join(OUR_FIELDS) + "."
            continue
        if not isinstance(entry, Mapping):
            errors[ours] = "Give an object with field, endpoint and transform."
            continue
        unknown = sorted(set(entry) - set(ENTRY_KEYS))
        if unknown:
            errors[ours] = (
                f"Unknown: {', '.join(map(str, unknown))}; give field, endpoint, transform."
            )
            continue
        field, endpoint = entry.get("field"), entry.get("endpoint")
        if field not in target.ehr_fields:
            errors[f"{ours}.field"] = f"{target.title} has no field {field!r}."
        if endpoint not in target.endpoints:
            errors[f"{ours}.endpoint"] = (
                f"{target.title}'s endpoints are: " + ", ".join(target.endpoints) + "."
            )
        errors.update(_transform_errors(ours, entry.get("transform")))
        if f"{ours}.field" in errors or f"{ours}.endpoint" in errors:
            continue  # (a list or object here would not even be hashable)
        if (endpoint, field) in targets:
            errors[f"{ours}.field"] = (
                f"{field} at {endpoint} is already mapped from {targets[(endpoint, field)]}."
            )
        targets.setdefault((endpoint, field), ours)
    return errors


def _normalised(fields: Mapping) -> dict:
    """Our order, every entry with its three keys."""
    return {
        ours: {
            "field": fields[ours]["field"],
            "endpoint": fields[ours]["endpoint"],
            "transform": fields[ours].get("transform"),
        }
        for ours in OUR_FIELDS
        if ours in fields
    }


def save(
    connector: str, fields: Any, *, user: Any, note: str = "", base_version: int | None = None
) -> MappingVersion:
    """Save ``fields`` as the connector's next version; raises :class:`MappingError`.

    ``base_version``, the version the edit started from: when another version was saved
    since, :class:`MappingConflict` (checked atomically, so a colleague's save is never
    silently undone). Saving what the current version already holds saves nothing and
    returns it."""
    errors = validate(connector, fields)
    note = (note or "").strip()
    if len(note) > NOTE_MAX_LENGTH:
        errors["note"] = f"The note can be at most {NOTE_MAX_LENGTH} characters."
    if errors:
        raise MappingError(errors)
    fields = _normalised(fields)
    for _ in range(5):
        latest = current(connector)
        if base_version is not None and latest.version != base_version:
            raise MappingConflict(latest, base_version)
        if latest.fields == fields:
            return latest
        try:
            with database.atomic():
                return MappingVersion.create(
                    connector=connector,
                    version=latest.version + 1,
                    fields=fields,
                    note=note,
                    created_by=_who(user),
                )
        except peewee.IntegrityError:
            continue  # another save took that number: look again
    raise MappingError({"mapping": "The mapping is being changed by others; try again."})


def diff(older: MappingVersion, newer: MappingVersion) -> list[dict]:
    """What changed from ``older`` to ``newer``, in our field order: rows ``{"field",
    "change": "added" | "removed" | "changed", "before", "after"}``."""
    rows = []
    for ours in OUR_FIELDS:
        before, after = older.fields.get(ours), newer.fields.get(ours)
        if before == after:
            continue
        change = "added" if before is None else "removed" if after is None else "changed"
        rows.append({"field": ours, "change": change, "before": before, "after": after})
    return rows


# Applying a mapping ---------------------------------------------------------------------


def transform(rule: Mapping | None, value: str) -> str:
    """One answer, written as the EHR wants it."""
    if rule is None:
        return value
    kind = rule["kind"]
    if kind == "date":
        return datetime.date.fromisoformat(value).strftime(rule["format"])
    if kind == "codes":
        codes = rule["codes"]
        if value in codes:
            return codes[value]
        # "Female" is the code list's "female"; a value the list lacks goes as it is.
        folded = {key.casefold(): code for key, code in codes.items()}
        return folded.get(value.casefold(), value)
    if kind == "upper":
        return value.upper()
    raise ValueError(f"unknown transform {kind!r}")


def payloads(version: MappingVersion, answers: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """The answers as the EHR's payloads: ``{endpoint: {ehr_field: value}}``, endpoints in
    the connector's order. Unanswered fields, and fields the mapping lacks, are not sent."""
    found: dict[str, dict[str, str]] = {}
    for ours in OUR_FIELDS:
        entry, value = version.fields.get(ours), answers.get(ours)
        if entry is None or value in (None, ""):
            continue
        found.setdefault(entry["endpoint"], {})[entry["field"]] = transform(
            entry.get("transform"), value
        )
    order = {
        endpoint: index
        for index, endpoint in enumerate(connectors.get(version.connector).endpoints)
    }
    return dict(sorted(found.items(), key=lambda item: order.get(item[0], len(order))))
