"""The call being served, as the log lines and spans of its task see it.

The error layer (``StatusInterceptor``) sets one :class:`RequestContext` per call
in a context variable, before the handler runs: the call's request id (the
caller's ``x-request-id`` when it sent a usable one, else a new one), its method
and model, and its trace when tracing is on. Every log line written while the
call's task runs (and on threads that copy its context) can then name the call
(:class:`~hessd_server.serving.observability.log_format.RequestFields`).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hessd.errors import REQUEST_ID_KEY

if TYPE_CHECKING:
    from .tracing import RequestTrace

MAX_REQUEST_ID_CHARACTERS = 128
"""The longest ``x-request-id`` a caller may choose; a longer one is replaced."""

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,%d}" % MAX_REQUEST_ID_CHARACTERS)
"""What a caller's ``x-request-id`` may hold: printable characters safe in a log line."""


@dataclass(slots=True)
class RequestContext:
    """One call in flight.

    Attributes:
        request_id: the id in the reply's trailing metadata and in every log line about it.
        method: the RPC method, e.g. ``"Hessian"``.
        model: the requested model's name; ``""`` for calls about no model.
        version: the model version serving it once known, else the requested one (``""``: newest).
        trace: the call's spans, when tracing is on; else ``None``.
    """

    request_id: str
    method: str
    model: str = ""
    version: str = ""
    trace: RequestTrace | None = None


CURRENT: ContextVar[RequestContext | None] = ContextVar("hessd_request", default=None)
"""The call the running task (or a thread given its context) serves; ``None`` outside calls."""


def current() -> RequestContext | None:
    """The call being served here, or ``None``."""
    return CURRENT.get()


def request_id_from(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The caller's ``x-request-id`` from ``metadata`` if it is 1 to
    :data:`MAX_REQUEST_ID_CHARACTERS` characters of letters, digits and ``._:/+=@-``;
    else a new id, 32 hex digits (uuid4)."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex


def note_model(model: str, version: str) -> None:
    """Record the model and the version serving the current call, if there is one."""
    request = CURRENT.get()
    if request is not None:
        request.model = model
        request.version = version
        if request.trace is not None:
            request.trace.note_model(model, version)
