"""What a reply may hold, judged from the request that asked for it.

The SDK does not trust the server: before it allocates anything for a reply,
every result tensor the reply declares must have a name, dtype, packing and
shape that the request can get back. The request fixes them: B and S (the
per-example shape) of the differentiated input (of each input when ``wrt``
does not name one of ``x``'s keys; S = (N,), the sum of their sizes, for several
``wrt_inputs``), ``full``, ``precision``, the requested
``result_encoding``, and the curvature options ``k``, ``probes`` and
``iterations``. Every dimension is exact but the Krylov steps of a spectrum,
at most ``min(iterations, D)``, so a declared size can never exceed what the
request implies. A reply that declares anything else raises
:class:`~hessd.errors.InvalidReplyError`; the byte counts are then checked
against the admitted shapes by the codec, the chunk reassembler and the
shared-memory slot.

>>> import numpy as np
>>> from hessd import _protocol
>>> request = _protocol.hessian_request(
...     "demo", np.zeros((2, 3), np.float32), full=False, output_weights=None, wrt=None, precision=None
... )
>>> bound = bound_of(request)
>>> bound.check("hessian", DataType.DATA_TYPE_FLOAT32, (2, 3, 3), Packing.PACKING_NONE)
>>> bound.check("hessian", DataType.DATA_TYPE_FLOAT32, (2, 3, 3 << 40), Packing.PACKING_NONE)
... # doctest: +ELLIPSIS
Traceback (most recent call last):
hessd.errors.InvalidReplyError: ... declares hessian as float32 (2, 3, 3298534883328), ...
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

from google.protobuf.message import Message

from hessd import curvature_options, tensor_codec
from hessd.errors import InvalidReplyError, TensorEncodingError, clipped
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1.tensor_pb2 import DATA_TYPE_FLOAT32, PACKING_NONE, DataType, Packing

Reply = TypeVar("Reply", bound=Message)

Dimensions: TypeAlias = tuple[range, ...]
"""A shape rule: the sizes each dimension may take."""

Results: TypeAlias = Callable[[Any], dict[str, "ExpectedResult"]]
"""A request of one type -> each result its reply carries, by name."""

ShapeRule: TypeAlias = Callable[[int, tuple[int, ...]], Dimensions]
"""(B, S) of the differentiated input -> the shape rule of one result."""

_NARROW_TYPES = (DataType.DATA_TYPE_FLOAT16, DataType.DATA_TYPE_BFLOAT16)


@dataclass(frozen=True)
class ExpectedResult:
    """One result tensor a request can get back.

    Attributes:
        shapes: the shape rules it may follow, one per input it may be taken
            with respect to; empty when no input has a batch dimension.
        data_type: its ``DataType``.
        packing: its ``Packing``.
    """

    shapes: tuple[Dimensions, ...]
    data_type: int
    packing: int

    def admits(self, data_type: int, shape: Sequence[int], packing: int) -> bool:
        """Whether a tensor of this ``DataType``, shape and ``Packing`` is this result."""
        if (data_type, packing) != (self.data_type, self.packing):
            return False
        return any(
            len(shape) == len(rule) and all(size in sizes for size, sizes in zip(shape, rule))
            for rule in self.shapes
        )

    def describe(self) -> str:
        """The dtype, shape(s) and packing admitted, for messages."""
        shapes = " or ".join(_describe_rule(rule) for rule in self.shapes) or "no shape"
        return f"{_dtype_name(self.data_type)} {shapes}, {Packing.Name(self.packing)}"


@dataclass(frozen=True)
class ReplyBound:
    """The results a reply to one request may carry.

    Attributes:
        method: the RPC the request is for, named in messages (``"Hessian"``...).
        results: each result the reply carries, by its reply field (or chunk) name.
    """

    method: str
    results: Mapping[str, ExpectedResult]

    def check(self, name: str, data_type: int, shape: Sequence[int], packing: int) -> None:
        """Check one result tensor's header before anything is allocated for it.

        Raises:
            InvalidReplyError: ``name`` is no result of the request, or its dtype,
                shape or packing is not one the request can get back.
        """
        expected = self.results.get(name)
        if expected is None:
            raise InvalidReplyError(
                f"the server's {self.method} reply holds a result named {clipped(name)}; this "
                f"request gets back only {', '.join(self.results)}.",
                field=None,
                metadata={"method": self.method},
            )
        if expected.admits(data_type, shape, packing):
            return
        declared = f"{_dtype_name(data_type)} {_describe_shape(shape)}, {_packing_name(packing)}"
        raise InvalidReplyError(
            f"the server's {self.method} reply declares {name} as {declared}, but this request "
            f"can only get back {expected.describe()}; the server (or something between it and "
            "this client) is faulty.",
            field=name,
            metadata={"method": self.method},
        )

    def check_tensors(self, reply: Message) -> None:
        """Check the headers of every result of a one-message ``reply`` (whose Tensor
        fields are named as the results), a missing one included.

        Raises:
            InvalidReplyError: as for :meth:`check`.
        """
        for name in self.results:
            tensor = getattr(reply, name)
            self.check(name, tensor.dtype, tensor.shape, tensor.packing)


def bound_of(request: Message) -> ReplyBound | None:
    """What a reply to ``request`` may hold; ``None`` for a request whose reply carries
    no result tensors (``ListModels``, health checks...)."""
    rule = _RULES.get(type(request))
    if rule is None:
        return None
    method, results = rule
    return ReplyBound(method, results(request))


def checked(request: Message, reply: Reply) -> Reply:
    """``reply`` itself, once its result headers are what ``request`` can get back.

    A reply whose every result has exactly the header :func:`_exact_headers` expects
    passes at once; any other is judged by :func:`bound_of`, which accepts or
    refuses it as it would have without that shortcut.

    Raises:
        InvalidReplyError: as for :meth:`ReplyBound.check`.
    """
    headers = _exact_headers(request)
    if headers is not None and all(_header(getattr(reply, name)) == header for name, header in headers.items()):
        return reply
    bound = bound_of(request)
    if bound is not None:
        bound.check_tensors(reply)
    return reply


def _header(tensor: Any) -> tuple[int, int, tuple[int, ...]]:
    """A result tensor's (``DataType``, ``Packing``, shape)."""
    return tensor.dtype, tensor.packing, tuple(tensor.shape)


def _exact_headers(request: Any) -> dict[str, tuple[int, int, tuple[int, ...]]] | None:
    """Each result of a one-message reply to a Hessian, Evaluate, Gradient or
    HessianVectorProduct ``request`` whose results follow one input (one ``wrt``, or
    the only input) of rank >= 1: its only admitted (``DataType``, ``Packing``, shape),
    by reply field; ``None`` for any other request. What :func:`bound_of` admits of
    such a request, and nothing else."""
    kind = _SHORTCUT_KINDS.get(type(request))
    if kind is None or len(request.wrt_inputs) > 1:
        return None
    x = request.x
    wrt = request.wrt_inputs[0] if request.wrt_inputs else request.wrt
    if wrt in x:
        tensor = x[wrt]
    elif len(x) == 1:
        tensor = next(iter(x.values()))
    else:
        return None
    shape = tuple(tensor.shape)
    if not shape:
        return None
    batch, example = shape[0], shape[1:]
    data_type = request.precision or DATA_TYPE_FLOAT32
    if kind == "per_input":
        return {_PER_INPUT_RESULTS[type(request)]: (data_type, PACKING_NONE, shape)}
    encoding = request.result_encoding
    hessian = (batch, *example, batch, *example) if request.full else (batch, *example, *example)
    narrowed = encoding.dtype if encoding.dtype in _NARROW_TYPES else data_type
    headers = {"hessian": (narrowed, encoding.packing, hessian)}
    if kind == "evaluation":
        headers = {"value": (narrowed, PACKING_NONE, (batch,)), "gradient": (narrowed, PACKING_NONE, shape), **headers}
    return headers


def _candidates(request: Any) -> list[tuple[int, tuple[int, ...]]]:
    """(B, S) of each input the result may be taken with respect to."""
    shapes = {name: tuple(tensor.shape) for name, tensor in request.x.items()}
    names = tuple(getattr(request, "wrt_inputs", ()))
    if len(names) > 1:
        named = [shapes.get(name, ()) for name in names]
        if not all(named) or len({shape[0] for shape in named}) != 1:
            return []
        return [(named[0][0], (sum(math.prod(shape[1:]) for shape in named),))]
    wrt = names[0] if names else request.wrt
    chosen = [shapes[wrt]] if wrt in shapes else list(shapes.values())
    return [(shape[0], shape[1:]) for shape in chosen if shape]


def _exact(*sizes: int) -> Dimensions:
    return tuple(range(size, size + 1) for size in sizes)


def _precision_type(request: Any) -> int:
    return request.precision or DATA_TYPE_FLOAT32


def _expected(
    request: Any,
    rules: Mapping[str, ShapeRule],
    data_type: int | None = None,
    packings: Mapping[str, int] | None = None,
) -> dict[str, ExpectedResult]:
    """Each result of ``rules`` (name -> shape rule) for every candidate input of
    ``request``, in ``data_type`` (the precision's when ``None``) and ``packings``
    (name -> ``Packing``; unpacked when absent)."""
    candidates = _candidates(request)
    data_type = _precision_type(request) if data_type is None else data_type
    return {
        name: ExpectedResult(
            tuple(rule(b, s) for b, s in candidates),
            data_type,
            (packings or {}).get(name, PACKING_NONE),
        )
        for name, rule in rules.items()
    }


def _second_order(request: pb.HessianRequest | pb.EvaluateRequest) -> dict[str, ExpectedResult]:
    encoding = request.result_encoding
    rules: dict[str, ShapeRule] = {}
    if isinstance(request, pb.EvaluateRequest):
        rules = {"value": lambda b, s: _exact(b), "gradient": lambda b, s: _exact(b, *s)}
    rules["hessian"] = lambda b, s: _exact(b, *s, b, *s) if request.full else _exact(b, *s, *s)
    narrowed = encoding.dtype if encoding.dtype in _NARROW_TYPES else None
    return _expected(request, rules, narrowed, {"hessian": encoding.packing})


def _per_input(*fields: str) -> Results:
    """Results ``fields``, each shaped (B, *S) like the differentiated input."""

    def results(request: Any) -> dict[str, ExpectedResult]:
        return _expected(request, dict.fromkeys(fields, lambda b, s: _exact(b, *s)))

    return results


def _trace(request: pb.HessianTraceRequest) -> dict[str, ExpectedResult]:
    return _expected(request, dict.fromkeys(("trace", "stderr"), lambda b, s: _exact(b)))


def _eigen(request: pb.HessianEigenRequest) -> dict[str, ExpectedResult]:
    k = request.k if request.HasField("k") else 1
    rules: dict[str, ShapeRule] = {
        "eigenvalues": lambda b, s: _exact(b, k),
        "eigenvectors": lambda b, s: _exact(b, k, *s),
        "residuals": lambda b, s: _exact(b, k),
    }
    return _expected(request, rules)


def _spectrum(request: pb.HessianSpectrumRequest) -> dict[str, ExpectedResult]:
    probes = (
        request.probes if request.HasField("probes") else curvature_options.DEFAULT_SPECTRUM_PROBES
    )
    iterations = (
        request.iterations
        if request.HasField("iterations")
        else curvature_options.DEFAULT_SPECTRUM_ITERATIONS
    )

    def steps(b: int, s: tuple[int, ...]) -> Dimensions:
        """(B, probes, at most min(iterations, D)): Lanczos stops at D steps."""
        return (*_exact(b, probes), range(min(iterations, math.prod(s)) + 1))

    return _expected(request, dict.fromkeys(("nodes", "weights"), steps))


_SHORTCUT_KINDS: dict[type[Message], str] = {
    pb.HessianRequest: "hessian",
    pb.EvaluateRequest: "evaluation",
    pb.GradientRequest: "per_input",
    pb.HessianVectorProductRequest: "per_input",
}
"""The requests :func:`_exact_headers` knows, by what their replies hold."""

_PER_INPUT_RESULTS: dict[type[Message], str] = {
    pb.GradientRequest: "gradient",
    pb.HessianVectorProductRequest: "hvp",
}

_RULES: dict[type[Message], tuple[str, Results]] = {
    pb.HessianRequest: ("Hessian", _second_order),
    pb.EvaluateRequest: ("Evaluate", _second_order),
    pb.GradientRequest: ("Gradient", _per_input("gradient")),
    pb.HessianVectorProductRequest: ("HessianVectorProduct", _per_input("hvp")),
    pb.HessianDiagonalRequest: ("HessianDiagonal", _per_input("diagonal", "stderr")),
    pb.HessianTraceRequest: ("HessianTrace", _trace),
    pb.HessianEigenRequest: ("HessianEigen", _eigen),
    pb.HessianSpectrumRequest: ("HessianSpectrum", _spectrum),
}
"""Per request type: its RPC's name and what its reply may hold."""


def _describe_rule(rule: Dimensions) -> str:
    sizes = [
        str(sizes.start) if len(sizes) == 1 else f"{sizes.start}..{sizes.stop - 1}" for sizes in rule
    ]
    return f"({', '.join(sizes)}{',' if len(sizes) == 1 else ''})"


def _describe_shape(shape: Sequence[int]) -> str:
    if len(shape) > tensor_codec.MAX_RANK:
        return f"of {len(shape):,} dimensions"
    return str(tuple(shape))


def _dtype_name(data_type: int) -> str:
    try:
        return tensor_codec.dtype_name(data_type, field="result")
    except TensorEncodingError:
        return f"dtype enum value {data_type}"


def _packing_name(packing: int) -> str:
    return Packing.Name(packing) if packing in Packing.values() else f"packing enum value {packing}"


__all__ = ["ExpectedResult", "ReplyBound", "bound_of", "checked"]
