"""One model input as an optimizer's flat variable, and the checks on what goes in and comes out.

:class:`ModelInput` maps points x of D values (the input ``wrt`` of per-example shape S,
flattened row-major) to the request ``x`` of the library contract, with the model's other
inputs held fixed, and checks sizes before anything is sent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from hessd.errors import InvalidArgumentError, OutputWeightsError, PrecisionError, ShapeError, UnknownInputError
from hessd.results import Evaluation, ModelMetadata

PRECISIONS = ("float32", "float64")


class ModelInput:
    """Input ``wrt`` of a model as a flat variable of D values, the others fixed.

    Args:
        metadata: the model's inputs and outputs.
        wrt: the input to optimise over; ``None`` for a single-input model.
        inputs: one example's value of every other input (no batch dimension).
        precision: ``"float32"`` or ``"float64"``: the dtype points are sent and
            results computed in.
        batch: with a number B, ``inputs`` hold B examples each (a leading
            dimension B), one per problem; ``None``: one example, shared by every point.
    """

    def __init__(
        self, metadata: ModelMetadata, wrt: str | None, inputs: Mapping[str, npt.ArrayLike] | None,
        precision: str,
        batch: int | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise PrecisionError(f"precision must be 'float32' or 'float64', not {precision!r}", field="precision")
        names = [info.name for info in metadata.inputs]
        if wrt is None:
            if len(names) != 1:
                raise UnknownInputError(
                    f"model {metadata.name!r} has inputs {names}: name the one to optimise over with wrt=", field="wrt"
                )
            wrt = names[0]
        if wrt not in names:
            raise UnknownInputError(f"model {metadata.name!r} has no input {wrt!r}; its inputs are {names}", field="wrt")
        shape = metadata.inputs[names.index(wrt)].shape
        if any(size is None for size in shape):
            raise ShapeError(
                f"input {wrt!r} of model {metadata.name!r} has a size unknown until called ({shape}); "
                "the optimizers need a fixed per-example shape",
                field="wrt",
            )
        fixed = dict(inputs or {})
        missing = sorted(set(names) - {wrt} - set(fixed))
        extra = sorted(set(fixed) - (set(names) - {wrt}))
        if missing or extra:
            raise UnknownInputError(
                f"inputs must hold one example of every input of model {metadata.name!r} but {wrt!r}: "
                f"missing {missing}, not expected {extra}",
                field="inputs",
            )
        self.model_name = metadata.name
        self.wrt = wrt
        self.shape: tuple[int, ...] = tuple(int(size) for size in shape)
        self.size = math.prod(self.shape)
        self.precision = precision
        self.dtype = np.dtype(precision)
        self.output_size = _output_size(metadata)
        self._single = len(names) == 1
        self._fixed = {name: np.asarray(value) for name, value in fixed.items()}
        self._batch = batch
        for name, value in self._fixed.items():
            if batch is not None and (value.ndim == 0 or value.shape[0] != batch):
                raise ShapeError(
                    f"inputs[{name!r}] must hold one example per problem, shape ({batch}, ...), not {value.shape}",
                    field=f"inputs[{name}]",
                )

    def point(self, x: npt.ArrayLike, field: str = "x") -> np.ndarray:
        """``x`` as a flat float array (D,) in this input's precision, checked for size and finiteness."""
        flat = np.asarray(x, dtype=self.dtype).reshape(-1)
        if flat.size != self.size:
            raise ShapeError(
                f"{field} has {flat.size} values; input {self.wrt!r} of model {self.model_name!r} has shape "
                f"{self.shape}, so {field} needs {self.size}",
                field=field,
                metadata={"expected_size": self.size, "actual_size": flat.size},
            )
        refuse_non_finite_input(flat, field)
        return flat

    def request(self, rows: np.ndarray, problems: np.ndarray | None = None) -> Any:
        """The library's ``x`` for points ``rows`` (n, D): an array (n, *S), or, for a
        multi-input model, arrays keyed by input name with the fixed inputs: the one
        example repeated n times, or with ``batch``, those of the problems numbered
        ``problems`` (n,)."""
        x = rows.reshape(rows.shape[0], *self.shape)
        if self._single:
            return x
        if self._batch is None:
            fixed = {name: np.broadcast_to(value, (rows.shape[0], *value.shape)) for name, value in self._fixed.items()}
        else:
            fixed = {name: value[problems] for name, value in self._fixed.items()}
        return {**fixed, self.wrt: x}

    def flat_evaluation(self, evaluation: Evaluation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Value (n,), gradient (n, D) and Hessian blocks (n, D, D) of an evaluation, as
        writable float64 copies."""
        n = evaluation.value.shape[0]
        return (
            np.array(evaluation.value, np.float64).reshape(n),
            np.array(evaluation.gradient, np.float64).reshape(n, self.size),
            np.array(evaluation.hessian, np.float64).reshape(n, self.size, self.size),
        )

    def output_selector(self, outputs: Any) -> np.ndarray:
        """One-hot output weights (m, K) picking the outputs numbered ``outputs`` (indices into
        the model's outputs flattened per example, K values)."""
        if self.output_size < 0:
            raise OutputWeightsError(
                f"model {self.model_name!r} has outputs of a size unknown until called; "
                "constraints need outputs of a fixed size",
                field="outputs",
                reason="OUTPUT_INDEX_OUT_OF_RANGE",
            )
        indices = np.asarray(outputs).reshape(-1)
        if indices.size == 0 or not np.issubdtype(indices.dtype, np.integer):
            raise OutputWeightsError(
                f"outputs must be one or more integer indices into the model's {self.output_size} outputs, got {outputs!r}",
                field="outputs",
                reason="OUTPUT_INDEX_OUT_OF_RANGE",
                metadata={"output_size": self.output_size},
            )
        bad = [int(i) for i in indices if not 0 <= i < self.output_size]
        if bad:
            raise OutputWeightsError(
                f"model {self.model_name!r} has {self.output_size} outputs (per example, flattened), "
                f"so it has no output {bad[0]}; outputs must lie in [0, {self.output_size})",
                field="outputs",
                reason="OUTPUT_INDEX_OUT_OF_RANGE",
                metadata={"output_size": self.output_size},
            )
        return np.eye(self.output_size, dtype=self.dtype)[indices]


def refuse_non_finite_input(x: np.ndarray, field: str) -> None:
    """Raise ``InvalidArgumentError`` (``NON_FINITE_INPUT``) if ``x`` holds NaN or infinity."""
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise InvalidArgumentError(
            f"{field} holds {bad} NaN or infinite value(s); start and evaluate the optimizer at finite points",
            field=field,
            reason="NON_FINITE_INPUT",
        )


def refuse_non_finite_result(model: str, arrays: Mapping[str, np.ndarray], where: str) -> None:
    """Stop an optimizer with ``InvalidArgumentError`` (``NON_FINITE_RESULT``) when the
    model's value, gradient or Hessian (``arrays`` by name) is not finite at ``where``."""
    for quantity, array in arrays.items():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise InvalidArgumentError(
                f"model {model!r} gave a non-finite {quantity} ({bad} NaN or infinite value(s)) at {where}, "
                "so the solver cannot go on from there; keep the search where the model is finite: "
                "tighten the bounds, add constraints or start elsewhere",
                reason="NON_FINITE_RESULT",
                metadata={"quantity": quantity},
            )


def _output_size(metadata: ModelMetadata) -> int:
    """K: the values per example of every output together, or -1 if a size is unknown."""
    sizes = [math.prod(info.shape) if None not in info.shape else -1 for info in metadata.outputs]
    return -1 if -1 in sizes else sum(sizes)
