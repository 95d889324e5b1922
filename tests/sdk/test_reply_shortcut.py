"""The reply check's shortcut against the full judgment of :func:`hessd.reply_bounds.bound_of`.

``reply_bounds.checked`` lets a reply through at once when each result's header is
exactly the one its request implies; only then may it skip the full judgment. For
requests of every kind the shortcut knows, and replies whose headers are honest or
off in one field (dtype, packing, a dimension, the rank, a missing result), the
check must accept and refuse exactly what the full judgment does, with its message.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from google.protobuf.message import Message

from hessd import _protocol, reply_bounds
from hessd.errors import InvalidReplyError
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1.tensor_pb2 import DataType, Packing

X = np.zeros((2, 3), np.float32)
TWO_INPUTS = {"a": np.zeros((2, 3), np.float32), "b": np.zeros((2, 4), np.float32)}
FLOAT_TYPES = (
    DataType.DATA_TYPE_FLOAT32,
    DataType.DATA_TYPE_FLOAT64,
    DataType.DATA_TYPE_FLOAT16,
    DataType.DATA_TYPE_BFLOAT16,
)
PACKINGS = {Packing.PACKING_NONE: Packing.PACKING_UPPER, Packing.PACKING_UPPER: Packing.PACKING_NONE}
"""Each packing and the other one."""
SECOND_ORDER = {"full": False, "output_weights": None, "wrt": None, "precision": None}


def _requests() -> dict[str, Message]:
    def hessian(x: Any = X, **options: Any) -> pb.HessianRequest:
        return _protocol.hessian_request("m", x, **{**SECOND_ORDER, **options})

    def evaluation(**options: Any) -> pb.EvaluateRequest:
        return _protocol.evaluate_request("m", X, **{**SECOND_ORDER, **options})

    per_input = {"output_weights": None, "wrt": None, "precision": None}
    return {
        "hessian": hessian(),
        "full hessian": hessian(full=True),
        "float64 hessian": hessian(precision="float64"),
        "packed hessian": hessian(packing="upper"),
        "float16 hessian": hessian(result_dtype="float16"),
        "hessian of a named input": hessian(TWO_INPUTS, wrt="b"),
        "hessian of one of two inputs, none named": hessian(TWO_INPUTS),
        "hessian of two named inputs": hessian(TWO_INPUTS, wrt=["a", "b"]),
        "hessian of a scalar input": hessian(np.float32(1)),
        "evaluation": evaluation(),
        "packed float16 full evaluation": evaluation(full=True, packing="upper", result_dtype="float16"),
        "gradient": _protocol.gradient_request("m", X, **per_input),
        "hvp": _protocol.hvp_request("m", X, X, **per_input),
    }


REQUESTS = _requests()
SHORTCUT = ("hessian", "full hessian", "float64 hessian", "packed hessian", "float16 hessian",
            "hessian of a named input", "evaluation", "packed float16 full evaluation", "gradient", "hvp")


def _honest_reply(request: Message) -> Message:
    """A reply whose every result has the first header the full judgment admits."""
    bound = reply_bounds.bound_of(request)
    assert bound is not None
    reply = {
        pb.HessianRequest: pb.HessianResponse,
        pb.EvaluateRequest: pb.EvaluateResponse,
        pb.GradientRequest: pb.GradientResponse,
        pb.HessianVectorProductRequest: pb.HessianVectorProductResponse,
    }[type(request)]()
    for name, expected in bound.results.items():
        tensor = getattr(reply, name)
        tensor.dtype, tensor.packing = expected.data_type, expected.packing
        rule = expected.shapes[0] if expected.shapes else (range(2, 3),)
        tensor.shape[:] = [sizes.start for sizes in rule]
    return reply


def _variants(reply: Message) -> Iterator[Message]:
    """``reply``, and copies of it with one header field of one result changed (a dtype
    set to each float type, its own included)."""
    yield reply
    for field in reply.DESCRIPTOR.fields:
        if field.message_type is None or field.message_type.name != "Tensor":
            continue
        changes = [lambda t, dtype=dtype: setattr(t, "dtype", dtype) for dtype in FLOAT_TYPES]
        changes += [
            lambda t: setattr(t, "packing", PACKINGS[t.packing]),
            lambda t: t.shape.append(1),
            lambda t: t.shape.pop() if len(t.shape) else t.shape.append(2),
        ]
        rank = len(getattr(reply, field.name).shape)
        changes += [lambda t, i=i: t.shape.__setitem__(i, t.shape[i] + 1) for i in range(rank)]
        changes.append(lambda t, name=field.name: None)
        for index, change in enumerate(changes):
            changed = type(reply)()
            changed.CopyFrom(reply)
            if index == len(changes) - 1:
                changed.ClearField(field.name)
            else:
                change(getattr(changed, field.name))
            yield changed


def _judged(check: Any) -> str:
    try:
        check()
    except InvalidReplyError as error:
        return f"refused: {error.message}"
    return "accepted"


@pytest.mark.parametrize("name", REQUESTS)
def test_the_check_accepts_and_refuses_what_the_full_judgment_does(name: str) -> None:
    request = REQUESTS[name]
    bound = reply_bounds.bound_of(request)
    assert bound is not None
    verdicts = []
    for reply in _variants(_honest_reply(request)):
        verdict = _judged(lambda: reply_bounds.checked(request, reply))
        assert verdict == _judged(lambda: bound.check_tensors(reply)), reply
        verdicts.append(verdict)
    assert any(verdict.startswith("refused") for verdict in verdicts)
    assert ("accepted" in verdicts) == all(expected.shapes for expected in bound.results.values())


@pytest.mark.parametrize("name", SHORTCUT)
def test_an_honest_reply_of_a_common_request_takes_the_shortcut(name: str) -> None:
    request = REQUESTS[name]
    headers = reply_bounds._exact_headers(request)
    assert headers is not None
    reply = _honest_reply(request)
    assert {field: reply_bounds._header(getattr(reply, field)) for field in headers} == headers


@pytest.mark.parametrize("name", sorted(set(REQUESTS) - set(SHORTCUT)))
def test_a_request_whose_results_may_follow_several_inputs_or_none_is_judged_in_full(name: str) -> None:
    assert reply_bounds._exact_headers(REQUESTS[name]) is None
