"""What the SDK sends and how it reads replies; shared by Client and AsyncClient.

Request builders turn the library's arguments into ``hessd.v1`` messages, reply
readers turn messages back into arrays, and :func:`needs_chunks` decides from
the input shapes alone whether a result may be too big for one message.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeAlias, TypeVar

import grpc
import numpy as np
import numpy.typing as npt

from hessd import packing as packing_layout
from hessd import curvature_options, reply_bounds, status_codes, tensor_codec
from hessd.blocks import join_vector
from hessd.errors import (
    DtypeError,
    HessdError,
    InternalError,
    InvalidArgumentError,
    InvalidReplyError,
    ShapeError,
    clipped,
)
from hessd.results import (
    Diagonal,
    Eigen,
    Evaluation,
    ModelMetadata,
    ModelStatus,
    Spectrum,
    StrategyTiming,
    TensorInfo,
    Trace,
    Versioned,
    VersionStatus,
)
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1.tensor_pb2 import (
    DATA_TYPE_BFLOAT16,
    DATA_TYPE_FLOAT16,
    DATA_TYPE_FLOAT64,
    PACKING_NONE,
    PACKING_UPPER,
    ResultEncoding,
    Tensor,
)

Inputs: TypeAlias = "npt.ArrayLike | Mapping[str, npt.ArrayLike]"
"""``x``: one array (B, *S) for a single-input model, or arrays keyed by input name."""

ChannelOptions: TypeAlias = Sequence[tuple[str, Any]]

PemSource: TypeAlias = "str | os.PathLike[str] | bytes"
"""A PEM file's path, or its contents as bytes."""

CallMetadata: TypeAlias = "tuple[tuple[str, str], ...] | None"

Wrt: TypeAlias = "str | Sequence[str] | None"
"""``wrt``: the input to differentiate, or a list of several to differentiate
together (see :mod:`hessd.blocks`); ``None`` for a single-input model."""

ModelVersion: TypeAlias = "int | str | None"
"""``model_version``: a version number as an int (``2``) or a string (``"2"``);
``None`` (or ``""``) for the newest AVAILABLE version."""

CurvatureResult = TypeVar("CurvatureResult", Diagonal, Trace, Eigen, Spectrum)

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""gRPC's default message size limit, which the SDK sets explicitly unless ``options`` do."""

_MAX_RECEIVE = "grpc.max_receive_message_length"
_ENVELOPE_BYTES = 64 * 1024
_LONE_INPUT_KEY = ""
"""The ``x`` key of a lone array: a single-input model's input, whatever its name."""

STREAM_POLL_S = 0.1
"""How often a ``stream`` waiting for its next input checks whether the call has ended."""

HESSIAN_FIELDS: tuple[str, ...] = ("hessian",)
"""Chunk names of a HessianChunked reply."""

EVALUATION_FIELDS: tuple[str, ...] = Evaluation._fields
"""Chunk names of an EvaluateChunked reply, in the order they arrive."""

CHUNKED_METHODS: dict[str, type[pb.HessianRequest | pb.EvaluateRequest]] = {
    "HessianChunked": pb.HessianRequest,
    "EvaluateChunked": pb.EvaluateRequest,
}
"""The chunked RPCs, whose replies the SDK reads as raw bytes (see ``Reassembler.add_serialized``)."""

SHARED_MEMORY_ALIGNMENT = 64
"""Where the server places each result after the first in shared memory: multiples of this."""


def method_path(method: str) -> str:
    """The gRPC path of a HessianService method, e.g. ``/hessd.v1.HessianService/Hessian``."""
    return f"/{pb.DESCRIPTOR.services_by_name['HessianService'].full_name}/{method}"


def max_receive_bytes(options: ChannelOptions) -> int:
    """The receive limit in options made by :func:`hessd._channels.channel_options`; -1 is unlimited."""
    return int(dict(options)[_MAX_RECEIVE])


def call_metadata(token: str | None) -> CallMetadata:
    """The metadata every call carries: ``authorization: Bearer <token>``, or none."""
    if token is None:
        return None
    if not token or token != token.strip() or "\n" in token:
        raise ValueError("token must be a non-empty string without surrounding whitespace")
    return (("authorization", f"Bearer {token}"),)


def tls_credentials(
    ca: PemSource | None, cert: PemSource | None, key: PemSource | None
) -> grpc.ChannelCredentials:
    """TLS channel credentials: trust ``ca`` (``None``: the system's roots) and, for mTLS,
    present the client certificate chain ``cert`` with its private ``key``."""
    if (cert is None) != (key is None):
        raise ValueError("cert and key go together: give both for mTLS, or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=_pem(ca), private_key=_pem(key), certificate_chain=_pem(cert)
    )


def _pem(source: PemSource | None) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    with open(source, "rb") as file:
        return file.read()


class _ErrorTranslation:
    """A block whose ``grpc.RpcError`` leaves it as the hessd exception it stands for.

    A class rather than a generator-based context manager: every call passes through
    one, and this costs a fraction of a generator's setup.
    """

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if isinstance(error, grpc.RpcError):
            raise status_codes.from_rpc_error(error) from error


_ERROR_TRANSLATION = _ErrorTranslation()


def translated_errors() -> _ErrorTranslation:
    """Re-raise a failed call's ``grpc.RpcError`` as the hessd exception it stands for."""
    return _ERROR_TRANSLATION


def encode_x(x: Inputs) -> dict[str, Tensor]:
    """The request's ``x`` map: one entry per input, or one entry for a lone array.

    Errors name the input as their field, as the engine's do.
    """
    if isinstance(x, Mapping):
        return {name: tensor_codec.encode(array, field=name) for name, array in x.items()}
    return {_LONE_INPUT_KEY: tensor_codec.encode(x, field="x")}


def hessian_request(
    model: str,
    x: Inputs,
    *,
    full: bool,
    output_weights: npt.ArrayLike | None,
    wrt: Wrt,
    precision: str | None,
    model_version: ModelVersion = None,
    packing: str = "none",
    result_dtype: str | None = None,
) -> pb.HessianRequest:
    """A ``HessianRequest`` for ``hessian(model, x, ...)``."""
    return pb.HessianRequest(
        full=full,
        result_encoding=result_encoding(packing, result_dtype),
        **_common(model, x, output_weights, wrt, precision, model_version),
    )


def gradient_request(
    model: str,
    x: Inputs,
    *,
    output_weights: npt.ArrayLike | None,
    wrt: Wrt,
    precision: str | None,
    model_version: ModelVersion = None,
) -> pb.GradientRequest:
    """A ``GradientRequest`` for ``gradient(model, x, ...)``."""
    return pb.GradientRequest(**_common(model, x, output_weights, wrt, precision, model_version))


def hvp_request(
    model: str,
    x: Inputs,
    v: npt.ArrayLike,
    *,
    output_weights: npt.ArrayLike | None,
    wrt: Wrt,
    precision: str | None,
    model_version: ModelVersion = None,
) -> pb.HessianVectorProductRequest:
    """A ``HessianVectorProductRequest`` for ``hvp(model, x, v, ...)``; ``v`` may be
    blocks by input name when ``wrt`` names several inputs of ``x``."""
    if isinstance(v, Mapping):
        names = wrt_names(wrt)
        if len(names) < 2 or not isinstance(x, Mapping) or not set(names) <= set(x):
            raise ShapeError(
                "v may be a dict of blocks only when wrt names several inputs of x; pass an array",
                field="v",
            )
        v = join_vector(v, {name: np.shape(x[name])[1:] for name in names})
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
    wrt: Wrt,
    precision: str | None,
    model_version: ModelVersion = None,
    packing: str = "none",
    result_dtype: str | None = None,
) -> pb.EvaluateRequest:
    """An ``EvaluateRequest`` for ``evaluate(model, x, ...)``."""
    return pb.EvaluateRequest(
        full=full,
        result_encoding=result_encoding(packing, result_dtype),
        **_common(model, x, output_weights, wrt, precision, model_version),
    )


def result_encoding(packing: str, result_dtype: str | None) -> ResultEncoding:
    """The ``ResultEncoding`` for the SDK's ``packing`` and ``result_dtype`` arguments.

    Raises:
        InvalidArgumentError: ``packing`` is not "none" or "upper".
        DtypeError: ``result_dtype`` is not None, "float16" or "bfloat16", or is
            "bfloat16" without the ``ml_dtypes`` package to read it.
    """
    if packing not in packing_layout.PACKINGS:
        raise InvalidArgumentError(
            f"packing is {packing!r}; use 'none' or 'upper' (half the bytes of a Hessian).",
            field="packing",
            reason="RESULT_ENCODING_INVALID",
        )
    encoding = ResultEncoding(
        packing=PACKING_UPPER if packing == "upper" else PACKING_NONE
    )
    if result_dtype is not None:
        if result_dtype not in packing_layout.RESULT_DTYPES:
            raise DtypeError(
                f"result_dtype is {result_dtype!r}; use None (the precision), 'float16' or "
                "'bfloat16'.",
                field="result_dtype",
            )
        encoding.dtype = tensor_codec.encode_precision(result_dtype)
        tensor_codec.numpy_dtype(encoding.dtype, field="result_dtype")
    return encoding


def diagonal_request(
    model: str,
    x: Inputs,
    *,
    method: str,
    probes: int,
    seed: int | None,
    output_weights: npt.ArrayLike | None,
    wrt: Wrt,
    precision: str | None,
    model_version: ModelVersion,
) -> pb.HessianDiagonalRequest:
    """A ``HessianDiagonalRequest`` for ``hessian_diagonal(model, x, ...)``; options checked first."""
    method, probes, seed = curvature_options.check_diagonal_options(method, probes, seed)
    common = _common(model, x, output_weights, wrt, precision, model_version)
    return pb.HessianDiagonalRequest(**common, **_set(method=method, probes=probes, seed=seed))


def trace_request(
    model: str,
    x: Inputs,
    *,
    method: str,
    probes: int,
    seed: int | None,
    output_weights: npt.ArrayLike | None,
    wrt: Wrt,
    precision: str | None,
    model_version: ModelVersion,
) -> pb.HessianTraceRequest:
    """A ``HessianTraceRequest`` for ``hessian_trace(model, x, ...)``; options checked first."""
    method, probes, seed = curvature_options.check_trace_options(method, probes, seed)
    common = _common(model, x, output_weights, wrt, precision, model_version)
    return pb.HessianTraceRequest(**common, **_set(method=method, probes=probes, seed=seed))


def eigen_request(
    model: str,
    x: Inputs,
    *,
    k: int,
    which: str,
    method: str,
    iterations: int | None,
    tol: float,
    seed: int | None,
    output_weights: npt.ArrayLike | None,
    wrt: Wrt,
    precision: str | None,
    model_version: ModelVersion,
) -> pb.HessianEigenRequest:
    """A ``HessianEigenRequest`` for ``hessian_eigen(model, x, ...)``; options checked first."""
    k, which, method, iterations, tol, seed = curvature_options.check_eigen_options(
        k, which, method, iterations, tol, seed
    )
    options = _set(k=k, which=which, method=method, iterations=iterations, tol=tol, seed=seed)
    common = _common(model, x, output_weights, wrt, precision, model_version)
    return pb.HessianEigenRequest(**common, **options)


def spectrum_request(
    model: str,
    x: Inputs,
    *,
    probes: int,
    iterations: int,
    seed: int | None,
    output_weights: npt.ArrayLike | None,
    wrt: Wrt,
    precision: str | None,
    model_version: ModelVersion,
) -> pb.HessianSpectrumRequest:
    """A ``HessianSpectrumRequest`` for ``hessian_spectrum(model, x, ...)``; options checked first."""
    probes, iterations, seed = curvature_options.check_spectrum_options(probes, iterations, seed)
    common = _common(model, x, output_weights, wrt, precision, model_version)
    return pb.HessianSpectrumRequest(
        **common, **_set(probes=probes, iterations=iterations, seed=seed)
    )


def model_version_field(model_version: ModelVersion) -> str:
    """The request's ``model_version`` string: ``""`` for ``None``, the decimal digits
    of an int, a string as it is (the server says which versions it serves).

    Raises:
        InvalidArgumentError: (field ``model_version``) a negative int, a bool, or
            anything that is neither an int nor a string.
    """
    if model_version is None:
        return ""
    if isinstance(model_version, str):
        return model_version
    if isinstance(model_version, (int, np.integer)) and not isinstance(model_version, bool):
        if model_version >= 0:
            return str(int(model_version))
    raise InvalidArgumentError(
        f"model_version must be a version number such as 2 or \"2\" (or None for the newest), "
        f"got {clipped(repr(model_version))} of type {type(model_version).__name__}",
        field="model_version",
    )


def _set(**options: Any) -> dict[str, Any]:
    """The options that are not ``None``; an unset field means the server's default."""
    return {name: value for name, value in options.items() if value is not None}


def _common(
    model: str,
    x: Inputs,
    output_weights: npt.ArrayLike | None,
    wrt: Wrt,
    precision: str | None,
    model_version: ModelVersion,
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "model_name": model,
        "model_version": model_version_field(model_version),
        "x": encode_x(x),
        **wrt_fields(wrt),
        "precision": tensor_codec.encode_precision(precision),
    }
    if output_weights is not None:
        fields["output_weights"] = tensor_codec.encode(output_weights, field="output_weights")
    return fields


def wrt_names(wrt: Wrt) -> tuple[str, ...]:
    """``wrt`` as a tuple of names: empty for ``None`` or ``""``.

    Raises:
        InvalidArgumentError: ``wrt`` holds something that is not a string.
    """
    names = () if wrt is None or wrt == "" else (wrt,) if isinstance(wrt, str) else tuple(wrt)
    for name in names:
        if not isinstance(name, str):
            raise InvalidArgumentError(
                f"wrt must hold input names (strings), got {clipped(repr(name))}", field="wrt"
            )
    return names


def wrt_fields(wrt: Wrt) -> dict[str, Any]:
    """The request's ``wrt`` (one name) or ``wrt_inputs`` (several): one name goes
    in ``wrt``, so that servers older than ``wrt_inputs`` understand it."""
    names = wrt_names(wrt)
    if len(names) > 1:
        return {"wrt_inputs": names}
    return {"wrt": names[0] if names else ""}


def needs_chunks(request: pb.HessianRequest | pb.EvaluateRequest, max_receive: int) -> bool:
    """Whether the result may not fit one message of ``max_receive`` bytes (-1: unlimited).

    Judged before the call from the input shapes, ``full``, ``precision`` and
    ``result_encoding``, with room to spare for the reply's other fields.
    """
    if max_receive < 0:
        return False
    return result_bytes_bound(request) + _ENVELOPE_BYTES > max_receive


def result_bytes_bound(request: pb.HessianRequest | pb.EvaluateRequest) -> int:
    """The result bytes a request brings back, as sent (packed, narrowed), at most."""
    return sum(_result_sizes(request))


def shared_memory_bytes(request: pb.HessianRequest | pb.EvaluateRequest) -> int:
    """Bytes of shared memory the results of ``request`` take, each result after the
    first at the next multiple of :data:`SHARED_MEMORY_ALIGNMENT`."""
    sizes = _result_sizes(request)
    alignment = SHARED_MEMORY_ALIGNMENT
    return sum(-(-size // alignment) * alignment for size in sizes[:-1]) + sizes[-1]


def _result_sizes(request: pb.HessianRequest | pb.EvaluateRequest) -> list[int]:
    """Bytes of each result of ``request`` as sent (packed, narrowed), in reply order.

    Exact for a single-input model or named ``wrt`` inputs; else judged from the largest input.
    """
    shapes = {name: tuple(tensor.shape) for name, tensor in request.x.items()}
    named = list(request.wrt_inputs) or [request.wrt]
    batch = max((shape[0] for shape in shapes.values() if shape), default=0)
    if all(name in shapes for name in named):
        size = sum(math.prod(shapes[name][1:]) for name in named)
    else:
        size = max((math.prod(shape[1:]) for shape in shapes.values()), default=0)
    count, n = (1, batch * size) if request.full else (batch, size)
    packed = request.result_encoding.packing == PACKING_UPPER
    elements = [count * (n * (n + 1) // 2 if packed else n * n)]
    if isinstance(request, pb.EvaluateRequest):
        elements = [batch, batch * size, *elements]
    narrowed = request.result_encoding.dtype in (DATA_TYPE_FLOAT16, DATA_TYPE_BFLOAT16)
    itemsize = 2 if narrowed else 8 if request.precision == DATA_TYPE_FLOAT64 else 4
    return [count * itemsize for count in elements]


def precision_of(request: pb.HessianRequest | pb.EvaluateRequest) -> str | None:
    """The library's ``precision`` argument a request was built from."""
    return tensor_codec.decode_precision(request.precision)


def widened_all(arrays: Sequence[np.ndarray], precision: str | None) -> list[np.ndarray]:
    """``arrays`` in the dtype of ``precision``, undoing a narrower ``result_dtype``."""
    return [packing_layout.widened(array, precision) for array in arrays]


def hessian_from(reply: pb.HessianResponse, precision: str | None) -> np.ndarray:
    """The Hessian array of a ``HessianResponse``, in ``precision`` (float32 when None)."""
    return packing_layout.widened(tensor_codec.decode(reply.hessian, field="hessian"), precision)


def gradient_from(reply: pb.GradientResponse) -> np.ndarray:
    """The gradient array of a ``GradientResponse``."""
    return tensor_codec.decode(reply.gradient, field="gradient")


def hvp_from(reply: pb.HessianVectorProductResponse) -> np.ndarray:
    """The Hessian-vector product array of a ``HessianVectorProductResponse``."""
    return tensor_codec.decode(reply.hvp, field="hvp")


def evaluation_from(reply: pb.EvaluateResponse, precision: str | None) -> Evaluation:
    """The ``Evaluation`` of an ``EvaluateResponse``, in ``precision`` (float32 when None)."""
    return Evaluation(
        *(
            packing_layout.widened(tensor_codec.decode(getattr(reply, name), field=name), precision)
            for name in EVALUATION_FIELDS
        )
    )


def curvature_from(
    reply: Any, result_type: type[CurvatureResult], with_version: bool = False
) -> CurvatureResult | Versioned:
    """The ``Diagonal``, ``Trace``, ``Eigen`` or ``Spectrum`` of a curvature reply,
    read from the reply fields named like the result's fields; ``Versioned`` with
    the answering version when ``with_version``."""
    result = result_type(
        *(tensor_codec.decode(getattr(reply, name), field=name) for name in result_type._fields)
    )
    return versioned(result, reply.model_version, with_version)


def stream_item_from(
    reply: pb.StreamHessianResponse | None,
    bound: reply_bounds.ReplyBound | None,
    precision: str | None,
    with_version: bool = False,
    request_id: str | None = None,
) -> np.ndarray | Versioned | HessdError:
    """The Hessian array of one StreamHessian reply, in ``precision`` (``Versioned``
    with ``with_version``), or the exception the reply carries.

    ``reply`` ``None`` stands for a stream that ended before this reply, a server
    fault. ``bound`` is what the reply may hold (from its request), ``None`` when
    no request was waiting for a reply. ``request_id`` is the stream's (from its
    initial metadata), given to the exception an item's reply carries.

    Raises:
        InvalidReplyError: a Hessian that the request cannot get back, or a Hessian
            when no request was waiting.
    """
    if reply is None:
        return InternalError("the server ended StreamHessian before answering every request.")
    if reply.WhichOneof("result") == "error":
        error = status_codes.from_status(reply.error)
        error.request_id = request_id
        return error
    if bound is None:
        raise InvalidReplyError("the server sent a StreamHessian result when no request was waiting.")
    bound.check_tensors(reply)
    hessian = tensor_codec.decode(reply.hessian, field="hessian")
    return versioned(packing_layout.widened(hessian, precision), reply.model_version, with_version)


def check_stream_ended(reply: pb.StreamHessianResponse | None) -> None:
    """Check what a StreamHessian call read after the reply to its last request:
    ``None`` for a call that ended OK (a call that failed raised its error on the read).

    The read matters: the request iterator may finish because the call ended (gRPC
    drops it), and only the read tells that ending from the stream's own end.

    Raises:
        InvalidReplyError: the server sent a reply that no request was waiting for.
    """
    if reply is not None:
        raise InvalidReplyError("the server sent a StreamHessian reply when no request was waiting.")


def stream_request(
    request_of: Callable[[Inputs], pb.HessianRequest], x: Inputs
) -> tuple[reply_bounds.ReplyBound | HessdError, pb.HessianRequest | None]:
    """What a stream sends for item ``x``: ``(bound of its reply, request_of(x))``, or
    ``(its error, None)`` when ``request_of`` refuses it (the item is then not sent)."""
    try:
        request = request_of(x)
    except HessdError as error:
        return error, None
    return reply_bounds.bound_of(request), request


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
        strategy_timings=tuple(
            StrategyTiming(
                batch=t.batch,
                precision=t.precision,
                strategy=t.strategy,
                outcome=t.outcome,
                seconds=t.seconds if t.HasField("seconds") else None,
                detail=t.detail,
                source=t.source,
            )
            for t in reply.strategy_timings
        ),
        version=reply.version or None,
        version_status=_version_statuses(reply.version_status),
    )


def model_status_from(reply: pb.ModelVersions) -> ModelStatus:
    """The ``ModelStatus`` of one ``ModelVersions``."""
    return ModelStatus(
        name=reply.name,
        versions=_version_statuses(reply.version_status),
        error=reply.error or None,
        layout_errors=tuple(reply.layout_errors),
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
