"""Refuse request input that no view can handle safely, once, before any view runs.

- A NUL character in the URL, the query, a form or a JSON body: PostgreSQL cannot store or
  even compare text holding one (psycopg raises before the query is sent), so a search for
  ``a%00b`` was a ``500``. It is a ``422`` naming the parameter or field instead.
- A JSON body sent without a length (chunked) that reaches ``MAX_CONTENT_LENGTH``: werkzeug
  stops reading there and hands over the first part as if it were all. It is a ``413``.
- JSON nested deeper than ``MAX_JSON_DEPTH``: Python's parser recurses once per level, and
  ``[[[[...`` 10,000 levels deep raised ``RecursionError`` (a ``500``). It is a ``400``,
  found by counting brackets outside strings, without parsing.

The body is read only for JSON requests (uploads stream untouched), and only after the
access checks, so an anonymous caller's body is never read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from flask import Flask, request
from flask_smorest import abort

MAX_JSON_DEPTH = 64  # the deepest body any route takes is a handful of levels
NUL = "\x00"
# The words the plugins' own field checks use for the same refusal.
NUL_MESSAGE = "Must not contain control or invalid characters (here, a NUL)."
# A JSON string (with its escapes), removed before the brackets are counted.
JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")


def json_depth(body: bytes) -> int:
    """How deeply ``body`` (JSON text) nests arrays and objects; brackets inside strings
    do not count. Cheap: the regular expression and ``translate`` run in C."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return 0  # cannot be too deep: no need to look closer
    depth = deepest = 0
    for byte in JSON_STRING.sub(b"", body).translate(None, NOT_BRACKETS):
        depth += 1 if byte in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def nul_paths(value: Any) -> Iterator[str]:
    """The dotted paths (``answers.symptoms``, ``0.patient_id``) of the strings in a parsed
    JSON value that hold a NUL, keys included. Iterative: the depth is checked already,
    but a walk needs no recursion."""
    pending = [("", value)]
    while pending:
        path, item = pending.pop()
        if isinstance(item, str):
            if NUL in item:
                yield path or "body"
            continue
        if isinstance(item, Mapping):
            children = item.items()
        elif isinstance(item, list):
            children = enumerate(item)
        else:
            continue
        for key, child in children:
            child_path = f"{path}.{key}" if path else str(key)
            if NUL in str(key):
                yield child_path
            pending.append((child_path, child))


def _refuse_nul(location: str, names: list[str]) -> None:
    abort(
        422,
        message=f"NUL characters are not accepted ({location}: {', '.join(sorted(names))}).",
        errors={location: {name.replace(NUL, "\\x00"): [NUL_MESSAGE] for name in names}},
    )


def _check_json_body() -> None:
    body = request.get_data(cache=True)  # a Content-Length over the limit: a 413, unread
    limit = request.max_content_length
    if limit is not None and len(body) >= limit:
        # A body without a length (chunked) stops at the limit, silently cut short.
        abort(413, message=f"The body is larger than the limit of {limit} bytes.")
    if json_depth(body) > MAX_JSON_DEPTH:
        abort(
            400,
            message=f"The JSON body is nested more than {MAX_JSON_DEPTH} levels deep.",
            errors={"json": [f"Nest at most {MAX_JSON_DEPTH} levels deep."]},
        )
    if b"\\u0000" not in body:
        return
    try:
        parsed = json.loads(body)
    except ValueError:
        return  # malformed JSON: the view's parser says so
    found = list(nul_paths(parsed))
    if found:
        _refuse_nul("json", found)


def _with_nul(pairs) -> list[str]:
    return [str(key) for key, value in pairs if NUL in f"{key}{value}"]


def init_app(app: Flask) -> None:
    @app.before_request
    def _refuse_unreadable_input():
        if request.endpoint is None:
            return  # a 404 or 405 about to be raised
        if found := _with_nul((request.view_args or {}).items()):
            _refuse_nul("path", found)
        if found := _with_nul(request.args.items(multi=True)):
            _refuse_nul("query", found)
        if request.mimetype == "application/x-www-form-urlencoded":
            if found := _with_nul(request.form.items(multi=True)):
                _refuse_nul("form", found)
        if request.is_json:
            _check_json_body()
