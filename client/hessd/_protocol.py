"""What the SDK sends and how it reads replies; shared by Client and AsyncClient.

Request builders turn the library's arguments into ``hessd.v1`` messages, reply
readers turn messages back into arrays, and :func:`needs_chunks` decides from
the input shapes alone whether a result may be too big for one message.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias

import grpc
import numpy as np
import numpy.typing as npt

from hessd import status_codes, tensor_codec
from hessd.errors import HessdError, InternalError
from hessd.results import (
    Evaluation,
    ModelMetadata,
    ModelStatus,
    TensorInfo,
    Versioned,
    VersionStatus,
)
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1.tensor_pb2 import DataType, Tensor

Inputs: TypeAlias = "npt.ArrayLike | Mapping[str, npt.ArrayLike]"
"""``x``: one array (B, *S) for a single-input model, or arrays keyed by input name."""

ChannelOptions: TypeAlias = Sequence[tuple[str, Any]]

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""gRPC's default message size limit, which the SDK sets explicitly unless ``options`` do."""

_MAX_SEND = "grpc.max_send_message_length"
_MAX_RECEIVE = "grpc.max_receive_message_length"
_ENVELOPE_BYTES = 64 * 1024
_SINGLE_INPUT_KEY = "x"

STREAM_POLL_S = 0.1
"""How often a ``stream`` waiting for its next input checks whether the call has ended."""

HESSIAN_FIELDS: tuple[str, ...] = ("hessian",)
"""Chunk names of a HessianChunked reply."""

EVALUATION_FIELDS: tuple[str, ...] = Evaluation._fields
"""Chunk names of an EvaluateChunked reply, in the order they arrive."""


def channel_options(options: ChannelOptions | None) -> list[tuple[str, Any]]:
    """``options`` with both message size limits set (to 4 MiB unless given)."""
    merged: dict[str, Any] = {
        _MAX_SEND: DEFAULT_MAX_MESSAGE_BYTES,
        _MAX_RECEIVE: DEFAULT_MAX_MESSAGE_BYTES,
    }
    merged.update(options or ())
    return list(merged.items())


def max_receive_bytes(options: ChannelOptions) -> int:
    """The receive limit in channel options made by :func:`channel_options`; -1 is unlimited."""
    return int(dict(options)[_MAX_RECEIVE])


@contextlib.contextmanager
def translated_errors() -> Iterator[None]:
    """Re-raise a failed call's ``grpc.RpcError`` as the hessd exception it stands for."""
    try:
        yield
    except grpc.RpcError as error:
        raise status_codes.from_rpc_error(error) from error


def encode_x(x: Inputs) -> dict[str, Tensor]:
    """The request's ``x`` map: one entry per input, or one entry for a lone array.

    Errors name the input as their field, as the engine's do.
    """
    if isinstance(x, Mapping):
        return {name: tensor_codec.encode(array, field=name) for name, array in x.items()}
    return {_SINGLE_INPUT_KEY: tensor_codec.encode(x, field="x")}


def hessian_request(
    model: str,
    x: Inputs,
    *,
    full: bool,
    output_weights: npt.ArrayLike | None,
    wrt: str | None,
    precision: str | None,
    model_version: str | None = None,
) -> pb.HessianRequest:
    """A ``HessianRequest`` for ``hessian(model, x, ...)``."""
    return pb.HessianRequest(
        full=full, **_common(model, x, output_weights, wrt, precision, model_version)
    )


def gradient_request(
    model: str,
    x: Inputs,
    *,
    output_weights: npt.ArrayLike | None,
    wrt: str | None,
    precision: str | None,
    model_version: str | None = None,
) -> pb.GradientRequest:
    """A ``GradientRequest`` for ``gradient(model, x, ...)``."""
    return pb.GradientRequest(**_common(model, x, output_weights, wrt, precision, model_version))


def hvp_request(
    model: str,
    x: Inputs,
    v: npt.ArrayLike,
    *,
    output_weights: npt.ArrayLike | None,
    wrt: str | None,
    precision: str | None,
    model_version: str | None = None,
) -> pb.HessianVectorProductRequest:
    """A ``HessianVectorProductRequest`` for ``hvp(model, x, v, ...)``."""
    return pb.HessianVectorProductRequest(
        v=tensor_codec.encode(v, field="v"),
        **_common(model, x, output_weights, wrt, precision, model_version),
    )


def evaluate_request(
    model: str,
    x: Inputs,
    *,
    full: bool,
    output_weights: npt.ArrayLike | None,
    wrt: str | None,
    precision: str | None,
    model_version: str | None = None,
) -> pb.EvaluateRequest:
    """An ``EvaluateRequest`` for ``evaluate(model, x, ...)``."""
    return pb.EvaluateRequest(
        full=full, **_common(model, x, output_weights, wrt, precision, model_version)
    )


def _common(
    model: str,
    x: Inputs,
    output_weights: npt.ArrayLike | None,
    wrt: str | None,
    precision: str | None,
    model_version: str | None,
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "model_name": model,
        "model_version": model_version or "",
        "x": encode_x(x),
        "wrt": wrt or "",
        "precision": tensor_codec.encode_precision(precision),
    }
    if output_weights is not None:
        fields["output_weights"] = tensor_codec.encode(output_weights, field="output_weights")
    return fields


def needs_chunks(request: pb.HessianRequest | pb.EvaluateRequest, max_receive: int) -> bool:
    """Whether the result may not fit one message of ``max_receive`` bytes (-1: unlimited).

    Judged before the call from the input shapes, ``full`` and ``precision``
    (results are float64 when it says so, else float32), with room to spare for
    the reply's other fields.
    """
    if max_receive < 0:
        return False
    return _result_bytes_bound(request) + _ENVELOPE_BYTES > max_receive


def _result_bytes_bound(request: pb.HessianRequest | pb.EvaluateRequest) -> int:
    shapes = [tuple(tensor.shape) for tensor in request.x.values()]
    differentiated = [tuple(request.x[request.wrt].shape)] if request.wrt in request.x else shapes
    batch = max((shape[0] for shape in shapes if shape), default=0)
    size = max((math.prod(shape[1:]) for shape in differentiated), default=0)
    elements = (batch * size) ** 2 if request.full else batch * size * size
    if isinstance(request, pb.EvaluateRequest):
        elements += batch + batch * size
    itemsize = 8 if request.precision == DataType.DATA_TYPE_FLOAT64 else 4
    return elements * itemsize


def hessian_from(reply: pb.HessianResponse) -> np.ndarray:
    """The Hessian array of a ``HessianResponse``."""
    return tensor_codec.decode(reply.hessian, field="hessian")


def gradient_from(reply: pb.GradientResponse) -> np.ndarray:
    """The gradient array of a ``GradientResponse``."""
    return tensor_codec.decode(reply.gradient, field="gradient")


def hvp_from(reply: pb.HessianVectorProductResponse) -> np.ndarray:
    """The Hessian-vector product array of a ``HessianVectorProductResponse``."""
    return tensor_codec.decode(reply.hvp, field="hvp")


def evaluation_from(reply: pb.EvaluateResponse) -> Evaluation:
    """The ``Evaluation`` of an ``EvaluateResponse``."""
    return Evaluation(
        *(tensor_codec.decode(getattr(reply, name), field=name) for name in EVALUATION_FIELDS)
    )


def stream_item_from(
    reply: pb.StreamHessianResponse | None, with_version: bool = False
) -> np.ndarray | Versioned | HessdError:
    """The Hessian array of one StreamHessian reply (``Versioned`` with
    ``with_version``), or the exception it carries.

    ``None`` stands for a stream that ended before this reply, a server fault.
    """
    if reply is None:
        return InternalError("the server ended StreamHessian before answering every request.")
    if reply.WhichOneof("result") == "error":
        return status_codes.from_status(reply.error)
    return versioned(
        tensor_codec.decode(reply.hessian, field="hessian"), reply.model_version, with_version
    )


def versioned(result: Any, model_version: str, with_version: bool) -> Any:
    """``Versioned(result, model_version)`` when ``with_version``, else ``result`` itself."""
    return Versioned(result, model_version) if with_version else result


def model_names_from(reply: pb.ListModelsResponse) -> list[str]:
    """The served model names of a ``ListModelsResponse``."""
    return [model.name for model in reply.models]


def metadata_from(reply: pb.GetModelMetadataResponse) -> ModelMetadata:
    """The ``ModelMetadata`` of a ``GetModelMetadataResponse``."""
    return ModelMetadata(
        name=reply.name,
        inputs=tuple(_tensor_info(info) for info in reply.inputs),
        outputs=tuple(_tensor_info(info) for info in reply.outputs),
        strategy=reply.strategy or None,
        batch_independent=(
            reply.batch_independent if reply.HasField("batch_independent") else None
        ),
        buckets=tuple(reply.buckets),
        compile_count=reply.compile_count,
        xla_fallbacks=tuple(reply.xla_fallbacks),
        version=reply.version or None,
        version_status=_version_statuses(reply.version_status),
    )


def model_status_from(reply: pb.ModelVersions) -> ModelStatus:
    """The ``ModelStatus`` of one ``ModelVersions``."""
    return ModelStatus(
        name=reply.name,
        versions=_version_statuses(reply.version_status),
        error=reply.error or None,
    )


def _version_statuses(statuses: Iterable[pb.ModelVersionStatus]) -> tuple[VersionStatus, ...]:
    return tuple(
        VersionStatus(
            version=status.version,
            state=pb.ModelState.Name(status.state).removeprefix("MODEL_STATE_"),
            error=status.error or None,
        )
        for status in statuses
    )


def _tensor_info(info: pb.TensorInfo) -> TensorInfo:
    return TensorInfo(
        name=info.name,
        shape=tuple(None if size < 0 else size for size in info.shape),
        dtype=info.dtype,
    )
