"""The data plane: one call per computing RPC, from a request message to its result.

It knows nothing of the transport (it never imports gRPC): the gRPC face decodes
the request bytes, calls one method here, and encodes what it gets back. Each
method reads top to bottom:

1. hold the requested model version (``ModelRegistry.acquired``) until the
   engine is done with it, so that a reload never unloads it mid-call;
2. plan the reply: check ``result_encoding`` (:func:`~.reply_plan.encoding_of`);
3. decode ``x``, ``output_weights`` (and ``v``), from the message or from
   registered shared memory, in one read whose tensors in shared memory are
   bounded together by the message limit, and read ``wrt`` or ``wrt_inputs``;
4. check the precision against the version and, for one-message replies, the
   reply's size from the input shapes (:meth:`~.reply_plan.ReplyPlan.check_estimate`);
5. hand the work to the batcher once and await its result.

The :class:`Answer` carries the result, the version that computed it and the
:class:`~.reply_plan.ReplyPlan` whose ``check`` the encoder applies to the built reply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from hessd import tensor_codec
from hessd.errors import InvalidArgumentError
from hessd.results import Diagonal, Eigen, Evaluation, ModelMetadata, ModelStatus, Spectrum, Trace
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1.tensor_pb2 import Tensor

from ... import engine
from ...engine import Model
from ...engine.execution import PreparedCall, prepare_gradient, prepare_hvp, prepare_second_order
from ...engine.validation import LONE_INPUT_KEY, input_path
from ..observability.request_context import note_model
from ..repository.model_registry import ModelRegistry
from ..scheduling.batching import Batcher, Deadline
from .reply_plan import PLAIN_ENCODING, RPCS, ReplyPlan, request_encoding
from .shared_memory import SharedMemoryRegistry, read_tensors

R = TypeVar("R")

CurvatureRequest = (
    pb.HessianDiagonalRequest | pb.HessianTraceRequest | pb.HessianEigenRequest | pb.HessianSpectrumRequest
)
DerivativeRequest = (
    pb.HessianRequest | pb.GradientRequest | pb.HessianVectorProductRequest | pb.EvaluateRequest | CurvatureRequest
)
CurvatureResult = Diagonal | Trace | Eigen | Spectrum

CURVATURE_OPTIONS: tuple[str, ...] = ("method", "probes", "seed", "k", "which", "iterations", "tol")
"""Option fields of the curvature requests; an unset one takes the library's default."""

CURVATURE_FUNCTIONS: dict[str, Callable[..., CurvatureResult]] = {
    "HessianDiagonal": engine.hessian_diagonal,
    "HessianTrace": engine.hessian_trace,
    "HessianEigen": engine.hessian_eigen,
    "HessianSpectrum": engine.hessian_spectrum,
}
"""The engine's curvature summary behind each curvature RPC."""

_WEIGHTS_KEY = ("output_weights",)
_TANGENT_KEY = ("v",)
"""Keys of ``output_weights`` and ``v`` among a request's tensors, apart from ``x``'s input names."""


@dataclass(frozen=True, slots=True)
class Answer(Generic[R]):
    """One request's result.

    Attributes:
        result: the engine's result: an ``Evaluation`` (second order), a (B, *S)
            array (gradient, HVP) or a curvature summary.
        model_version: the version that computed it, e.g. ``"2"``.
        reply: how the result travels, and the check its built reply must pass.
    """

    result: R
    model_version: str
    reply: ReplyPlan


@dataclass(frozen=True, slots=True)
class _Decoded:
    """A request's decoded inputs: ``x`` by input name, the engine's options
    (``output_weights``, ``wrt``, ``precision``) and, for an HVP, ``v`` (B, *S)."""

    x: dict[str, np.ndarray]
    options: dict[str, Any]
    v: np.ndarray | None = None


Preparation = Callable[[Model, _Decoded], PreparedCall]
"""(model, the request's decoded tensors and options) -> the request checked and ready to run."""


class DataPlane:
    """Serves the models of ``models`` through the batcher, free of any transport.

    Args:
        models: the served models.
        batcher: queues, groups and runs engine work off the event loop.
        regions: the registered shared-memory regions, for inputs there.
        max_message_bytes: the most bytes a request may carry and a reply may take.
    """

    def __init__(
        self, models: ModelRegistry, batcher: Batcher, regions: SharedMemoryRegistry, *, max_message_bytes: int
    ) -> None:
        self._models = models
        self._batcher = batcher
        self._regions = regions
        self._max_message_bytes = max_message_bytes

    async def second_order(
        self, rpc: str, request: pb.HessianRequest | pb.EvaluateRequest, deadline: Deadline | None
    ) -> Answer[Evaluation]:
        """``Hessian``, ``HessianChunked``, ``StreamHessian`` (one item), ``Evaluate``
        and ``EvaluateChunked``: the blocks (B, *S, *S) or, with ``full``, the whole
        Hessian, and for the Evaluate RPCs the values and gradient too."""
        evaluation = isinstance(request, pb.EvaluateRequest)
        full = request.full

        def prepare(model: Model, decoded: _Decoded) -> PreparedCall:
            return prepare_second_order(model, decoded.x, full=full, evaluation=evaluation, **decoded.options)

        return await self._derivative(rpc, request, deadline, prepare, full=full)

    async def gradient(self, request: pb.GradientRequest, deadline: Deadline | None) -> Answer[np.ndarray]:
        """``Gradient``: the per-example gradient (B, *S)."""

        def prepare(model: Model, decoded: _Decoded) -> PreparedCall:
            return prepare_gradient(model, decoded.x, **decoded.options)

        return await self._derivative("Gradient", request, deadline, prepare)

    async def hessian_vector_product(
        self, request: pb.HessianVectorProductRequest, deadline: Deadline | None
    ) -> Answer[np.ndarray]:
        """``HessianVectorProduct``: H·v per example (B, *S)."""

        def prepare(model: Model, decoded: _Decoded) -> PreparedCall:
            return prepare_hvp(model, decoded.x, decoded.v, **decoded.options)

        return await self._derivative("HessianVectorProduct", request, deadline, prepare)

    async def curvature(
        self, rpc: str, request: CurvatureRequest, deadline: Deadline | None
    ) -> Answer[CurvatureResult]:
        """A curvature summary RPC (``HessianDiagonal``, ``HessianTrace``, ``HessianEigen``,
        ``HessianSpectrum``) with the options the request sets. Curvature calls are not
        stacked with others: each runs alone on an engine thread, admitted like any call."""
        function = CURVATURE_FUNCTIONS[rpc]
        fields = request.DESCRIPTOR.fields_by_name
        chosen = {name: getattr(request, name) for name in CURVATURE_OPTIONS if name in fields and request.HasField(name)}
        plan = ReplyPlan(RPCS[rpc], PLAIN_ENCODING, self._max_message_bytes)
        with self._models.acquired(request.model_name, request.model_version) as served:
            note_model(request.model_name, served.label)
            model = served.model
            assert model is not None
            decoded = await self._decoded(request, model)
            x, options = decoded.x, decoded.options
            served.check_precision(options["precision"])
            result = await self._batcher.call(deadline, rpc, lambda: function(model, x, **options, **chosen))
        return Answer(result, served.label, plan)

    def model_statuses(self) -> list[ModelStatus]:
        """Every model's versions and their states, sorted by model name."""
        return self._models.statuses()

    def metadata(self, name: str, version: str) -> tuple[ModelMetadata, str, ModelStatus]:
        """The metadata of the version of ``name`` that a request for ``version`` gets,
        that version's label, and the model's status."""
        with self._models.acquired(name, version) as served:
            assert served.model is not None
            metadata = served.model.metadata()
        return metadata, served.label, self._models.describe(name)

    async def _derivative(
        self,
        rpc: str,
        request: DerivativeRequest,
        deadline: Deadline | None,
        prepare: Preparation,
        *,
        full: bool = False,
    ) -> Answer[Any]:
        """The engine's result for ``request``, through the batcher, on the requested version."""
        plan = self._plan(rpc, request)
        with self._models.acquired(request.model_name, request.model_version) as served:
            note_model(request.model_name, served.label)
            model = served.model
            assert model is not None
            decoded = await self._decoded(request, model)
            x, options = decoded.x, decoded.options
            served.check_precision(options["precision"])
            plan.check_estimate(x, options["wrt"], full=full, precision=options["precision"])
            examples = max((array.shape[0] if array.ndim else 1 for array in x.values()), default=1)
            input_bytes = sum(array.nbytes for array in x.values())
            result = await self._batcher.compute(
                deadline, rpc, model, lambda: prepare(model, decoded), examples, input_bytes
            )
        return Answer(result, served.label, plan)

    def _plan(self, rpc: str, request: DerivativeRequest) -> ReplyPlan:
        """The reply plan of ``request`` on ``rpc``, its ``result_encoding`` checked."""
        kind = RPCS[rpc]
        encoding = PLAIN_ENCODING
        if isinstance(request, (pb.HessianRequest, pb.EvaluateRequest)):
            encoding = request_encoding(request, chunked=kind.chunked)
        return ReplyPlan(kind, encoding, self._max_message_bytes)

    async def _decoded(self, request: DerivativeRequest, model: Model) -> _Decoded:
        """``x`` by input name of ``model``, ``output_weights``, ``wrt``, ``precision``
        and an HVP's ``v``; the tensors in shared memory are bounded together and
        read off the event loop, in one read."""
        entries = len(request.x)
        tensors: dict[str | tuple[str], tuple[str, Tensor]] = {
            _input_key(model, name, entries): (input_path(name), tensor) for name, tensor in request.x.items()
        }
        if request.HasField("output_weights"):
            tensors[_WEIGHTS_KEY] = ("output_weights", request.output_weights)
        if isinstance(request, pb.HessianVectorProductRequest):
            tensors[_TANGENT_KEY] = ("v", request.v)
        arrays = await read_tensors(self._regions, tensors, max_bytes=self._max_message_bytes)
        weights = arrays.pop(_WEIGHTS_KEY, None)
        v = arrays.pop(_TANGENT_KEY, None)
        options = {
            "output_weights": weights,
            "wrt": _wrt(request),
            "precision": tensor_codec.decode_precision(request.precision),
        }
        return _Decoded(arrays, options, v)  # type: ignore[arg-type]


LEGACY_LONE_INPUT_KEY = "x"
"""The key under which clients written before the empty key (``LONE_INPUT_KEY``)
send a lone array; a single-input model still takes its input under it."""


def _wrt(request: DerivativeRequest) -> str | tuple[str, ...] | None:
    """The engine's ``wrt`` of a request: its ``wrt_inputs``, else its ``wrt``, else None.

    Raises:
        InvalidArgumentError: both are set.
    """
    if request.wrt_inputs:
        if request.wrt:
            raise InvalidArgumentError("set wrt (one input) or wrt_inputs (several), not both", field="wrt_inputs")
        return tuple(request.wrt_inputs)
    return request.wrt or None


def _input_key(model: Model, key: str, entries: int) -> str:
    """``key`` of the request's ``x`` map as the engine reads it: the legacy lone-array
    key ``"x"`` of a single entry for a single-input model whose input has another
    name stands for the empty key; every other key is kept (the engine refuses
    one that names no input with ``UnknownInputError``)."""
    names = model.input_names
    if entries == 1 and key == LEGACY_LONE_INPUT_KEY and len(names) == 1 and names[0] != key:
        return LONE_INPUT_KEY
    return key


__all__ = ["Answer", "CURVATURE_FUNCTIONS", "DataPlane"]
