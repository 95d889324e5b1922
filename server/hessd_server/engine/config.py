"""Engine settings: batch buckets, the result byte limit, the curvature memory and work budgets, XLA,
the compiled-function cache, the per-example Hessian strategy and the warm-up plan, with the
names those settings take. No TensorFlow here, so that ``hessd-server`` can parse and check
its flags without loading it; the warm-up itself is :func:`hessd_server.engine.warmup.warmup`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hessd.curvature_options import MAX_CURVATURE_PRODUCTS

STRATEGY_NAMES: tuple[str, ...] = ("pfor", "tiled", "forward_over_reverse", "structural")
"""The per-example Hessian strategies, in the order they are tried; their bodies are
``hessd_server.engine.strategies.STRATEGIES``."""

DEMO_MODEL_SOURCE = "hessd_server.engine.demo_model:build_demo_model"
"""The ``load_model`` source of the demo model."""

DEFAULT_WARMUP_BATCH_SIZES: tuple[int, ...] = (1, 8, 32)
"""The batch sizes warmed when none are given. A request runs in the smallest warmed
bucket that holds it when served (see :func:`hessd_server.engine.stacking.compiled_bucket`),
so three buckets cover 1 to 32 examples at about half the compiles of all six."""

WARMUP_METHODS: tuple[str, ...] = (
    "hessian",
    "evaluate",
    "gradient",
    "hvp",
    "full_hessian",
    "hessian_diagonal",
    "hessian_trace",
    "hessian_eigen",
    "hessian_spectrum",
)
"""The methods a warm-up can compile, named as the library's functions (``full_hessian``:
``hessian(..., full=True)``). ``hessian`` and ``evaluate`` share one compiled function."""

DEFAULT_WARMUP_METHODS: tuple[str, ...] = ("hessian", "evaluate", "gradient", "hvp")
"""The methods warmed when none are named: the per-example ones."""

WARMUP_PRECISIONS: tuple[str, ...] = ("float32", "float64")
"""The precisions a warm-up can compile."""

DEFAULT_WARMUP_PRECISIONS: tuple[str, ...] = ("float32",)
"""The precisions warmed when none are named."""


def check_warmup_plan(methods: Iterable[str], precisions: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``methods`` and ``precisions`` as tuples, each name once, in the order given.

    Raises:
        ValueError: a name is not one of :data:`WARMUP_METHODS` or
            :data:`WARMUP_PRECISIONS`, or either is empty; the message lists the known names.

    >>> check_warmup_plan(["hvp", "hessian_trace", "hvp"], ["float64"])
    (('hvp', 'hessian_trace'), ('float64',))
    """
    checked = []
    for what, names, known in (
        ("method", methods, WARMUP_METHODS),
        ("precision", precisions, WARMUP_PRECISIONS),
    ):
        names = tuple(dict.fromkeys(names))
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            found = f"unknown warm-up {what}s {unknown}" if unknown else f"no warm-up {what} named"
            raise ValueError(f"{found}; known: {', '.join(known)}")
        checked.append(names)
    return checked[0], checked[1]


@dataclass(frozen=True)
class EngineConfig:
    """How a loaded model is compiled and guarded.

    Attributes:
        max_batch_size: the largest power-of-two bucket. A batch of B examples
            runs in the smallest bucket >= B; a larger batch of a
            batch-independent model runs as slices of ``max_batch_size``
            examples, so it compiles nothing new.
        max_result_bytes: a request whose result would exceed this many bytes is
            refused with ``ResultTooLargeError`` before anything is computed.
        curvature_memory_bytes: the memory budget of the curvature summaries.
            ``method="auto"`` computes them exactly from dense per-example
            blocks when the padded batch's blocks, B * D * D values, fit in it,
            and matrix-free otherwise; matrix-free methods take as many
            Hessian-vector products at once as fit in it (up to 1,024 per
            example), and a request whose estimator would keep more vectors
            (B, D) than fit in it (Hutch++'s sketch, 3 * (probes // 3);
            Lanczos's iterations + k; the spectrum's probes * iterations) is
            refused with reason ``CURVATURE_OPTION_INVALID`` before compiling.
        max_curvature_products: the most Hessian-vector products one matrix-free
            curvature request may take over all its examples (probes · B,
            (iterations + k) · B, probes · iterations · B, D · B by unit vectors);
            more is refused with reason ``CURVATURE_OPTION_INVALID`` before
            compiling. Default ``hessd.curvature_options.MAX_CURVATURE_PRODUCTS``.
        jit_compile: compile with XLA (``tf.function(jit_compile=True)``); a
            function XLA cannot compile falls back to graph mode and is recorded.
        max_compiled_functions: compiled functions kept per model; beyond it the
            least recently used one is evicted (and compiled again if asked for
            again). Inputs of unknown length compile one function per length,
            so this bounds the memory such a model can take.
        strategy: the per-example Hessian strategy to use (a name of
            ``STRATEGY_NAMES``: ``"pfor"``, ``"tiled"``,
            ``"forward_over_reverse"`` or ``"structural"``), or None (default)
            to choose per bucket: by the tuning record shipped beside the
            model's file (``tuning/``, see ``load_model``), else the one in
            ``tuning_cache``, else by the fixed rule of
            :data:`hessd_server.engine.strategies.RULE`. A forced strategy
            still has to match the reference strategy on that batch; if it
            does not, or cannot run, the reference is used and the outcome
            recorded.
        tuning_cache: a directory of tuning records shared by every process
            that serves the model (replicas, restarts, the library): a
            bucket without a record is tuned (every strategy that works is
            timed, the fastest kept) and its choice written there once; a
            bucket with one (here or beside the model's file) takes the
            recorded strategy without tuning. None
            (default): no tuning; each bucket takes the rule's strategy, the
            same in every process. Ignored when ``strategy`` is forced.
        autotune_runs: timed calls per strategy when a bucket is tuned (with a
            ``tuning_cache``); the
            fastest call decides.
        autotune_tiled: also tune the tiled strategies (``"tiled"``,
            ``"forward_over_reverse"``) where pfor works. Off by default: they
            run D copies of the batch, have never beaten pfor in the
            benchmarks, and each costs a compile at warm-up. Where pfor fails
            they are always tried.
    """

    max_batch_size: int = 1024
    max_result_bytes: int = 1 << 30
    jit_compile: bool = True
    curvature_memory_bytes: int = 256 << 20
    max_curvature_products: int = MAX_CURVATURE_PRODUCTS
    max_compiled_functions: int = 256
    strategy: str | None = None
    tuning_cache: str | None = None
    autotune_runs: int = 3
    autotune_tiled: bool = False

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_batch_size & (self.max_batch_size - 1):
            raise ValueError(f"max_batch_size must be a power of two >= 1, got {self.max_batch_size}")
        if self.max_result_bytes < 1:
            raise ValueError(f"max_result_bytes must be positive, got {self.max_result_bytes}")
        if self.curvature_memory_bytes < 1:
            raise ValueError(f"curvature_memory_bytes must be positive, got {self.curvature_memory_bytes}")
        if self.max_curvature_products < 1:
            raise ValueError(f"max_curvature_products must be positive, got {self.max_curvature_products}")
        if self.max_compiled_functions < 1:
            raise ValueError(f"max_compiled_functions must be >= 1, got {self.max_compiled_functions}")
        if self.autotune_runs < 1:
            raise ValueError(f"autotune_runs must be at least 1, got {self.autotune_runs}")

    @property
    def buckets(self) -> tuple[int, ...]:
        """The power-of-two batch sizes 1, 2, 4, ..., ``max_batch_size``."""
        return tuple(1 << i for i in range(self.max_batch_size.bit_length()))

    def bucket_for(self, batch_size: int) -> int:
        """The padded batch size a batch of ``batch_size`` examples runs at; a batch
        above ``max_batch_size`` runs in slices of that size.

        >>> EngineConfig(max_batch_size=8).bucket_for(5), EngineConfig(max_batch_size=8).bucket_for(19)
        (8, 8)
        """
        return min(1 << max(batch_size - 1, 0).bit_length(), self.max_batch_size)
