"""Engine settings: batch buckets, the result byte limit, the curvature memory budget, XLA,
the compiled-function cache and the per-example Hessian strategy."""

from __future__ import annotations

from dataclasses import dataclass


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
            Hessian-vector products at once as fit in it.
        jit_compile: compile with XLA (``tf.function(jit_compile=True)``); a
            function XLA cannot compile falls back to graph mode and is recorded.
        max_compiled_functions: compiled functions kept per model; beyond it the
            least recently used one is evicted (and compiled again if asked for
            again). Inputs of unknown length compile one function per length,
            so this bounds the memory such a model can take.
        strategy: the per-example Hessian strategy to use (a name of
            ``hessd_server.engine.strategies.STRATEGIES``: ``"pfor"``, ``"tiled"``,
            ``"forward_over_reverse"`` or ``"structural"``), or None (default)
            to choose per bucket: by the tuning record in ``tuning_cache``
            when there is one, else by the fixed rule of
            :data:`hessd_server.engine.strategies.RULE`. A forced strategy
            still has to match the reference strategy on that batch; if it
            does not, or cannot run, the reference is used and the outcome
            recorded.
        tuning_cache: a directory of tuning records shared by every process
            that serves the model (replicas, restarts, the library): a
            bucket without a record is tuned (every strategy that works is
            timed, the fastest kept) and its choice written there once; a
            bucket with one takes the recorded strategy without tuning. None
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
