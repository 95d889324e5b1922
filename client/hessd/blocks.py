"""Named blocks of a result differentiated with respect to several inputs.

With ``wrt=["spot", "vol"]`` the differentiated vector is the concatenation of
the named inputs, each flattened per example, in the order given: per example
it has N = Σ_i prod(S_i) entries, the first prod(S_spot) of them ``spot``'s.
Results then come back flat: gradient, Hessian-vector product and diagonal
(B, N), per-example Hessian (B, N, N), full Hessian (B, N, B, N), and ``v``
is (B, N) too. These helpers convert between that layout and named blocks.

>>> import numpy as np
>>> shapes = {"spot": (2,), "vol": (1,)}
>>> h = np.arange(9.0).reshape(1, 3, 3)
>>> blocks = split_hessian(h, shapes)
>>> blocks["spot", "vol"].shape, blocks["vol", "vol"].tolist()
((1, 2, 1), [[[8.0]]])
>>> split_vector(np.array([[1.0, 2.0, 3.0]]), shapes)["spot"].tolist()
[[1.0, 2.0]]
>>> join_vector({"vol": np.array([[3.0]]), "spot": np.array([[1.0, 2.0]])}, shapes).tolist()
[[1.0, 2.0, 3.0]]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from hessd.errors import ShapeError

BlockShapes: TypeAlias = "Mapping[str, int | Sequence[int]]"
"""Each differentiated input's per-example shape S_i (or its size), in ``wrt`` order."""


def _shapes(shapes: BlockShapes) -> dict[str, tuple[int, ...]]:
    return {
        name: (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)
        for name, shape in shapes.items()
    }


def _bounds(shapes: dict[str, tuple[int, ...]]) -> dict[str, slice]:
    """Where each input's entries lie in the concatenated vector."""
    bounds, start = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        bounds[name] = slice(start, start + size)
        start += size
    return bounds


def _flat(array: np.ndarray, axes: int, size: int, what: str) -> np.ndarray:
    """``array`` (B, ...) as (B, size) (``axes`` = 1) or (B, size, size) (``axes`` = 2)."""
    batch = array.shape[0] if array.ndim else 0
    if array.ndim < 1 or array.size != batch * size**axes:
        expected = ", ".join(["B", *[str(size)] * axes])
        raise ShapeError(f"{what} of shape {array.shape} is not ({expected})")
    return array.reshape(batch, *([size] * axes))


def split_vector(vector: npt.ArrayLike, shapes: BlockShapes) -> dict[str, np.ndarray]:
    """A (B, N) gradient, Hessian-vector product or diagonal -> ``{name: (B, *S_name)}``.

    Raises:
        ShapeError: ``vector`` does not hold N = Σ prod(S_i) entries per example.
    """
    named = _shapes(shapes)
    bounds = _bounds(named)
    total = sum(math.prod(shape) for shape in named.values())
    rows = _flat(np.asarray(vector), 1, total, "the vector")
    return {name: rows[:, bounds[name]].reshape(rows.shape[0], *named[name]) for name in named}


def join_vector(blocks: Mapping[str, npt.ArrayLike], shapes: BlockShapes) -> np.ndarray:
    """``{name: (B, *S_name)}`` -> the (B, N) vector, in the order of ``shapes``; the
    inverse of :func:`split_vector`, e.g. to build ``v`` for a Hessian-vector product.

    Raises:
        ShapeError: a block is missing, extra, or not of shape (B, *S_name).
    """
    named = _shapes(shapes)
    if set(blocks) != set(named):
        raise ShapeError(
            f"v must have one block per differentiated input {list(named)}, got {list(blocks)}", field="v"
        )
    arrays = {name: np.asarray(blocks[name]) for name in named}
    batch = next(iter(arrays.values())).shape[0] if arrays and next(iter(arrays.values())).ndim else 0
    for name, array in arrays.items():
        if array.shape != (batch, *named[name]):
            raise ShapeError(
                f"block {name!r} of v must have shape (B, *S) = {(batch, *named[name])}, got {array.shape}",
                field="v",
            )
    return np.concatenate([arrays[name].reshape(batch, -1) for name in named], axis=1)


def split_hessian(
    hessian: npt.ArrayLike, shapes: BlockShapes, *, full: bool = False
) -> dict[tuple[str, str], np.ndarray]:
    """A Hessian over several inputs -> its named blocks ``{(a, b): block}``.

    Per-example (``full=False``): (B, N, N) -> blocks (B, *S_a, *S_b), the
    second derivatives of f_b with respect to input a and input b. Full: (B, N,
    B, N) -> blocks (B, *S_a, B, *S_b). A Hessian of one input, (B, *S, *S) or
    (B, *S, B, *S), is split too, into its one block.

    Raises:
        ShapeError: ``hessian`` does not hold N = Σ prod(S_i) entries per side.
    """
    named = _shapes(shapes)
    bounds = _bounds(named)
    total = sum(math.prod(shape) for shape in named.values())
    array = np.asarray(hessian)
    batch = array.shape[0] if array.ndim else 0
    if full:
        if array.size != (batch * total) ** 2:
            raise ShapeError(f"the full Hessian of shape {array.shape} is not (B, {total}, B, {total})")
        square = array.reshape(batch, total, batch, total)
        return {
            (a, b): square[:, bounds[a], :, bounds[b]].reshape(batch, *named[a], batch, *named[b])
            for a in named
            for b in named
        }
    square = _flat(array, 2, total, "the Hessian")
    return {
        (a, b): square[:, bounds[a], bounds[b]].reshape(batch, *named[a], *named[b])
        for a in named
        for b in named
    }
