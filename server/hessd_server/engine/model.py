"""A loaded model: its named inputs and outputs, how to call it, and what the
engine has learnt about it (strategy, batch independence, compiles)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

import tensorflow as tf

from hessd.errors import PrecisionError
from hessd.results import ModelMetadata, StrategyTiming, TensorInfo

from .build_locks import BuildLocks
from .config import EngineConfig
from .function_cache import FunctionCache

ModelCall = Callable[[Mapping[str, tf.Tensor]], Any]
"""Named input tensors (each (B, *S_i)) -> the model's outputs, any nest of (B, ...) tensors."""

WarmUp = Callable[..., None]
"""What :meth:`Model.warmup` delegates to: :func:`hessd_server.engine.warmup.warmup`."""

PRECISIONS = ("float32", "float64")


class Model:
    """A model ready for differentiation; build it with :func:`hessd_server.load_model`.

    Calls are thread-safe. The model's float64 copy, when a float64 precision
    is asked for, is built once on first use, and takes the model's weights as
    they are at the start of each float64 call.

    ``lock`` guards the records below for an instant at a time; it is never
    held across a trace, a compile, a model call or the batch-independence
    probe, so :meth:`metadata` answers while functions compile.
    """

    def __init__(
        self,
        *,
        name: str,
        source: str,
        call: ModelCall,
        inputs: tuple[TensorInfo, ...],
        outputs: tuple[TensorInfo, ...],
        config: EngineConfig,
        float64_factory: Callable[[], ModelCall] | None,
        warm_up: WarmUp,
        keep_alive: object = None,
        input_ranges: Mapping[str, tuple[int, int]] | None = None,
        describe: Callable[[], bytes] | None = None,
        tuning_records: Path | None = None,
    ) -> None:
        self.name = name
        self.source = source
        self.inputs = inputs
        self.outputs = outputs
        self.config = config
        self.input_ranges: dict[str, tuple[int, int]] = dict(input_ranges or {})
        """Integer inputs that index a lookup (an ``Embedding``): name -> [low, high)."""
        self.lock = threading.Lock()
        self.probe_lock = threading.Lock()
        """Held while the batch-independence probe runs, so it runs once."""
        self.tuning_records = tuning_records
        """The folder of tuning records shipped beside the model's files (read, never
        written while serving), or None; see :mod:`.tuning_record`."""
        self.strategy: str | None = None
        self.batch_independent: bool | None = None
        self.compile_count = 0
        """Functions compiled and cached; a candidate that failed is not counted."""
        self.xla_fallbacks: list[str] = []
        self.functions = FunctionCache(config.max_compiled_functions)
        self.build_locks = BuildLocks()
        """One lock per function being built or waited for (``build_locks.waits`` counts the waits)."""
        self.output_sizes: dict[tuple[tuple[str, tuple[int, ...]], ...], int] = {}
        self.xla_failed_kinds: set[tuple[str, str]] = set()
        self.strategy_choices: dict[tuple[str, int], str] = {}
        self.strategy_timings: dict[tuple[str, int], tuple[StrategyTiming, ...]] = {}
        self._calls: dict[str, ModelCall] = {"float32": call}
        self._calls_lock = threading.Lock()
        self._float64_factory = float64_factory
        self._warm_up = warm_up
        self._keep_alive = keep_alive
        self._describe = describe
        self._fingerprint: str | None = None

    def __repr__(self) -> str:
        return f"<hessd_server.Model {self.name!r} from {self.source!r}>"

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(info.name for info in self.inputs)

    def call_for(self, precision: str) -> ModelCall:
        """The model's call at ``precision`` ("float32" or "float64")."""
        with self._calls_lock:
            if precision not in self._calls:
                if self._float64_factory is None:
                    raise PrecisionError(
                        f"model {self.name!r} cannot run at float64: only Keras models can be copied to float64 "
                        "(a SavedModel's signature fixes its dtypes); use precision='float32'",
                        field="precision",
                    )
                self._calls[precision] = self._float64_factory()
            return self._calls[precision]

    def fingerprint(self) -> str:
        """A hex digest of the model's inputs, outputs' shapes, architecture and weights as
        loaded (computed once): what a tuning record of :mod:`.tuning_record` is keyed by."""
        with self._calls_lock:
            if self._fingerprint is None:
                # Output names are left out: Keras derives them from layer names it numbers per process.
                outputs = [(o.shape, o.dtype) for o in self.outputs]
                digest = hashlib.sha256(repr((self.inputs, outputs)).encode())
                if self._describe is not None:
                    digest.update(self._describe())
                self._fingerprint = digest.hexdigest()
            return self._fingerprint

    def warmup(self, batch_sizes: tuple[int, ...] | list[int] | None = None, **plan: Any) -> None:
        """The same as ``hessd_server.warmup(self, batch_sizes, **plan)`` (``methods``, ``precisions``)."""
        self._warm_up(self, batch_sizes, **plan)

    def metadata(self) -> ModelMetadata:
        """A snapshot of the model's inputs, outputs and engine choices."""
        with self.lock:
            return ModelMetadata(
                name=self.name,
                inputs=self.inputs,
                outputs=self.outputs,
                strategy=self.strategy,
                batch_independent=self.batch_independent,
                buckets=self.config.buckets,
                compile_count=self.compile_count,
                xla_fallbacks=tuple(self.xla_fallbacks),
                strategy_timings=tuple(t for timings in self.strategy_timings.values() for t in timings),
            )
