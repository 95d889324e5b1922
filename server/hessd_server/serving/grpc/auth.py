"""Bearer tokens: the token files behind ``--auth-token-file`` (callers) and
``--admin-token-file`` (model administration), checked in constant time.

A token file holds one token per line; surrounding whitespace is stripped and
blank lines are skipped. A caller sends ``authorization: Bearer <token>`` as
call metadata (the SDK's ``token=`` does that); the scheme's case does not
matter (``bearer``, ``BEARER``), as RFC 7235 has it.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from hessd.errors import UnauthenticatedError

AUTHORIZATION_KEY = "authorization"
"""The metadata key carrying the token (gRPC metadata keys are lower case)."""

BEARER_SCHEME = "bearer"
"""The authentication scheme that precedes the token in the ``authorization`` value,
compared without regard to case."""


class BearerTokens:
    """A set of accepted tokens.

    Args:
        tokens: the accepted tokens; at least one, none empty.

    Raises:
        ValueError: no token, or an empty one.
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = tuple(token.encode() for token in tokens)
        if not self._tokens or any(not token for token in self._tokens):
            raise ValueError("a token set needs at least one non-empty token")

    @classmethod
    def from_file(cls, path: str | Path) -> BearerTokens:
        """The tokens of a token file, one per line, whitespace stripped, blank lines skipped.

        Raises:
            ValueError: the file cannot be read or holds no token.
        """
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"cannot read token file {str(path)!r}: {error}") from error
        tokens = [line.strip() for line in lines if line.strip()]
        if not tokens:
            raise ValueError(f"token file {str(path)!r} holds no token")
        return cls(tokens)

    def accepts(self, token: str | None) -> bool:
        """Whether ``token`` is one of the accepted tokens.

        Every accepted token is compared, each with ``hmac.compare_digest``, so
        the time taken does not tell how much of a guess was right.
        """
        if token is None:
            return False
        offered = token.encode()
        matched = False
        for accepted in self._tokens:
            matched |= hmac.compare_digest(offered, accepted)
        return matched


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of the first ``authorization: Bearer ...`` entry of ``metadata`` (the
    scheme in any case, then a space), or None."""
    for key, value in metadata or ():
        if key.lower() != AUTHORIZATION_KEY or not isinstance(value, str):
            continue
        scheme, separator, token = value.partition(" ")
        if separator and scheme.lower() == BEARER_SCHEME:
            return token.strip()
    return None


class AcceptedTokens(NamedTuple):
    """The tokens a service accepts, and the server flag naming their file (for messages)."""

    tokens: BearerTokens
    flag: str


class ServiceTokens:
    """Which gRPC services need a bearer token, and which tokens each accepts.

    A service not listed is open to every caller; the health service is never
    listed, so that probes work without a token.

    Args:
        tokens_by_service: full service name (``"hessd.v1.HessianService"``) ->
            the tokens it accepts.
    """

    def __init__(self, tokens_by_service: Mapping[str, AcceptedTokens]) -> None:
        self._tokens_by_service = dict(tokens_by_service)

    def check(self, service: str, metadata: Iterable[tuple[str, str | bytes]] | None) -> None:
        """Return if a call to ``service`` with call ``metadata`` may proceed.

        Raises:
            UnauthenticatedError: ``service`` needs a token and ``metadata``
                carries none it accepts.
        """
        accepted = self._tokens_by_service.get(service)
        if accepted is None:
            return
        offered = bearer_token(metadata)
        if offered is None:
            raise UnauthenticatedError(
                f"{service} needs a bearer token of the server's {accepted.flag}: send "
                "'authorization: Bearer <token>' metadata (hessd.Client(..., token=...))",
                reason="TOKEN_MISSING",
            )
        if not accepted.tokens.accepts(offered):
            raise UnauthenticatedError(
                f"the bearer token sent is not one of the server's {accepted.flag}, which {service} needs",
                reason="TOKEN_INVALID",
            )
