"""Bad requests fail the same way in-process and over the wire, with the right status.

Each bad call raises the same exception type (and field) through the SDK as
through the library, travels as the status code the one mapping gives it with
ErrorInfo and BadRequest details, and leaves the server serving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import hessd
import hessd_server as hs
from hessd import errors, tensor_codec
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1 import hessian_service_pb2_grpc
from hessd.v1.tensor_pb2 import DataType, Tensor
from hessd_server.serving.grpc.status_interceptor import INTERNAL_MESSAGE
from support.wire_fixtures import ONE_OFF_FAILURE, RunningServer, rng_array



@pytest.fixture(scope="module")
def server(models_server: RunningServer) -> RunningServer:
    return models_server


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[hessd.Client]:
    with hessd.Client(server.target, timeout=60) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[hessian_service_pb2_grpc.HessianServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield hessian_service_pb2_grpc.HessianServiceStub(channel)


X = rng_array((3, 10))
MULTI_X = {"a": rng_array((2, 3)), "b": rng_array((2, 2, 2)), "ids": np.zeros((2, 2), np.int32)}

BAD_CALLS: dict[str, tuple[str, Callable[[Any, str], Any], type[errors.HessdError], str | None]] = {
    "wrong-shape": ("demo", lambda api, m: api.hessian(m, X[:, :4]), errors.ShapeError, "x[x]"),
    "missing-batch": ("demo", lambda api, m: api.gradient(m, X[0]), errors.ShapeError, "x[x]"),
    "int-dtype": (
        "demo",
        lambda api, m: api.hessian(m, X.astype(np.int64)),
        errors.DtypeError,
        "x[x]",
    ),
    "bad-wrt": ("demo", lambda api, m: api.hessian(m, X, wrt="z"), errors.UnknownInputError, "wrt"),
    "bad-output-weights": (
        "demo",
        lambda api, m: api.hessian(m, X, output_weights=np.ones((3, 2), np.float32)),
        errors.OutputWeightsError,
        "output_weights",
    ),
    "bad-precision": (
        "demo",
        lambda api, m: api.gradient(m, X, precision="float16"),
        errors.PrecisionError,
        "precision",
    ),
    "bad-vector": ("demo", lambda api, m: api.hvp(m, X, X[:2]), errors.ShapeError, "v"),
    "result-too-large": (
        "demo",
        lambda api, m: api.hessian(m, rng_array((100, 10)), full=True),
        errors.ResultTooLargeError,
        None,
    ),
    "batch-dependence": (
        "mixing",
        lambda api, m: api.hessian(m, rng_array((3, 4))),
        errors.BatchDependenceError,
        "full",
    ),
    "id-out-of-range": (
        "multi",
        lambda api, m: api.hessian(m, {**MULTI_X, "ids": np.array([[0, 1], [5, 2]], np.int32)}, wrt="b"),
        errors.InvalidArgumentError,
        "x[ids]",
    ),
}


class _Library:
    def __init__(self, server: RunningServer) -> None:
        self._server = server

    def __getattr__(self, method: str) -> Callable[..., Any]:
        function = getattr(hs, method)
        return lambda model, *args, **kwargs: function(self._server.model(model), *args, **kwargs)


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_same_exception_in_process_and_over_the_wire(
    server: RunningServer, client: hessd.Client, case: str
) -> None:
    model, call, error_type, field = BAD_CALLS[case]
    with pytest.raises(errors.HessdError) as local:
        call(_Library(server), model)
    with pytest.raises(errors.HessdError) as remote:
        call(client, model)
    assert type(local.value) is type(remote.value) is error_type
    assert local.value.field == remote.value.field == field
    assert remote.value.message == local.value.message
    assert remote.value.reason == local.value.reason
    assert remote.value.metadata == local.value.metadata


def test_batch_dependent_model_still_answers_full(
    server: RunningServer, client: hessd.Client
) -> None:
    x = rng_array((3, 4))
    remote = client.hessian("mixing", x, full=True)
    local = hs.hessian(server.model("mixing"), x, full=True)
    assert remote.shape == (3, 4, 3, 4) and np.array_equal(remote, local)


def test_unknown_model_and_version_are_not_found(client: hessd.Client, stub: Any) -> None:
    with pytest.raises(errors.ModelNotFoundError) as raised:
        client.hessian("nope", X)
    assert raised.value.field == "model_name" and "demo" in raised.value.message
    with pytest.raises(errors.ModelNotFoundError):
        client.metadata("nope")
    request = pb.GetModelMetadataRequest(model_name="demo", model_version="2")
    _assert_status(
        lambda: stub.GetModelMetadata(request),
        grpc.StatusCode.NOT_FOUND,
        ("ModelNotFoundError", "MODEL_VERSION_NOT_FOUND"),
        "model_version",
    )
    assert (
        stub.GetModelMetadata(pb.GetModelMetadataRequest(model_name="demo", model_version="1")).name
        == "demo"
    )


def _request(**fields: Any) -> pb.HessianRequest:
    defaults: dict[str, Any] = {"model_name": "demo", "x": {"x": tensor_codec.encode(X, field="x")}}
    return pb.HessianRequest(**{**defaults, **fields})


Reason = tuple[str, str]
"""(exception class named in ErrorInfo.metadata, ErrorInfo.reason)."""

RAW_BAD_REQUESTS: dict[str, tuple[pb.HessianRequest, grpc.StatusCode, Reason, str | None]] = {
    "byte-count": (
        _request(
            x={"x": Tensor(dtype=DataType.DATA_TYPE_FLOAT32, shape=[3, 10], data=b"\0" * 119)}
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("TensorEncodingError", "TENSOR_BYTE_COUNT_MISMATCH"),
        "x[x].data",
    ),
    "dtype-unspecified": (
        _request(x={"x": Tensor(shape=[3, 10], data=b"\0" * 120)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("TensorEncodingError", "TENSOR_DTYPE_UNKNOWN"),
        "x[x].dtype",
    ),
    "no-inputs": (
        _request(x={}),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("ShapeError", "SHAPE_MISMATCH"),
        "x",
    ),
    "int-input": (
        _request(x={"x": tensor_codec.encode(X.astype(np.int32), field="x")}),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("DtypeError", "UNSUPPORTED_DTYPE"),
        "x[x]",
    ),
    "input-key-kept-in-path": (
        _request(x={"inputs": tensor_codec.encode(X[:, :4], field="x")}),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("UnknownInputError", "UNKNOWN_INPUT"),
        "x[inputs]",
    ),
    "bad-wrt": (
        _request(wrt="y"),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("UnknownInputError", "UNKNOWN_INPUT"),
        "wrt",
    ),
    "bad-precision": (
        _request(precision=7),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("PrecisionError", "UNSUPPORTED_PRECISION"),
        "precision",
    ),
    "bad-weights": (
        _request(output_weights=tensor_codec.encode(np.ones(4, np.float32), field="w")),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("OutputWeightsError", "OUTPUT_WEIGHTS_MISMATCH"),
        "output_weights",
    ),
    "unknown-model": (
        _request(model_name="nope"),
        grpc.StatusCode.NOT_FOUND,
        ("ModelNotFoundError", "MODEL_NOT_FOUND"),
        "model_name",
    ),
    "version-with-a-leading-zero": (
        _request(model_version="01"),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("InvalidArgumentError", "MODEL_VERSION_INVALID"),
        "model_version",
    ),
    "too-large": (
        _request(x={"x": tensor_codec.encode(rng_array((100, 10)), field="x")}, full=True),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        ("ResultTooLargeError", "RESULT_EXCEEDS_LIMIT"),
        None,
    ),
    "batch-dependence": (
        _request(model_name="mixing", x={"x": tensor_codec.encode(rng_array((2, 4)), field="x")}),
        grpc.StatusCode.FAILED_PRECONDITION,
        ("BatchDependenceError", "BATCH_DEPENDENT_MODEL"),
        "full",
    ),
}


def _assert_status(
    call: Callable[[], Any], code: grpc.StatusCode, reason: Reason, field: str | None
) -> dict[str, str]:
    """``call()`` fails with ``code``, a hessd ErrorInfo naming the exception class and
    reason, and a ``field`` violation; returns the ErrorInfo's other metadata."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    assert raised.value.code() == code
    status = rpc_status.from_call(raised.value)
    assert status is not None and status.code == code.value[0]
    infos, fields = [], []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields.extend(violation.field for violation in bad_request.field_violations)
    assert [(i.metadata["exception"], i.reason, i.domain) for i in infos] == [(*reason, "hessd.v1")]
    assert fields == ([] if field is None else [field])
    return {key: value for key, value in infos[0].metadata.items() if key != "exception"}


@pytest.mark.parametrize("case", list(RAW_BAD_REQUESTS))
def test_raw_status_codes_and_details(stub: Any, case: str) -> None:
    request, code, reason, field = RAW_BAD_REQUESTS[case]
    _assert_status(lambda: stub.Hessian(request), code, reason, field)


def test_unexpected_failure_is_internal_with_a_generic_message(
    client: hessd.Client, stub: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="hessd_server")
    with pytest.raises(errors.InternalError) as raised:
        client.gradient("broken", rng_array((2, 3)))
    assert raised.value.message == INTERNAL_MESSAGE
    assert "deliberate" not in raised.value.message
    logged = [record for record in caplog.records if record.exc_info]
    assert any("deliberate failure" in str(record.exc_info[1]) for record in logged)
    request = pb.GradientRequest(
        model_name="broken", x={"x": tensor_codec.encode(rng_array((2, 3)), field="x")}
    )
    _assert_status(
        lambda: stub.Gradient(request), grpc.StatusCode.INTERNAL, ("InternalError", "INTERNAL"), None
    )


def test_server_keeps_serving_after_errors(server: RunningServer, client: hessd.Client) -> None:
    for model, call, _, _ in BAD_CALLS.values():
        with pytest.raises(errors.HessdError):
            call(client, model)
    assert client.health() == "SERVING"
    assert np.array_equal(client.hessian("demo", X), hs.hessian(server.model("demo"), X))


def test_client_side_encoding_errors_match_the_library(
    server: RunningServer, client: hessd.Client
) -> None:
    x = X.astype(np.bool_)
    with pytest.raises(errors.DtypeError):
        hs.hessian(server.model("demo"), x)
    with pytest.raises(errors.DtypeError):
        client.hessian("demo", x)
    with pytest.raises(errors.PrecisionError):
        hs.hessian(server.model("demo"), X, precision="double")
    with pytest.raises(errors.PrecisionError):
        client.hessian("demo", X, precision="double")


def test_a_model_no_way_can_compile_fails_internal_without_server_details(
    client: hessd.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="hessd_server")
    with pytest.raises(errors.InternalError) as raised:
        client.hessian("untraceable", rng_array((2, 3)))
    assert "cannot be differentiated" in raised.value.message
    assert "/srv/secret" not in raised.value.message
    assert any("/srv/secret/model_code.py" in record.getMessage() for record in caplog.records)
    assert client.health() == "SERVING"


def test_running_out_of_memory_is_resource_exhausted_and_changes_nothing(
    server: RunningServer, client: hessd.Client, stub: Any
) -> None:
    model = server.model("fails_once")
    before = model.metadata()
    x = rng_array((2, 3))
    ONE_OFF_FAILURE.armed = True
    with pytest.raises(errors.OutOfMemoryError, match="ran out of memory"):
        client.hessian("fails_once", x)
    ONE_OFF_FAILURE.armed = True
    request = pb.HessianRequest(model_name="fails_once", x={"x": tensor_codec.encode(x, field="x")})
    _assert_status(
        lambda: stub.Hessian(request), grpc.StatusCode.RESOURCE_EXHAUSTED, ("OutOfMemoryError", "OUT_OF_MEMORY"), None
    )
    expected = np.stack([np.diag(-np.sin(row)) for row in x.astype(np.float64)])
    np.testing.assert_allclose(client.hessian("fails_once", x), expected, rtol=1e-5, atol=1e-7)
    assert model.metadata() == before
