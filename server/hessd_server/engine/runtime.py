"""Process-wide TensorFlow settings that second derivatives need."""

from __future__ import annotations

import logging
import threading

import tensorflow as tf

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_configured = False


def configure_tensorflow() -> None:
    """Turn TF32 off (its 10-bit mantissa ruins second derivatives) and enable
    GPU memory growth. Idempotent; called before the first model is loaded."""
    global _configured
    with _lock:
        if _configured:
            return
        tf.config.experimental.enable_tensor_float_32_execution(False)
        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError as err:
                _log.warning("could not enable memory growth on %s: %s", gpu.name, err)
        _configured = True
