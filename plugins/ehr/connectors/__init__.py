"""EHR connectors: one per EHR system, installed under the entry-point group
``caredeck.ehr_connectors`` (the built-in ``athena``, ``allscripts`` and ``sandbox`` too).

A connector knows its EHR's endpoints and field names, a default mapping of our fields onto
them, how to send one endpoint's payload for one patient, and how to look a patient up (the
identity check made before every delivery). It does not retry, order or record anything:
``plugins/ehr/delivery.py`` does that the same way for every EHR. The HTTP helpers here
(:meth:`Connector.post_json`, :meth:`Connector.get_json`) give every connector the same
timeouts, headers and error classification; ``docs/ehr.md`` walks through writing one.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests
from flask import current_app

from plugins.ehr.credentials import CredentialsUnreadable

log = logging.getLogger("caredeck.ehr")
ENTRY_POINT_GROUP = "caredeck.ehr_connectors"
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")
USER_AGENT = "Caredeck-EHR/1"
MESSAGE_MAX_LENGTH = 1000


class UnknownConnector(KeyError):
    """No connector of that name is installed."""

    def __str__(self) -> str:
        return f"No EHR connector {self.args[0]!r} is installed."


class ConnectorLoadError(Exception):
    """An installed connector is broken; start-up stops with this message."""


@dataclass(frozen=True)
class SendResult:
    """What became of one request to an EHR.

    ``ok``: the EHR accepted it. Otherwise ``retryable`` says whether trying again later can
    help (a timeout, a lost connection, 408, 429, 5xx) or not (any other 4xx: the EHR
    refused it, and ``message`` is what the EHR said)."""

    ok: bool
    retryable: bool = False
    status: int | None = None
    message: str = ""
    body: Any = None


@dataclass(frozen=True)
class PatientIdentity:
    """Who a patient identifier is in the EHR, as the EHR says."""

    ehr_patient_id: str
    name: str | None = None
    date_of_birth: datetime.date | None = None


class ConnectorError(Exception):
    """A lookup failed; ``result`` says how (and whether a retry can help)."""

    def __init__(self, result: SendResult):
        super().__init__(result.message)
        self.result = result


class Connector:
    """The base of every connector. Set the four attributes and implement
    :meth:`default_mapping`, :meth:`send` and :meth:`identify`."""

    name: str = ""
    title: str = ""
    endpoints: tuple[str, ...] = ()
    ehr_fields: tuple[str, ...] = ()

    def default_mapping(self) -> dict:
        """Version 1 of this connector's mapping (``docs/ehr.md``, the mapping document)."""
        raise NotImplementedError

    def send(
        self,
        organization,
        endpoint: str,
        payload: dict,
        *,
        ehr_patient_id: str,
        idempotency_key: str,
    ) -> SendResult:
        """Send one endpoint's payload for one patient. Never raises for an HTTP or network
        failure: it returns the :class:`SendResult` that says what happened."""
        raise NotImplementedError

    def identify(self, organization, ehr_patient_id: str) -> PatientIdentity:
        """The EHR's record of this patient identifier; raises :class:`ConnectorError`."""
        raise NotImplementedError

    # HTTP helpers ------------------------------------------------------------------------

    @staticmethod
    def url(organization, *segments: str) -> str:
        """``base_url`` joined with path segments, each quoted (an identifier can never add
        a path segment or a query of its own)."""
        path = "/".join(quote(str(segment), safe="") for segment in segments)
        return f"{organization.base_url.rstrip('/')}/{path}"

    @staticmethod
    def headers(organization, idempotency_key: str | None = None) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        credential = organization.credential()  # raises CredentialsUnreadable
        if credential:
            headers["Authorization"] = f"Bearer {credential}"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    def post_json(self, organization, url: str, body: Any, *, idempotency_key: str) -> SendResult:
        return self._request("POST", organization, url, json=body, idempotency_key=idempotency_key)

    def get_json(self, organization, url: str, params: dict | None = None) -> SendResult:
        return self._request("GET", organization, url, params=params)

    def lookup(self, organization, url: str, params: dict | None = None) -> dict:
        """GET a JSON object (a patient record); raises :class:`ConnectorError`."""
        result = self.get_json(organization, url, params)
        if not result.ok:
            raise ConnectorError(result)
        if not isinstance(result.body, dict):
            raise ConnectorError(
                SendResult(False, False, result.status, "The EHR's answer is not a JSON object.")
            )
        return result.body

    def _request(self, method: str, organization, url: str, *, idempotency_key=None, **options):
        timeout = current_app.config["EHR_HTTP_TIMEOUT_SECONDS"]
        try:
            headers = self.headers(organization, idempotency_key)
        except CredentialsUnreadable as error:
            return SendResult(False, False, None, f"{organization.name}: {error}")
        try:
            response = requests.request(
                method,
                url,
                headers=headers,
                timeout=(min(timeout, 10), timeout),  # (connect, read)
                allow_redirects=False,  # a redirect would carry the credentials elsewhere
                **options,
            )
        except requests.Timeout:
            return SendResult(False, True, None, f"The EHR did not answer within {timeout} s.")
        except requests.ConnectionError as error:
            return SendResult(False, True, None, f"Could not connect to the EHR: {_short(error)}")
        except requests.RequestException as error:  # a malformed URL: no retry will help
            return SendResult(False, False, None, f"Could not send to the EHR: {_short(error)}")
        return classify(response)


def classify(response: requests.Response) -> SendResult:
    """2xx accepted; 408, 429 and 5xx worth retrying; any other status refused, with the
    EHR's own message."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if 200 <= status < 300:
        return SendResult(True, False, status, "", body)
    said = _message_of(body) or response.text.strip() or response.reason or ""
    message = f"The EHR answered {status}: {said}"[:MESSAGE_MAX_LENGTH]
    retryable = status in (408, 429) or status >= 500
    return SendResult(False, retryable, status, message, body)


def _message_of(body: Any) -> str | None:
    if isinstance(body, dict):
        for key in ("message", "error", "detail", "errors", "Message", "ErrorMessage"):
            if body.get(key):
                value = body[key]
                return value if isinstance(value, str) else str(value)
    return None


def parse_date(text: Any, format: str) -> datetime.date | None:
    """A date as the EHR writes it; ``None`` if absent or unreadable."""
    try:
        return datetime.datetime.strptime(text, format).date() if text else None
    except (TypeError, ValueError):
        return None


def _short(error: Exception) -> str:
    return str(error)[:300]


def load() -> dict[str, Connector]:
    """Every connector installed under ``caredeck.ehr_connectors``, by name (read once per
    app, at start-up). An entry point names a :class:`Connector` subclass or instance; one
    that fails to load, or whose name is not its entry point's, stops start-up."""
    found: dict[str, Connector] = {}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in found:
            continue  # the same distribution seen twice on sys.path
        try:
            target = entry.load()
        except Exception as error:
            raise ConnectorLoadError(
                f"EHR connector {entry.name!r} failed to import: {type(error).__name__}: {error}"
            ) from error
        connector = target() if isinstance(target, type) else target
        if not isinstance(connector, Connector):
            raise ConnectorLoadError(
                f"EHR connector {entry.name!r} is not a plugins.ehr.connectors.Connector."
            )
        if connector.name != entry.name or not NAME_PATTERN.fullmatch(entry.name):
            raise ConnectorLoadError(
                f"EHR connector {entry.name!r} calls itself {connector.name!r}; the entry "
                "point's name and the connector's name must be the same (lowercase letters, "
                "digits and _)."
            )
        if not connector.endpoints or not connector.ehr_fields:
            raise ConnectorLoadError(
                f"EHR connector {entry.name!r} declares no endpoints or fields."
            )
        found[entry.name] = connector
    return dict(sorted(found.items()))


def installed() -> dict[str, Connector]:
    """The connectors this app loaded at start-up, by name."""
    return current_app.extensions["ehr"].connectors


def get(name: str) -> Connector:
    """The installed connector ``name``; raises :class:`UnknownConnector`."""
    try:
        return installed()[name]
    except KeyError:
        raise UnknownConnector(name) from None
