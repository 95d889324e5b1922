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


def set_thread_pools(intra_op: int, inter_op: int) -> tuple[int, int]:
    """Size TensorFlow's thread pools before it runs anything, and return the sizes in force.

    ``intra_op`` threads share one operation (the XLA-compiled functions
    included); ``inter_op`` threads run independent operations at once; 0
    leaves TensorFlow's choice (one per core). One thread per operation costs
    less CPU per small call, since a multi-threaded operation's workers spin
    briefly after their share, but a large batch then runs on one core.

    Raises:
        RuntimeError: TensorFlow has started already with other sizes.
    """
    threads = tf.config.threading
    pools = (
        ("intra-op", intra_op, threads.get_intra_op_parallelism_threads, threads.set_intra_op_parallelism_threads),
        ("inter-op", inter_op, threads.get_inter_op_parallelism_threads, threads.set_inter_op_parallelism_threads),
    )
    for name, wanted, current, change in pools:
        if wanted and current() != wanted:
            try:
                change(wanted)
            except RuntimeError as err:
                raise RuntimeError(
                    f"TensorFlow's {name} threads can only be set before it runs anything, and it has "
                    f"started with {current()} (0: one per core); set them when the process starts"
                ) from err
    return threads.get_intra_op_parallelism_threads(), threads.get_inter_op_parallelism_threads()
