"""``hessd``: the command line client.

Examples::

    hessd models
    hessd metadata demo
    hessd hessian demo --input x.npy --out h.npy          # (B, *S, *S)
    hessd gradient demo --input x.npy --out g.npy         # (B, *S)
    hessd hvp demo --input x.npy --vector v.npy --out hv.npy
    hessd evaluate demo --input x.npy --out e.npz         # arrays value, gradient, hessian

``--input`` takes a ``.npy`` array for a single-input model or a ``.npz`` of arrays
named after the model's inputs. Without ``--out`` the result is printed.
The server address comes from ``--target``, else ``$HESSD_TARGET``, else
``127.0.0.1:50051``. ``--ca``, ``--cert`` and ``--key`` (or ``--tls`` alone, for
the system's roots) call over TLS; ``--token-file`` sends the bearer token its
first line holds. Exit status: 0 on success, 1 when the call fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hessd._client import Client
from hessd._protocol import Inputs
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
    except HessdError as error:
        print(f"hessd: {type(error).__name__}: {error.message}", file=sys.stderr)
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hessd", description="Call a hessd server.")
    parser.add_argument(
        "--target",
        default=os.environ.get("HESSD_TARGET", DEFAULT_TARGET),
        help="server address, host:port or unix:///path (default: $HESSD_TARGET or %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds per call")
    parser.add_argument("--tls", action="store_true", help="call over TLS (implied by --ca/--cert)")
    parser.add_argument("--ca", help="PEM of the CA to trust (default: the system's roots)")
    parser.add_argument("--cert", help="PEM client certificate for mTLS, with --key")
    parser.add_argument("--key", help="PEM private key of --cert")
    parser.add_argument("--token-file", type=Path, help="file whose first line is the bearer token")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("models", help="list the served models").set_defaults(run=_models)
    metadata = commands.add_parser("metadata", help="show a model's metadata as JSON")
    metadata.add_argument("model")
    metadata.set_defaults(run=_metadata)
    health = commands.add_parser("health", help="show the server's health status")
    health.add_argument("--service", default="", help="service name; empty for the server")
    health.set_defaults(run=_health)

    for name, run, help_text in (
        ("hessian", _hessian, "Hessian, (B, *S, *S) or with --full (B, *S, B, *S)"),
        ("gradient", _gradient, "gradient, (B, *S)"),
        ("hvp", _hvp, "Hessian-vector product, (B, *S)"),
        ("evaluate", _evaluate, "value, gradient and Hessian, saved as one .npz"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("model")
        command.add_argument(
            "--input", required=True, type=Path, help="x as .npy, or .npz by input name"
        )
        command.add_argument("--out", type=Path, help="file to save the result to")
        command.add_argument("--wrt", help="input to differentiate (multi-input models)")
        command.add_argument("--output-weights", type=Path, help=".npy of shape (K,) or (B, K)")
        command.add_argument("--precision", choices=("float32", "float64"))
        if name in ("hessian", "evaluate"):
            command.add_argument("--full", action="store_true", help="full (B, *S, B, *S) Hessian")
        if name == "hvp":
            command.add_argument("--vector", required=True, type=Path, help="v as .npy, (B, *S)")
        command.set_defaults(run=run)
    return parser


def _models(client: Client, args: argparse.Namespace) -> None:
    for name in client.models():
        print(name)


def _metadata(client: Client, args: argparse.Namespace) -> None:
    print(json.dumps(dataclasses.asdict(client.metadata(args.model)), indent=2))


def _health(client: Client, args: argparse.Namespace) -> None:
    print(client.health(args.service))


def _hessian(client: Client, args: argparse.Namespace) -> None:
    result = client.hessian(args.model, _load_x(args.input), full=args.full, **_options(args))
    _emit(args.out, result)


def _gradient(client: Client, args: argparse.Namespace) -> None:
    _emit(args.out, client.gradient(args.model, _load_x(args.input), **_options(args)))


def _hvp(client: Client, args: argparse.Namespace) -> None:
    v = np.load(args.vector)
    _emit(args.out, client.hvp(args.model, _load_x(args.input), v, **_options(args)))


def _evaluate(client: Client, args: argparse.Namespace) -> None:
    evaluation = client.evaluate(args.model, _load_x(args.input), full=args.full, **_options(args))
    if args.out is None:
        for name, array in evaluation._asdict().items():
            print(f"{name}:")
            _emit(None, array)
    else:
        np.savez(args.out, **evaluation._asdict())


def _options(args: argparse.Namespace) -> dict[str, object]:
    weights = None if args.output_weights is None else np.load(args.output_weights)
    return {"output_weights": weights, "wrt": args.wrt, "precision": args.precision}


def _load_x(path: Path) -> Inputs:
    loaded = np.load(path)
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    return loaded


def _emit(out: Path | None, array: np.ndarray) -> None:
    if out is None:
        print(f"shape={array.shape} dtype={array.dtype}")
        print(np.array2string(array, threshold=200))
    else:
        np.save(out, array)


if __name__ == "__main__":
    sys.exit(main())
