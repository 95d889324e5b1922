"""Token files and the bearer check that ``--auth-token-file`` and
``--admin-token-file`` rest on."""

from __future__ import annotations

from pathlib import Path

import pytest

from hessd.errors import UnauthenticatedError
from hessd_server.serving.grpc.auth import AcceptedTokens, BearerTokens, ServiceTokens, bearer_token


def test_a_token_file_is_read_line_by_line_with_whitespace_stripped(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("  first-token \n\n\tsecond\t\n")
    tokens = BearerTokens.from_file(path)
    assert tokens.accepts("first-token")
    assert tokens.accepts("second")
    assert not tokens.accepts(" first-token ")
    assert not tokens.accepts("first")
    assert not tokens.accepts("")
    assert not tokens.accepts(None)


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_a_token_file_without_tokens_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(content)
    with pytest.raises(ValueError, match="holds no token"):
        BearerTokens.from_file(path)


def test_a_missing_token_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read token file"):
        BearerTokens.from_file(tmp_path / "absent")


def test_the_token_is_read_from_bearer_metadata() -> None:
    assert bearer_token([("x-other", "1"), ("authorization", "Bearer s3cret")]) == "s3cret"
    assert bearer_token([("authorization", "Basic s3cret")]) is None
    assert bearer_token([("authorization-bin", b"Bearer s3cret")]) is None
    assert bearer_token(None) is None


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_read_in_any_case(scheme: str) -> None:
    assert bearer_token([("authorization", f"{scheme} s3cret")]) == "s3cret"


@pytest.mark.parametrize("value", ["Bearers3cret", "Bearer", "Bear s3cret", "Bearerx s3cret", " Bearer s3cret"])
def test_values_of_another_scheme_carry_no_token(value: str) -> None:
    assert bearer_token([("authorization", value)]) is None


def test_each_listed_service_takes_its_own_tokens_and_names_their_flag() -> None:
    services = ServiceTokens(
        {
            "hessd.v1.HessianService": AcceptedTokens(BearerTokens(["caller"]), "--auth-token-file"),
            "hessd.v1.ModelAdmin": AcceptedTokens(BearerTokens(["admin"]), "--admin-token-file"),
        }
    )
    services.check("hessd.v1.HessianService", [("authorization", "Bearer caller")])
    services.check("hessd.v1.ModelAdmin", [("authorization", "Bearer admin")])
    services.check("grpc.health.v1.Health", None)
    with pytest.raises(UnauthenticatedError, match="--admin-token-file") as wrong:
        services.check("hessd.v1.ModelAdmin", [("authorization", "Bearer caller")])
    assert wrong.value.reason == "TOKEN_INVALID"
    with pytest.raises(UnauthenticatedError, match="--auth-token-file") as missing:
        services.check("hessd.v1.HessianService", [("authorization", "Basic caller")])
    assert missing.value.reason == "TOKEN_MISSING"
