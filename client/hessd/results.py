"""Result types shared by the engine (``hessd_server``) and the SDK (``hessd``).

Plain containers of numpy arrays and metadata; nothing here imports TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np


class Evaluation(NamedTuple):
    """Value, gradient and Hessian of f at one batch, from one ``evaluate`` call.

    With B the batch size and S the per-example shape of the differentiated input:

    Attributes:
        value: f per example, shape (B,).
        gradient: df/dx, shape (B, *S).
        hessian: d2f/dx2, shape (B, *S, *S), or (B, *S, B, *S) when ``full=True``.

    All three share one floating point dtype (float32 or float64).
    """

    value: np.ndarray
    gradient: np.ndarray
    hessian: np.ndarray


@dataclass(frozen=True)
class TensorInfo:
    """Name, per-example shape (no batch dimension; ``None`` = unknown size) and dtype name."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


@dataclass(frozen=True)
class VersionStatus:
    """Where one version of a served model stands.

    Attributes:
        version: the version, e.g. ``"2"``.
        state: ``"LOADING"``, ``"AVAILABLE"`` (answering requests), ``"FAILED"``
            or ``"UNLOADING"`` (finishing its calls before it is unloaded).
        error: why it is ``"FAILED"``; ``None`` otherwise.
    """

    version: str
    state: str
    error: str | None = None


@dataclass(frozen=True)
class ModelStatus:
    """A served model's versions and their states.

    Attributes:
        name: the model's name.
        versions: its versions in ascending order, each with its state.
        error: a problem with the model's repository folder as a whole (e.g.
            a broken config.toml) that stops its versions from loading;
            ``None`` when there is none.
        layout_errors: model files or folders not laid out as
            ``NAME/VERSION/model.keras`` (or a SavedModel in ``NAME/VERSION/``),
            so not served, each saying where to move it.
    """

    name: str
    versions: tuple[VersionStatus, ...]
    error: str | None = None
    layout_errors: tuple[str, ...] = ()

    @property
    def available(self) -> tuple[str, ...]:
        """The versions that answer requests, ascending."""
        return tuple(v.version for v in self.versions if v.state == "AVAILABLE")


class Versioned(NamedTuple):
    """A result and the model version that computed it (the SDK's ``with_version=True``).

    >>> result, version = Versioned(1.0, "2")
    """

    result: Any
    model_version: str


@dataclass(frozen=True)
class StrategyTiming:
    """How one per-example Hessian strategy fared when a batch bucket was tuned.

    Attributes:
        batch: the bucket (padded batch size) tuned.
        precision: ``"float32"`` or ``"float64"``.
        strategy: ``"pfor"``, ``"tiled"``, ``"forward_over_reverse"`` or ``"structural"``.
        outcome: ``"chosen"`` (in use; ``source`` says how it was chosen),
            ``"passed"`` (matched the reference, not chosen), ``"rejected"`` (its result differed
            from the reference strategy's by more than rtol 1e-5), ``"failed"``
            (it could not run), ``"refused"`` (it does not apply to this model,
            e.g. a layer the structural path does not know) or ``"skipped"``
            (not tried: too much memory at this size, or another one was forced).
        seconds: seconds of its fastest timed call; ``None`` when not timed.
        detail: why it was rejected, failed, refused or skipped; empty otherwise.
        source: how the bucket's strategy was chosen, the same for every entry
            of the bucket: ``"rule"`` (the fixed preference order among the
            strategies that match the reference; no timing), ``"pinned"``
            (``EngineConfig.strategy`` / ``--strategy``), ``"tuned"`` (timed
            in this process and written to the tuning record) or ``"record"``
            (read from a tuning record that an earlier process wrote; the
            outcomes and times are that process's).
    """

    batch: int
    precision: str
    strategy: str
    outcome: str
    seconds: float | None = None
    detail: str = ""
    source: str = ""


@dataclass(frozen=True)
class ModelMetadata:
    """What a served model takes and returns, and its compilation state.

    Attributes:
        name: the model's name.
        inputs: the model's inputs, in order.
        outputs: the model's outputs, in order.
        strategy: the per-example Hessian strategy chosen for the bucket tuned
            last (see ``strategy_timings`` for every bucket); ``None`` until
            warmup or a first per-example Hessian chose one.
        batch_independent: whether examples are independent (per-example
            Hessians need ``True``); ``None`` until probed.
        buckets: the configured batch-size buckets, ascending; a batch runs padded
            to the smallest bucket that holds it.
        compile_count: functions compiled so far.
        xla_fallbacks: functions that run without XLA because XLA failed on them.
        version: the served version described (``None`` in-process).
        version_status: every version of the model a server knows of, with
            its state (empty in-process).
        strategy_timings: every strategy's outcome and time, per tuned
            bucket and precision, in tuning order.
    """

    name: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    strategy: str | None
    batch_independent: bool | None
    buckets: tuple[int, ...]
    compile_count: int
    xla_fallbacks: tuple[str, ...]
    version: str | None = None
    version_status: tuple[VersionStatus, ...] = ()
    strategy_timings: tuple[StrategyTiming, ...] = ()


class Diagonal(NamedTuple):
    """The diagonal of each example's Hessian block, from ``hessian_diagonal``.

    Attributes:
        diagonal: d2 f_b / dx_i dx_i, shape (B, *S).
        stderr: its standard error, shape (B, *S): zeros for ``method="exact"``;
            for Hutchinson the sample standard deviation over probes divided by
            sqrt(probes) (NaN with one probe).
    """

    diagonal: np.ndarray
    stderr: np.ndarray


class Trace(NamedTuple):
    """The trace (Laplacian) of each example's Hessian block, from ``hessian_trace``.

    Attributes:
        trace: tr H_b = Δf_b, shape (B,).
        stderr: its standard error, shape (B,): zeros for ``method="exact"``; for
            Hutchinson the sample standard deviation over probes divided by
            sqrt(probes); for Hutch++ the same over its Hutchinson third (the
            low-rank part is exact given its sketch). NaN when that part has one probe.
    """

    trace: np.ndarray
    stderr: np.ndarray


class Eigen(NamedTuple):
    """k eigenpairs of each example's Hessian block, from ``hessian_eigen``.

    Attributes:
        eigenvalues: shape (B, k), sorted: descending for ``which="largest"``,
            ascending for ``"smallest"``, by descending |λ| for ``"largest_magnitude"``.
        eigenvectors: shape (B, k, *S), unit length, in the order of the
            eigenvalues; the sign makes each vector's largest-magnitude entry positive.
        residuals: ‖H_b v − λ v‖ of each pair, shape (B, k); large values flag
            pairs a Lanczos run did not converge to.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    residuals: np.ndarray


class Spectrum(NamedTuple):
    """A stochastic Lanczos quadrature of each example's Hessian spectrum, from ``hessian_spectrum``.

    The spectral density of H_b is approximated by sum_{p,i} weights[b, p, i]
    · δ(λ − nodes[b, p, i]); smooth it (e.g. with a Gaussian kernel) to draw it.

    Attributes:
        nodes: Ritz values, shape (B, probes, iterations).
        weights: their quadrature weights, shape (B, probes, iterations): >= 0,
            summing to 1 per example.
    """

    nodes: np.ndarray
    weights: np.ndarray
