"""Matrix-free traces from batched Hessian-vector products, in TensorFlow.

Everything here works on a *block matvec*: V (n, B, D) -> (n, B, D), the
product H_b V[i, b] of each example's Hessian block with n vectors at once.
Nothing forms a (B, D, D) block. Randomness is stateless (Philox), keyed by a
``seed`` tensor of shape (2,), so a seed reproduces a result bit for bit.

The functions are traced into the compiled steps of :mod:`.curvature_bodies`
(Hutchinson's chunk, Hutch++'s chunks); :func:`exact_diagonal` alone runs
eagerly, one compiled chunk of products per call.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import tensorflow as tf

BlockMatvec = Callable[[tf.Tensor], tf.Tensor]
"""V (n, B, D) -> (n, B, D) with row [i, b] = H_b V[i, b]."""

_ALGORITHM = "philox"


def fold_seed(seed: tf.Tensor, salt: int | tf.Tensor) -> tf.Tensor:
    """A new stateless seed (2,) derived from ``seed`` and ``salt``."""
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(salt, tf.int64), alg=_ALGORITHM)


def rademacher(seed: tf.Tensor, shape: tf.Tensor | list[int], dtype: tf.DType) -> tf.Tensor:
    """Independent ±1 entries of ``shape`` and ``dtype``."""
    bits = tf.random.stateless_uniform(shape, seed, minval=0, maxval=2, dtype=tf.int32, alg=_ALGORITHM)
    return tf.cast(2 * bits - 1, dtype)


def gaussian(seed: tf.Tensor, shape: tf.Tensor | list[int], dtype: tf.DType) -> tf.Tensor:
    """Independent standard normal entries of ``shape`` and ``dtype``."""
    return tf.random.stateless_normal(shape, seed, dtype=dtype, alg=_ALGORITHM)


class Moments(NamedTuple):
    """Running count, mean and sum of squared deviations of samples (Chan et al.)."""

    count: tf.Tensor
    mean: tf.Tensor
    m2: tf.Tensor

    def standard_error(self) -> tf.Tensor:
        """Sample standard deviation (ddof 1) over sqrt(count); NaN for one sample."""
        variance = self.m2 / (self.count - 1)
        return tf.sqrt(variance / self.count)


def merged(moments: Moments, samples: tf.Tensor, valid: tf.Tensor) -> Moments:
    """``moments`` with the rows of ``samples`` (n, ...) whose ``valid`` (n,) is true merged in."""
    mask = tf.reshape(tf.cast(valid, samples.dtype), tf.concat([[-1], tf.ones([tf.rank(samples) - 1], tf.int32)], 0))
    count = tf.reduce_sum(mask)
    mean = tf.reduce_sum(samples * mask, axis=0) / tf.maximum(count, 1)
    m2 = tf.reduce_sum(tf.square(samples - mean) * mask, axis=0)
    total = moments.count + count
    delta = mean - moments.mean
    share = count / tf.maximum(total, 1)
    return Moments(
        total,
        tf.ensure_shape(moments.mean + delta * share, moments.mean.shape),
        tf.ensure_shape(moments.m2 + m2 + tf.square(delta) * moments.count * share, moments.m2.shape),
    )


def probes_of_step(
    seed: tf.Tensor, step: tf.Tensor, chunk: int | tf.Tensor, probes: tf.Tensor, shape: tf.Tensor | list[int],
    dtype: tf.DType,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Step ``step``'s ``chunk`` Rademacher probes (chunk, *shape) and which of them count (< ``probes`` in all)."""
    z = rademacher(fold_seed(seed, step), tf.concat([[chunk], shape], axis=0), dtype)
    return z, step * chunk + tf.range(chunk) < probes


class HutchPlusPlus(NamedTuple):
    """The state of a Hutch++ estimate between chunks of its schedule (:func:`hutch_plus_plus_chunks`).

    Attributes:
        sketch: (s, B, D): the sketch's products H S while they are taken, then
            their orthonormal range Q (zero rows past D).
        low_rank: tr(Qᵀ H Q) so far, (B,).
        count, mean, m2: the moments of the Hutchinson part, scalar, (B,), (B,).
    """

    sketch: tf.Tensor
    low_rank: tf.Tensor
    count: tf.Tensor
    mean: tf.Tensor
    m2: tf.Tensor


def hutch_plus_plus_schedule(probes: int, chunk: int) -> tuple[int, int]:
    """(sketch chunks a, chunks in all) of Hutch++ for ``probes``: chunks [0, a)
    take the sketch's products, [a, 2a) the products with its range, the rest
    the Hutchinson part's."""
    sketch_chunks = -(-(probes // 3) // chunk)
    return sketch_chunks, 2 * sketch_chunks + -(-(probes - 2 * (probes // 3)) // chunk)


def hutch_plus_plus_chunks(
    matvec: BlockMatvec,
    state: HutchPlusPlus,
    start: tf.Tensor,
    end: tf.Tensor,
    *,
    probes: tf.Tensor,
    chunk: int,
    seed: tf.Tensor,
) -> HutchPlusPlus:
    """Chunks ``start`` to ``end`` of Hutch++'s schedule (:func:`hutch_plus_plus_schedule`), in a graph.

    Hutch++ (Meyer, Musco, Musco and Woodruff, 2021) estimates tr H_b: of
    the ``probes`` products, s = probes // 3 sketch H S with Rademacher S,
    s more give tr(Qᵀ H Q) on the sketch's orthonormal range Q, and the
    remaining probes - 2s run Hutchinson on (I - QQᵀ) H (I - QQᵀ). The
    estimate is low_rank + mean, its standard error that of the last part
    (the rest is exact given the sketch). ``matvec`` takes ``chunk`` vectors.
    """
    size = tf.shape(state.sketch)[0]
    batch, dim = state.sketch.shape[1:]
    sketch_chunks = (size + chunk - 1) // chunk
    rows = tf.range(chunk)

    def rows_of(vectors: tf.Tensor, first: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``chunk`` rows of ``vectors`` from ``first`` (zeros past its end) and which are real."""
        index = first + rows
        real = index < size
        return tf.gather(vectors, tf.minimum(index, size - 1)) * tf.cast(real, vectors.dtype)[:, None, None], real

    def project_out(z: tf.Tensor, basis: tf.Tensor) -> tf.Tensor:
        return z - tf.einsum("csb,sbd->cbd", tf.einsum("sbd,cbd->csb", basis, z), basis)

    def step(i: tf.Tensor, state: HutchPlusPlus) -> tuple[tf.Tensor, HutchPlusPlus]:
        sketch = tf.cond(tf.equal(i, sketch_chunks), lambda: _orthonormal_range(state.sketch), lambda: state.sketch)
        phase = tf.minimum(i // sketch_chunks, 2)
        residual_step = i - 2 * sketch_chunks
        shape = [batch, dim]
        z, valid = probes_of_step(seed, tf.maximum(residual_step, 0), chunk, probes - 2 * size, shape, sketch.dtype)
        vectors = tf.switch_case(
            phase,
            [
                lambda: rademacher(fold_seed(fold_seed(seed, -1), i), [chunk, batch, dim], sketch.dtype),
                lambda: rows_of(sketch, (i - sketch_chunks) * chunk)[0],
                lambda: project_out(z, sketch),
            ],
        )
        vectors = tf.ensure_shape(vectors, [chunk, batch, dim])
        products = matvec(vectors)

        def sketched() -> HutchPlusPlus:
            index = i * chunk + rows
            real = index < size
            taken = tf.boolean_mask(products, real)
            return state._replace(sketch=tf.tensor_scatter_nd_update(sketch, tf.boolean_mask(index, real)[:, None], taken))

        def ranged() -> HutchPlusPlus:
            return state._replace(sketch=sketch, low_rank=state.low_rank + tf.reduce_sum(vectors * products, axis=[0, 2]))

        def sampled() -> HutchPlusPlus:
            moments = merged(Moments(state.count, state.mean, state.m2), tf.reduce_sum(vectors * products, -1), valid)
            return state._replace(sketch=sketch, count=moments.count, mean=moments.mean, m2=moments.m2)

        return i + 1, tf.switch_case(phase, [sketched, ranged, sampled])

    return tf.while_loop(lambda i, _: i < end, step, (start, state))[1]


def _orthonormal_range(products: tf.Tensor) -> tf.Tensor:
    """An orthonormal basis (s, B, D) of the span of each example's ``products``
    (s, B, D), by QR, with zero rows past D."""
    size = tf.shape(products)[0]
    basis = tf.transpose(tf.linalg.qr(tf.transpose(products, [1, 2, 0]))[0], [2, 0, 1])
    return tf.pad(basis, [[0, size - tf.shape(basis)[0]], [0, 0], [0, 0]])


def exact_diagonal(matvec: BlockMatvec, *, shape: tuple[int, int], chunk: int, dtype: tf.DType) -> tf.Tensor:
    """diag H_b from products with unit vectors, ``chunk`` coordinates at a time; (B, D)."""
    batch, dim = shape
    steps = -(-dim // chunk)
    entries = tf.TensorArray(dtype, size=steps, element_shape=[chunk, batch])

    def body(step: tf.Tensor, entries: tf.TensorArray) -> tuple[tf.Tensor, tf.TensorArray]:
        coordinates = step * chunk + tf.range(chunk)
        units = tf.one_hot(coordinates, dim, dtype=dtype)  # rows past D are zero
        products = matvec(tf.broadcast_to(units[:, None, :], [chunk, batch, dim]))
        return step + 1, entries.write(step, tf.reduce_sum(products * units[:, None, :], axis=-1))

    _, entries = tf.while_loop(lambda step, _: step < steps, body, (tf.constant(0), entries))
    return tf.transpose(tf.reshape(entries.stack(), [steps * chunk, batch])[:dim])
