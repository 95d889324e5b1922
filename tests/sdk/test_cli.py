"""The ``hessd`` command line client against a real server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

import hessd_server as hs
from hessd import cli
from support.wire_fixtures import SHARED_MODELS, RunningServer, console_script, rng_array


@pytest.fixture(scope="module")
def server(models_server: RunningServer) -> RunningServer:
    return models_server


def _run(server: RunningServer, *args: str) -> int:
    return cli.main(["--target", server.target, *args])


def test_console_script_lists_models(server: RunningServer) -> None:
    result = subprocess.run(
        [console_script("hessd"), "--target", server.target, "models"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == sorted(name for name, _ in SHARED_MODELS)


def test_models_with_versions_lists_each_versions_state(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(server, "models", "--versions") == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert lines == [[name, "1", "AVAILABLE"] for name, _ in sorted(SHARED_MODELS)]


def test_metadata_is_json(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(server, "metadata", "demo") == 0
    metadata = json.loads(capsys.readouterr().out)
    assert metadata["name"] == "demo" and metadata["inputs"][0]["shape"] == [10]
    assert metadata["batch_independent"] is True


def test_health(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(server, "health") == 0
    assert capsys.readouterr().out.strip() == "SERVING"


def test_hessian_gradient_hvp_evaluate_to_files(server: RunningServer, tmp_path: Path) -> None:
    x = rng_array((3, 10))
    v = rng_array((3, 10), seed=1)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "v.npy", v)
    model = server.model("demo")
    inputs = ["--input", str(tmp_path / "x.npy")]
    assert _run(server, "hessian", "demo", *inputs, "--out", str(tmp_path / "h.npy")) == 0
    assert np.array_equal(np.load(tmp_path / "h.npy"), hs.hessian(model, x))
    assert (
        _run(
            server,
            "hessian",
            "demo",
            *inputs,
            "--full",
            "--precision",
            "float64",
            "--out",
            str(tmp_path / "hf.npy"),
        )
        == 0
    )
    assert np.array_equal(
        np.load(tmp_path / "hf.npy"), hs.hessian(model, x, full=True, precision="float64")
    )
    assert _run(server, "gradient", "demo", *inputs, "--out", str(tmp_path / "g.npy")) == 0
    assert np.array_equal(np.load(tmp_path / "g.npy"), hs.gradient(model, x))
    assert (
        _run(
            server,
            "hvp",
            "demo",
            *inputs,
            "--vector",
            str(tmp_path / "v.npy"),
            "--out",
            str(tmp_path / "hv.npy"),
        )
        == 0
    )
    assert np.array_equal(np.load(tmp_path / "hv.npy"), hs.hvp(model, x, v))
    assert _run(server, "evaluate", "demo", *inputs, "--out", str(tmp_path / "e.npz")) == 0
    with np.load(tmp_path / "e.npz") as saved:
        for name, array in hs.evaluate(model, x)._asdict().items():
            assert np.array_equal(saved[name], array)


def test_multi_input_from_npz_with_output_weights(server: RunningServer, tmp_path: Path) -> None:
    x = {
        "a": rng_array((2, 3)),
        "b": rng_array((2, 2, 2)),
        "ids": np.array([[0, 1], [2, 3]], np.int32),
    }
    np.savez(tmp_path / "x.npz", **x)
    np.save(tmp_path / "w.npy", np.array([1.0, -1.0], np.float32))
    assert (
        _run(
            server,
            "hessian",
            "multi",
            "--input",
            str(tmp_path / "x.npz"),
            "--wrt",
            "a",
            "--output-weights",
            str(tmp_path / "w.npy"),
            "--out",
            str(tmp_path / "h.npy"),
        )
        == 0
    )
    expected = hs.hessian(
        server.model("multi"), x, wrt="a", output_weights=np.array([1.0, -1.0], np.float32)
    )
    assert np.array_equal(np.load(tmp_path / "h.npy"), expected)


def test_printed_result_without_out(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "x.npy", rng_array((1, 10)))
    assert _run(server, "gradient", "demo", "--input", str(tmp_path / "x.npy")) == 0
    assert "shape=(1, 10) dtype=float32" in capsys.readouterr().out


def test_errors_exit_1_with_the_exception_name(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "x.npy", rng_array((1, 10)))
    assert _run(server, "hessian", "nope", "--input", str(tmp_path / "x.npy")) == 1
    assert "ModelNotFoundError" in capsys.readouterr().err


def test_curvature_commands_save_what_the_library_returns(server: RunningServer, tmp_path: Path) -> None:
    x = rng_array((3, 10))
    np.save(tmp_path / "x.npy", x)
    model = server.model("demo")
    inputs = ["--input", str(tmp_path / "x.npy")]
    commands = {
        "diagonal": (["--method", "hutchinson", "--probes", "5", "--seed", "1"],
                     hs.hessian_diagonal(model, x, method="hutchinson", probes=5, seed=1)),
        "trace": (["--seed", "2"], hs.hessian_trace(model, x, seed=2)),
        "eigen": (["--k", "2", "--which", "smallest", "--method", "lanczos", "--seed", "3"],
                  hs.hessian_eigen(model, x, k=2, which="smallest", method="lanczos", seed=3)),
        "spectrum": (["--probes", "2", "--iterations", "4", "--seed", "4"],
                     hs.hessian_spectrum(model, x, probes=2, iterations=4, seed=4)),
    }
    for name, (options, expected) in commands.items():
        out = tmp_path / f"{name}.npz"
        assert _run(server, name, "demo", *inputs, *options, "--out", str(out)) == 0, name
        with np.load(out) as saved:
            assert sorted(saved.files) == sorted(expected._fields), name
            for field, array in expected._asdict().items():
                assert np.array_equal(saved[field], array), f"{name}.{field}"


def test_trace_prints_the_laplacian_and_its_stderr(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "x.npy", rng_array((2, 10)))
    assert _run(server, "trace", "demo", "--input", str(tmp_path / "x.npy"), "--method", "exact") == 0
    printed = capsys.readouterr().out
    assert "trace:" in printed and "stderr:" in printed and "shape=(2,) dtype=float32" in printed


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plots_are_png_files(server: RunningServer, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", rng_array((2, 10)))
    inputs = ["--input", str(tmp_path / "x.npy")]
    spectrum, heatmap, full = tmp_path / "s.png", tmp_path / "h.png", tmp_path / "f.png"
    assert _run(server, "spectrum", "demo", *inputs, "--seed", "0", "--plot", str(spectrum)) == 0
    assert _run(server, "hessian", "demo", *inputs, "--plot", str(heatmap)) == 0
    assert _run(server, "hessian", "demo", *inputs, "--full", "--plot", str(full)) == 0
    for path in (spectrum, heatmap, full):
        assert path.read_bytes().startswith(PNG_SIGNATURE) and path.stat().st_size > 5_000


def test_bad_curvature_option_exits_1_naming_the_field(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "x.npy", rng_array((1, 10)))
    assert _run(server, "eigen", "demo", "--input", str(tmp_path / "x.npy"), "--k", "11") == 1
    assert "k must be <= D = 10" in capsys.readouterr().err


def test_connection_flags_may_follow_the_subcommand(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["models", "--target", server.target, "--timeout", "60"]) == 0
    assert capsys.readouterr().out.split() == sorted(name for name, _ in SHARED_MODELS)
    unreachable = "127.0.0.1:1"
    assert cli.main(["--target", unreachable, "health", "--target", server.target]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"


def test_model_version_picks_the_version_of_every_model_command(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = rng_array((2, 10))
    np.save(tmp_path / "x.npy", x)
    inputs = ["--input", str(tmp_path / "x.npy")]
    out = ["--out", str(tmp_path / "h.npy")]
    assert _run(server, "hessian", "demo", *inputs, *out, "--model-version", "1") == 0
    assert np.array_equal(np.load(tmp_path / "h.npy"), hs.hessian(server.model("demo"), x))
    assert _run(server, "metadata", "demo", "--model-version", "1") == 0
    assert json.loads(capsys.readouterr().out)["name"] == "demo"
    commands = [
        ["hessian", *inputs],
        ["gradient", *inputs],
        ["hvp", *inputs, "--vector", str(tmp_path / "x.npy")],
        ["evaluate", *inputs],
        ["diagonal", *inputs],
        ["trace", *inputs],
        ["eigen", *inputs],
        ["spectrum", *inputs],
    ]
    for command in [*commands, ["metadata"]]:
        name, *flags = command
        assert _run(server, name, "demo", *flags, "--model-version", "2") == 1, name
        error = capsys.readouterr().err
        assert "ModelNotFoundError" in error and "AVAILABLE versions: ['1']" in error, name


@pytest.mark.parametrize("flag", ["--input", "--vector", "--output-weights"])
def test_an_unreadable_file_is_one_line_and_exit_status_2(
    server: RunningServer, tmp_path: Path, flag: str
) -> None:
    np.save(tmp_path / "x.npy", rng_array((1, 10)))
    (tmp_path / "text.npy").write_text("not an array")
    files = {"--input": str(tmp_path / "x.npy"), "--vector": str(tmp_path / "x.npy")}
    for bad, why in ((tmp_path / "missing.npy", "No such file or directory"), (tmp_path / "text.npy", "")):
        arguments = [*(a for name, path in {**files, flag: str(bad)}.items() for a in (name, path))]
        result = subprocess.run(
            [console_script("hessd"), "--target", server.target, "hvp", "demo", *arguments],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"hessd: error: cannot read {flag} {bad}"), result.stderr
        assert why in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
