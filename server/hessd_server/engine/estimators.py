"""Matrix-free diagonals and traces from batched Hessian-vector products, in TensorFlow.

Everything here works on a *block matvec*: V (n, B, D) -> (n, B, D), the
product H_b V[i, b] of each example's Hessian block with n vectors at once.
Nothing forms a (B, D, D) block. Products are taken ``chunk`` vectors at a
time inside ``tf.while_loop``, so Hutchinson's memory grows with the chunk,
not with the number of probes (Hutch++ keeps its sketch besides). Randomness
is stateless (Philox), keyed by a ``seed`` tensor of shape (2,), so a seed
reproduces a result bit for bit.

Run eagerly: a loop over chunks is a Python loop that calls ``matvec`` (a
compiled function, :mod:`.curvature_bodies`) once per chunk, with the
bookkeeping of each chunk in graph functions traced once for all sizes.
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


def apply_in_chunks(matvec: BlockMatvec, vectors: tf.Tensor, chunk: int) -> tf.Tensor:
    """``matvec(vectors)`` for V (n, B, D), always ``chunk`` vectors per call
    (zero-padded), so that one compiled product serves every call."""
    count = vectors.shape[0]
    steps = -(-count // chunk)
    padded = tf.pad(vectors, [[0, steps * chunk - count], [0, 0], [0, 0]])
    if steps == 1:
        return matvec(padded)[:count]
    blocks = tf.reshape(padded, [steps, chunk, *vectors.shape[1:]])
    products = tf.TensorArray(vectors.dtype, size=steps, element_shape=blocks.shape[1:])

    def body(step: tf.Tensor, products: tf.TensorArray) -> tuple[tf.Tensor, tf.TensorArray]:
        return step + 1, products.write(step, matvec(blocks[step]))

    _, products = tf.while_loop(lambda step, _: step < steps, body, (tf.constant(0), products))
    return tf.reshape(products.stack(), [steps * chunk, *vectors.shape[1:]])[:count]


class Moments(NamedTuple):
    """Running count, mean and sum of squared deviations of samples (Chan et al.)."""

    count: tf.Tensor
    mean: tf.Tensor
    m2: tf.Tensor

    def add(self, samples: tf.Tensor, valid: tf.Tensor) -> Moments:
        """Merge the rows of ``samples`` (n, ...) whose ``valid`` (n,) is true."""
        return _merged(self, samples, valid)

    def standard_error(self) -> tf.Tensor:
        """Sample standard deviation (ddof 1) over sqrt(count); NaN for one sample."""
        variance = self.m2 / (self.count - 1)
        return tf.sqrt(variance / self.count)


@tf.function(reduce_retracing=True, autograph=False)
def _merged(moments: Moments, samples: tf.Tensor, valid: tf.Tensor) -> Moments:
    """:meth:`Moments.add`, one graph function for all sizes."""
    mask = tf.reshape(tf.cast(valid, samples.dtype), tf.concat([[-1], tf.ones([tf.rank(samples) - 1], tf.int32)], 0))
    count = tf.reduce_sum(mask)
    mean = tf.reduce_sum(samples * mask, axis=0) / tf.maximum(count, 1)
    m2 = tf.reduce_sum(tf.square(samples - mean) * mask, axis=0)
    total = moments.count + count
    delta = mean - moments.mean
    share = count / tf.maximum(total, 1)
    return Moments(total, moments.mean + delta * share, moments.m2 + m2 + tf.square(delta) * moments.count * share)


@tf.function(reduce_retracing=True, autograph=False)
def _probes_of_step(
    seed: tf.Tensor, step: tf.Tensor, chunk: tf.Tensor, probes: tf.Tensor, shape: tf.Tensor, dtype: tf.DType
) -> tuple[tf.Tensor, tf.Tensor]:
    """Step ``step``'s ``chunk`` Rademacher probes (chunk, *shape) and which of them count (< ``probes`` in all)."""
    z = rademacher(fold_seed(seed, step), tf.concat([[chunk], shape], axis=0), dtype)
    return z, step * chunk + tf.range(chunk) < probes


def probe_moments(
    sample: Callable[[tf.Tensor], tf.Tensor],
    matvec: BlockMatvec,
    *,
    shape: tuple[int, int],
    probes: int,
    chunk: int,
    seed: tf.Tensor,
    dtype: tf.DType,
    value_shape: list[int],
) -> Moments:
    """Moments over ``probes`` Rademacher probes z (B, D) of ``sample(z, H z)``.

    ``sample`` maps probes Z (c, B, D) and products HZ (c, B, D) to samples
    (c, *value_shape). Probes are drawn ``chunk`` at a time, each chunk from
    its own folded seed, independently per example.
    """
    zero = tf.zeros(value_shape, dtype)
    moments = Moments(tf.constant(0, dtype), zero, zero)
    sizes = (tf.constant(chunk), tf.constant(probes), tf.constant(shape))
    for step in range(-(-probes // chunk)):
        z, valid = _probes_of_step(seed, tf.constant(step), *sizes, dtype)
        moments = moments.add(sample(z, matvec(z)), valid)
    return moments


def hutchinson_diagonal(
    matvec: BlockMatvec, *, shape: tuple[int, int], probes: int, chunk: int, seed: tf.Tensor, dtype: tf.DType
) -> tuple[tf.Tensor, tf.Tensor]:
    """Hutchinson's estimate of diag H_b, mean of z ⊙ H z, and its standard error; both (B, D)."""
    moments = probe_moments(
        lambda z, hz: z * hz,
        matvec,
        shape=shape,
        probes=probes,
        chunk=chunk,
        seed=seed,
        dtype=dtype,
        value_shape=list(shape),
    )
    return moments.mean, moments.standard_error()


def hutchinson_trace(
    matvec: BlockMatvec, *, shape: tuple[int, int], probes: int, chunk: int, seed: tf.Tensor, dtype: tf.DType
) -> tuple[tf.Tensor, tf.Tensor]:
    """Hutchinson's estimate of tr H_b, mean of zᵀ H z, and its standard error; both (B,)."""
    moments = probe_moments(
        lambda z, hz: tf.reduce_sum(z * hz, axis=-1),
        matvec,
        shape=shape,
        probes=probes,
        chunk=chunk,
        seed=seed,
        dtype=dtype,
        value_shape=[shape[0]],
    )
    return moments.mean, moments.standard_error()


def hutch_plus_plus_trace(
    matvec: BlockMatvec, *, shape: tuple[int, int], probes: int, chunk: int, seed: tf.Tensor, dtype: tf.DType
) -> tuple[tf.Tensor, tf.Tensor]:
    """Hutch++ (Meyer, Musco, Musco and Woodruff, 2021) estimate of tr H_b and its standard error; (B,).

    Of the ``probes`` products, s = probes // 3 sketch H S, s more give
    tr(Qᵀ H Q) on the sketch's orthonormal range Q, and the remaining
    probes - 2s run Hutchinson on (I - QQᵀ) H (I - QQᵀ). The standard error is
    that last part's: the rest is exact given the sketch. ``chunk`` should
    not exceed s, so that no product is wasted on padding.
    """
    batch, dim = shape
    sketch_size = probes // 3
    sketch = rademacher(fold_seed(seed, -1), [sketch_size, batch, dim], dtype)
    range_basis = tf.linalg.qr(tf.transpose(apply_in_chunks(matvec, sketch, chunk), [1, 2, 0]))[0]
    basis = tf.transpose(range_basis, [2, 0, 1])
    low_rank = tf.reduce_sum(basis * apply_in_chunks(matvec, basis, chunk), axis=[0, 2])

    def project_out(z: tf.Tensor) -> tf.Tensor:
        coefficients = tf.einsum("sbd,cbd->csb", basis, z)
        return z - tf.einsum("csb,sbd->cbd", coefficients, basis)

    moments = probe_moments(
        lambda z, hz: tf.reduce_sum(project_out(z) * hz, axis=-1),
        lambda z: matvec(project_out(z)),
        shape=shape,
        probes=probes - 2 * sketch_size,
        chunk=chunk,
        seed=seed,
        dtype=dtype,
        value_shape=[batch],
    )
    return low_rank + moments.mean, moments.standard_error()


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
