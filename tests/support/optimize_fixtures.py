"""Where the optimizer tests reach their models: the served names and factories, and
:class:`Where`, a test's way to a model over the wire or in-process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import hessd

MODELS = {
    "bowl": "support.optimize_models:bowl_model",
    "ball": "support.optimize_models:constrained_model",
    "log": "support.optimize_models:log_model",
    "rosenbrock": "support.optimize_models:rosenbrock_model",
    "multi": "support.wire_fixtures:multi_input_model",
}


@dataclass(frozen=True)
class Where:
    """How a test reaches a model: over the wire (a client and a name) or in-process."""

    kind: str
    client: hessd.Client | None
    models: dict[str, Any]

    def source(self, name: str) -> tuple[Any, str | None]:
        """``(source, model)`` arguments of the optimizers for model ``name``."""
        if self.client is not None:
            return self.client, name
        return self.models[name], None
