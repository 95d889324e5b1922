"""The SDK stays thin: importing it never loads TensorFlow, ml_dtypes is optional, and the
optimizers' extras (scipy, casadi) load only when a function that needs them runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_importing_the_sdk_and_cli_never_imports_tensorflow_or_matplotlib() -> None:
    result = _run(
        """
        import sys
        import hessd, hessd.cli, hessd.status_codes, hessd.tensor_codec, hessd.chunks
        heavy = sorted(
            m for m in ("tensorflow", "keras", "hessd_server", "matplotlib") if m in sys.modules
        )
        print(heavy)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_importing_the_optimizers_never_imports_scipy_casadi_or_tensorflow() -> None:
    result = _run(
        """
        import sys
        import hessd, hessd.optimize
        from hessd.optimize import Constraint, Objective, casadi_function, minimize_batch
        heavy = sorted(m for m in ("scipy", "casadi", "tensorflow", "keras", "hessd_server") if m in sys.modules)
        print(heavy, "hessd.optimize" in sys.modules)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] True"


def test_importing_the_sdk_does_not_import_the_optimizers() -> None:
    result = _run(
        """
        import sys
        import hessd
        print("hessd.optimize" in sys.modules)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_sdk_works_without_ml_dtypes() -> None:
    result = _run(
        """
        import sys
        sys.modules["ml_dtypes"] = None  # makes "import ml_dtypes" fail
        import numpy as np
        from hessd import errors, tensor_codec
        from hessd.v1.tensor_pb2 import DataType, Tensor
        x = np.ones((2, 3), np.float16)
        assert np.array_equal(tensor_codec.decode(tensor_codec.encode(x, field="x"), field="x"), x)
        bfloat16 = Tensor(dtype=DataType.DATA_TYPE_BFLOAT16, shape=[1], data=b"\\0\\0")
        try:
            tensor_codec.decode(bfloat16, field="hessian")
        except errors.TensorEncodingError as error:
            print("refused:", "ml_dtypes" in error.message)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "refused: True"


def test_public_names_are_explicit() -> None:
    import hessd
    from hessd import errors

    curvature = {"Diagonal", "Trace", "Eigen", "Spectrum"}
    assert {"Client", "AsyncClient", "Evaluation", *curvature, *errors.__all__} <= set(hessd.__all__)
    assert all(hasattr(hessd, name) for name in hessd.__all__)
