"""``hessd``: the command line client.

Examples::

    hessd models
    hessd models --versions                               # model, version, state[, error]
    hessd metadata demo
    hessd server-version                                  # the release the server runs
    hessd --version                                       # this SDK's release
    hessd hessian demo --input x.npy --out h.npy          # (B, *S, *S)
    hessd gradient demo --input x.npy --out g.npy         # (B, *S)
    hessd hvp demo --input x.npy --vector v.npy --out hv.npy
    hessd evaluate demo --input x.npy --out e.npz         # arrays value, gradient, hessian
    hessd hessian demo --input x.npy --plot h.png         # heatmap of the first example's block
    hessd hessian pricing --input x.npz --wrt spot vol    # (B, N, N) over spot and vol together
    hessd diagonal demo --input x.npy --method hutchinson --probes 100 --seed 0
    hessd trace demo --input x.npy                        # the Laplacian, (B,), and its stderr
    hessd eigen demo --input x.npy --k 3 --which largest --out e.npz
    hessd spectrum demo --input x.npy --probes 8 --iterations 32 --plot spectrum.png

``diagonal``, ``trace``, ``eigen`` and ``spectrum`` save their result's arrays
(e.g. ``trace`` and ``stderr``) in one ``.npz``. ``--plot`` needs matplotlib
(``pip install 'hessd[plot]'``), which is imported only then.

``--input`` takes a ``.npy`` array for a single-input model or a ``.npz`` of arrays
named after the model's inputs. Without ``--out`` the result is printed.
The server address comes from ``--target``, else ``$HESSD_TARGET``, else
``127.0.0.1:50051``. ``--ca``, ``--cert`` and ``--key`` (or ``--tls`` alone, for
the system's roots) call over TLS; ``--token-file`` sends the bearer token its
first line holds. These connection flags go before or after the subcommand.
``--model-version`` picks a version (default: the newest AVAILABLE one).
Exit status: 0 on success, 1 when the call fails, 2 for a usage error (a bad
flag, or a file that ``--input``, ``--vector`` or ``--output-weights`` names
that cannot be read).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hessd import curvature_options
from hessd._protocol import Inputs
from hessd._sync.client import Client
from hessd._version import __version__
from hessd.errors import HessdError

DEFAULT_TARGET = "127.0.0.1:50051"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``hessd`` command; returns the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        client = _client(args)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    try:
        with client:
            args.run(client, args)
    except UnreadableFileError as error:
        print(f"hessd: error: {error}", file=sys.stderr)
        return 2
    except HessdError as error:
        print(f"hessd: {type(error).__name__}: {error.message}", file=sys.stderr)
        return 1
    except ImportError as error:
        print(
            f"hessd: --plot needs matplotlib ({error}); pip install 'hessd[plot]'", file=sys.stderr
        )
        return 1
    return 0


def _client(args: argparse.Namespace) -> Client:
    """The client the connection flags ask for."""
    token = None
    if args.token_file is not None:
        lines = [line.strip() for line in args.token_file.read_text().splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"{args.token_file} holds no token")
        token = lines[0]
    settings = {"timeout": args.timeout, "token": token}
    if args.tls or args.ca or args.cert or args.key:
        return Client.secure(args.target, ca=args.ca, cert=args.cert, key=args.key, **settings)
    return Client(args.target, **settings)


def _add_connection_flags(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The flags that say how to reach the server. The main parser holds their
    defaults; each subcommand takes them too (``defaults=False``: a flag not given
    after the subcommand leaves the main parser's value alone)."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--target",
        default=default(os.environ.get("HESSD_TARGET", DEFAULT_TARGET)),
        help="server address, host:port or unix:///path "
        f"(default: $HESSD_TARGET or {DEFAULT_TARGET})",
    )
    parser.add_argument("--timeout", type=float, default=default(None), help="seconds per call")
    parser.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help="call over TLS (implied by --ca/--cert)",
    )
    parser.add_argument(
        "--ca", default=default(None), help="PEM of the CA to trust (default: the system's roots)"
    )
    parser.add_argument(
        "--cert", default=default(None), help="PEM client certificate for mTLS, with --key"
    )
    parser.add_argument("--key", default=default(None), help="PEM private key of --cert")
    parser.add_argument(
        "--token-file",
        type=Path,
        default=default(None),
        help="file whose first line is the bearer token",
    )


def _add_model_version(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--model-version",
        help="the model version to call, e.g. 2 (default: the newest AVAILABLE one)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hessd", description="Call a hessd server.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_connection_flags(parser, defaults=True)
    connection = argparse.ArgumentParser(add_help=False)
    _add_connection_flags(connection, defaults=False)
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="list the served models", parents=[connection])
    models.add_argument(
        "--versions",
        action="store_true",
        help=(
            "a tab-separated line per version: model, version, state (LOADING, AVAILABLE, "
            "FAILED, UNLOADING) and its error; and per model folder problem: model, -, "
            "FOLDER_ERROR or LAYOUT_ERROR, what is wrong"
        ),
    )
    models.set_defaults(run=_models)
    metadata = commands.add_parser(
        "metadata", help="show a model's metadata as JSON", parents=[connection]
    )
    metadata.add_argument("model")
    _add_model_version(metadata)
    metadata.set_defaults(run=_metadata)
    server_version = commands.add_parser(
        "server-version", help="show the hessd release the server runs", parents=[connection]
    )
    server_version.set_defaults(run=_server_version)
    health = commands.add_parser(
        "health", help="show the server's health status", parents=[connection]
    )
    health.add_argument("--service", default="", help="service name; empty for the server")
    health.set_defaults(run=_health)

    for name, run, help_text in (
        ("hessian", _hessian, "Hessian, (B, *S, *S) or with --full (B, *S, B, *S)"),
        ("gradient", _gradient, "gradient, (B, *S)"),
        ("hvp", _hvp, "Hessian-vector product, (B, *S)"),
        ("evaluate", _evaluate, "value, gradient and Hessian, saved as one .npz"),
    ):
        command = commands.add_parser(name, help=help_text, parents=[connection])
        command.add_argument("model")
        _add_model_version(command)
        command.add_argument(
            "--input", required=True, type=Path, help="x as .npy, or .npz by input name"
        )
        command.add_argument("--out", type=Path, help="file to save the result to")
        command.add_argument(
            "--wrt",
            nargs="+",
            help="input(s) to differentiate (multi-input models); several names: "
            "together, over their concatenation",
        )
        command.add_argument("--output-weights", type=Path, help=".npy of shape (K,) or (B, K)")
        command.add_argument("--precision", choices=("float32", "float64"))
        if name in ("hessian", "evaluate"):
            command.add_argument("--full", action="store_true", help="full (B, *S, B, *S) Hessian")
        if name == "hvp":
            command.add_argument(
                "--vector",
                required=True,
                type=Path,
                help="v as .npy, (B, *S); for several --wrt inputs (B, N), or .npz by input name",
            )
        if name == "hessian":
            _add_plot(command, "a heatmap of example 0's Hessian block (or the full Hessian)")
        command.set_defaults(run=run)
    _add_curvature_commands(commands, connection)
    return parser


def _add_curvature_commands(
    commands: argparse._SubParsersAction, connection: argparse.ArgumentParser
) -> None:
    for name, run, help_text in (
        ("diagonal", _diagonal, "diagonal of each example's Hessian block and its stderr, (B, *S)"),
        ("trace", _trace, "trace (Laplacian) of each example's Hessian block and its stderr, (B,)"),
        ("eigen", _eigen, "k eigenvalues (B, k), eigenvectors (B, k, *S) and residuals (B, k)"),
        ("spectrum", _spectrum, "spectral density nodes and weights, (B, probes, iterations)"),
    ):
        command = commands.add_parser(name, help=help_text, parents=[connection])
        command.add_argument("model")
        _add_model_version(command)
        command.add_argument(
            "--input", required=True, type=Path, help="x as .npy, or .npz by input name"
        )
        command.add_argument("--out", type=Path, help=".npz to save the result's arrays to")
        command.add_argument(
            "--wrt",
            nargs="+",
            help="input(s) to differentiate (multi-input models); several names: "
            "together, over their concatenation",
        )
        command.add_argument("--output-weights", type=Path, help=".npy of shape (K,) or (B, K)")
        command.add_argument("--precision", choices=("float32", "float64"))
        command.add_argument("--seed", type=int, help="seed for reproducible randomness")
        if name == "diagonal":
            command.add_argument(
                "--method", default="auto", choices=curvature_options.DIAGONAL_METHODS
            )
        if name == "trace":
            command.add_argument(
                "--method", default="auto", choices=curvature_options.TRACE_METHODS
            )
        if name in ("diagonal", "trace"):
            command.add_argument("--probes", type=int, default=curvature_options.DEFAULT_PROBES)
        if name == "eigen":
            command.add_argument("--k", type=int, default=1, help="eigenpairs per example")
            command.add_argument("--which", default="largest", choices=curvature_options.WHICH)
            command.add_argument(
                "--method", default="auto", choices=curvature_options.EIGEN_METHODS
            )
            command.add_argument("--iterations", type=int, help="Lanczos's Krylov dimension")
            command.add_argument("--tol", type=float, default=curvature_options.DEFAULT_TOL)
        if name == "spectrum":
            command.add_argument(
                "--probes", type=int, default=curvature_options.DEFAULT_SPECTRUM_PROBES
            )
            command.add_argument(
                "--iterations", type=int, default=curvature_options.DEFAULT_SPECTRUM_ITERATIONS
            )
            _add_plot(command, "the smoothed spectral density of each example")
        command.set_defaults(run=run)


def _add_plot(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument(
        "--plot", type=Path, help=f"PNG file to draw {what} in (needs matplotlib)"
    )


def _models(client: Client, args: argparse.Namespace) -> None:
    if not args.versions:
        for name in client.models():
            print(name)
        return
    for status in client.model_status():
        if status.error is not None:
            print("\t".join((status.name, "-", "FOLDER_ERROR", _one_line(status.error))))
        for layout_error in status.layout_errors:
            print("\t".join((status.name, "-", "LAYOUT_ERROR", _one_line(layout_error))))
        for version in status.versions:
            error = () if version.error is None else (_one_line(version.error),)
            print("\t".join((status.name, version.version, version.state, *error)))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _metadata(client: Client, args: argparse.Namespace) -> None:
    metadata = client.metadata(args.model, model_version=args.model_version)
    print(json.dumps(dataclasses.asdict(metadata), indent=2))


def _server_version(client: Client, args: argparse.Namespace) -> None:
    print(client.server_version())


def _health(client: Client, args: argparse.Namespace) -> None:
    print(client.health(args.service))


def _hessian(client: Client, args: argparse.Namespace) -> None:
    result = client.hessian(args.model, _load_x(args.input), full=args.full, **_options(args))
    if args.plot is not None:
        from hessd import plots

        plots.hessian_heatmap(result, args.plot, full=args.full)
    if args.out is not None or args.plot is None:
        _emit(args.out, result)


def _diagonal(client: Client, args: argparse.Namespace) -> None:
    options = {"method": args.method, "probes": args.probes, "seed": args.seed}
    result = client.hessian_diagonal(args.model, _load_x(args.input), **options, **_options(args))
    _emit_all(args.out, result)


def _trace(client: Client, args: argparse.Namespace) -> None:
    options = {"method": args.method, "probes": args.probes, "seed": args.seed}
    result = client.hessian_trace(args.model, _load_x(args.input), **options, **_options(args))
    _emit_all(args.out, result)


def _eigen(client: Client, args: argparse.Namespace) -> None:
    options = {
        "k": args.k,
        "which": args.which,
        "method": args.method,
        "iterations": args.iterations,
        "tol": args.tol,
        "seed": args.seed,
    }
    result = client.hessian_eigen(args.model, _load_x(args.input), **options, **_options(args))
    _emit_all(args.out, result)


def _spectrum(client: Client, args: argparse.Namespace) -> None:
    options = {"probes": args.probes, "iterations": args.iterations, "seed": args.seed}
    spectrum = client.hessian_spectrum(args.model, _load_x(args.input), **options, **_options(args))
    if args.plot is not None:
        from hessd import plots

        plots.spectral_density(spectrum, args.plot)
    if args.out is not None or args.plot is None:
        _emit_all(args.out, spectrum)


def _gradient(client: Client, args: argparse.Namespace) -> None:
    _emit(args.out, client.gradient(args.model, _load_x(args.input), **_options(args)))


def _hvp(client: Client, args: argparse.Namespace) -> None:
    v = _load(args.vector, "--vector")
    _emit(args.out, client.hvp(args.model, _load_x(args.input), v, **_options(args)))


def _evaluate(client: Client, args: argparse.Namespace) -> None:
    evaluation = client.evaluate(args.model, _load_x(args.input), full=args.full, **_options(args))
    _emit_all(args.out, evaluation)


def _emit_all(out: Path | None, result: tuple[np.ndarray, ...]) -> None:
    """Print every array of a named-tuple result, or save them all in one ``.npz``."""
    arrays = result._asdict()  # type: ignore[attr-defined]
    if out is None:
        for name, array in arrays.items():
            print(f"{name}:")
            _emit(None, array)
    else:
        np.savez(out, **arrays)


def _options(args: argparse.Namespace) -> dict[str, object]:
    weights = None if args.output_weights is None else _load_array(args.output_weights, "--output-weights")
    return {
        "output_weights": weights,
        "wrt": args.wrt,
        "precision": args.precision,
        "model_version": args.model_version,
    }


class UnreadableFileError(Exception):
    """A file a flag names cannot be read as numpy arrays; the message says which and why."""


def _load(path: Path, flag: str) -> np.ndarray | dict[str, np.ndarray]:
    """The array of a ``.npy`` file, or the arrays of a ``.npz`` by name."""
    try:
        loaded = np.load(path)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                return {name: loaded[name] for name in loaded.files}
        return loaded
    except OSError as error:
        raise UnreadableFileError(f"cannot read {flag} {path}: {error.strerror or error}") from error
    except (ValueError, EOFError, zipfile.BadZipFile) as error:
        raise UnreadableFileError(
            f"cannot read {flag} {path} as a .npy or .npz file: {error}"
        ) from error


def _load_array(path: Path, flag: str) -> np.ndarray:
    loaded = _load(path, flag)
    if isinstance(loaded, dict):
        raise UnreadableFileError(f"{flag} {path} must be a .npy array, not a .npz of several")
    return loaded


def _load_x(path: Path) -> Inputs:
    return _load(path, "--input")


def _emit(out: Path | None, array: np.ndarray) -> None:
    if out is None:
        print(f"shape={array.shape} dtype={array.dtype}")
        print(np.array2string(array, threshold=200))
    else:
        np.save(out, array)


if __name__ == "__main__":
    sys.exit(main())
