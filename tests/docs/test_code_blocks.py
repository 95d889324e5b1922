"""Every Python block of the README and the docs pages runs as written, and every
``hessd-server`` and ``hessd`` command line of a shell block parses.

The blocks of one page run in order, in one namespace and one fresh working folder, as a
reader would paste them. An HTML comment right before a block (invisible on GitHub and on
the site) says what the block needs:

- ``<!-- docs-test: server FLAGS -->``: a ``hessd-server`` started with FLAGS (parsed by its
  own parser) in the page's folder, on 127.0.0.1:0 instead of its default address; the
  block's ``127.0.0.1:50051`` is replaced by the address it got. Shell blocks marked so
  run too (bash, ``set -e``, the venv's scripts and ``python`` first on ``PATH``), with
  ``HESSD_TARGET`` pointing the ``hessd`` command line at that server.
- ``<!-- docs-test: skip (WHY) -->``: the block needs what a test machine lacks (a cluster,
  certificates); WHY must name it.
- ``<!-- docs-test: json MESSAGE -->``: a JSON block that is a request body; it must decode
  as the named ``hessd.v1`` message with protobuf's ``json_format.Parse``.

Unmarked and skipped shell blocks (``make``, ``pip``, ``docker``, clusters) are not run, but
each of their command lines that runs ``hessd-server`` or ``hessd`` (after variable
assignments, in pipelines and lists, or as the arguments after the hessd image in
``docker run``, appended to ``deploy/Dockerfile``'s entry point) is parsed by that program's
own parser, so a renamed or removed flag fails here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import Message
from markdown_it import MarkdownIt

from hessd import cli, tensor_codec
from hessd_server.serving.main import parse_config
from support.wire_fixtures import RunningServer

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
DOCUMENTED_TARGET = "127.0.0.1:50051"
DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(?P<kind>server|skip|json)\b(?P<rest>.*?)-->", re.S)
ANY_DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(?P<kind>[\w-]*)")
RUN_LANGUAGES = {"python", "sh"}
SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}
SHELL_OPERATOR = re.compile(r"[;&|()]+")
REDIRECTION = re.compile(r"[<>]+&?")
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*")
COMMAND_PREFIXES = {"exec", "nohup", "sudo", "time"}
HESSD_PROGRAMS = {"hessd-server", "hessd"}
HESSD_IMAGE = re.compile(r"(?:[\w.-]+(?::\d+)?/)*hessd:[\w.-]+")
DOCKERFILE = REPO / "deploy" / "Dockerfile"
PROTO_FILES = sorted((REPO / "proto" / "hessd" / "v1").glob("*.proto"))
TENSOR_MESSAGE = "hessd.v1.Tensor"


@dataclass(frozen=True)
class CodeBlock:
    """One fenced block of a page and the directive before it, if any."""

    language: str
    code: str
    line: int
    directive: str | None
    argument: str


def code_blocks(text: str) -> list[CodeBlock]:
    """The page's fenced blocks in order, each with the ``docs-test`` comment right before it."""
    blocks = []
    previous = None
    for token in MarkdownIt("commonmark").parse(text):
        if token.type == "fence":
            found = DIRECTIVE.search(previous.content) if previous and previous.type == "html_block" else None
            blocks.append(
                CodeBlock(
                    language=token.info.strip().split(" ")[0],
                    code=token.content,
                    line=token.map[0] + 1 if token.map else 0,
                    directive=found["kind"] if found else None,
                    argument=found["rest"].strip() if found else "",
                )
            )
        if token.type in ("fence", "html_block", "paragraph_open", "heading_open", "bullet_list_open", "table_open"):
            previous = token
    return blocks


def _runnable(block: CodeBlock) -> bool:
    if block.directive == "skip":
        return False
    return block.language == "python" or (block.language == "sh" and block.directive == "server")


class Servers:
    """The servers a page's blocks asked for, one per set of flags, started on first use."""

    def __init__(self) -> None:
        self._running: dict[str, RunningServer] = {}

    def target(self, flags: str) -> str:
        if flags not in self._running:
            config = parse_config(shlex.split(flags))
            config = dataclasses.replace(config, listen=("127.0.0.1:0",), warmup_batch_sizes=(1,))
            server = RunningServer(config)
            self._running[flags] = server
            server.wait_until_serving()
        return self._running[flags].target

    def stop(self) -> None:
        for server in self._running.values():
            server.stop()


@contextlib.contextmanager
def _servers() -> Iterator[Servers]:
    servers = Servers()
    try:
        yield servers
    finally:
        servers.stop()


def _run_shell(code: str, target: str, folder: Path) -> None:
    scripts = str(Path(sys.executable).parent)
    environment = {**os.environ, "HESSD_TARGET": target, "PATH": f"{scripts}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-e", "-c", code], cwd=folder, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stdout}\n{result.stderr}"


def _page_id(page: Path) -> str:
    return str(page.relative_to(REPO))


def shell_commands(code: str) -> list[list[str]]:
    """The simple commands of a shell block, each as its words: continued lines joined,
    comments dropped, lists, pipelines and substitutions split apart, and each command's
    leading variable assignments and prefixes (``exec``, ``sudo``, ...) and its
    redirections left out."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for word in [*lexer, ";"]:
            if SHELL_OPERATOR.fullmatch(word):
                if words:
                    commands.append(_without_prefixes_and_redirections(words))
                words = []
            else:
                words.append(word)
    return [command for command in commands if command]


def _without_prefixes_and_redirections(words: list[str]) -> list[str]:
    while words and (ASSIGNMENT.fullmatch(words[0]) or words[0] in COMMAND_PREFIXES):
        words = words[1:]
    kept: list[str] = []
    target_follows = False
    for word in words:
        if target_follows:
            target_follows = False
        elif REDIRECTION.fullmatch(word):
            target_follows = True
        else:
            kept.append(word)
    return kept


def _image_entry_point() -> list[str]:
    """The hessd image's ``ENTRYPOINT`` (exec form) from ``deploy/Dockerfile``."""
    line = next(line for line in DOCKERFILE.read_text().splitlines() if line.startswith("ENTRYPOINT "))
    return json.loads(line.removeprefix("ENTRYPOINT "))


def hessd_invocation(words: list[str]) -> tuple[str, list[str]] | None:
    """``(program, arguments)`` when the command runs ``hessd-server`` or ``hessd``: directly,
    or as the hessd image of ``docker run``, whose arguments follow its entry point."""
    if words[0] in HESSD_PROGRAMS:
        return words[0], words[1:]
    if words[:2] == ["docker", "run"]:
        image = next((index for index, word in enumerate(words) if HESSD_IMAGE.fullmatch(word)), None)
        if image is not None:
            program, *arguments = _image_entry_point()
            return program, [*arguments, *words[image + 1 :]]
    return None


def parser_complaint(program: str, arguments: list[str]) -> str | None:
    """What ``program``'s own argument parser says against ``arguments`` (``hessd-server``'s
    ``parse_config``, the ``hessd`` command line's parser); None when it accepts them."""
    parse = parse_config if program == "hessd-server" else cli._parser().parse_args
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
            parse(arguments)
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            return said.getvalue().strip() or f"exit status {exit_.code}"
    return None


def wire_tensors(message: Message, path: str = "") -> Iterator[tuple[str, Message]]:
    """Every ``hessd.v1.Tensor`` inside ``message``, with its field path (``x[x]``, ``v``)."""
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        name = f"{path}{field.name}"
        if field.message_type.GetOptions().map_entry:
            items = [(f"{name}[{key}]", item) for key, item in value.items() if isinstance(item, Message)]
        elif hasattr(value, "add"):
            items = [(f"{name}[{index}]", item) for index, item in enumerate(value)]
        else:
            items = [(name, value)]
        for item_path, item in items:
            if item.DESCRIPTOR.full_name == TENSOR_MESSAGE:
                yield item_path, item
            else:
                yield from wire_tensors(item, f"{item_path}.")


def _message_class(full_name: str) -> type[Message]:
    """The generated class of the ``hessd.v1`` message ``full_name``."""
    for proto in PROTO_FILES:
        importlib.import_module(f"hessd.v1.{proto.stem}_pb2")
    return message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(full_name))


def test_every_skip_says_why_and_every_directive_is_known() -> None:
    for page in PAGES:
        text = page.read_text()
        unknown = [m["kind"] for m in ANY_DIRECTIVE.finditer(text) if m["kind"] not in ("server", "skip", "json")]
        assert unknown == [], f"{_page_id(page)}: unknown docs-test directives"
        for block in code_blocks(text):
            if block.directive == "skip":
                assert re.fullmatch(r"\(.+\)", block.argument), f"{_page_id(page)}:{block.line}: skip needs (why)"
            if block.directive == "json":
                assert block.language == "json", f"{_page_id(page)}:{block.line}: a json directive before a {block.language} block"


def test_shell_commands_are_split_as_the_shell_splits_them() -> None:
    code = (
        "OTEL_SERVICE_NAME=hessd hessd-server --trace \\\n    --model m=m.keras   # a comment\n"
        "kill -HUP \"$(pidof hessd-server)\"; hessd models | sort > models.txt && exec hessd metadata demo\n"
        "docker run --rm -v \"$PWD/models:/models:ro\" registry.example.com/hessd:0.1.0-gpu --metrics-port 9090\n"
    )
    commands = shell_commands(code)
    assert commands == [
        ["hessd-server", "--trace", "--model", "m=m.keras"],
        ["kill", "-HUP", "$(pidof hessd-server)"],
        ["hessd", "models"],
        ["sort"],
        ["hessd", "metadata", "demo"],
        ["docker", "run", "--rm", "-v", "$PWD/models:/models:ro", "registry.example.com/hessd:0.1.0-gpu", "--metrics-port", "9090"],
    ]
    invocations = [hessd_invocation(command) for command in commands]
    assert [None if found is None else found[0] for found in invocations] == [
        "hessd-server", None, "hessd", None, "hessd", "hessd-server",
    ]
    assert invocations[-1] == ("hessd-server", [*_image_entry_point()[1:], "--metrics-port", "9090"])


def test_a_renamed_or_removed_flag_is_refused_by_the_parsers() -> None:
    assert parser_complaint("hessd-server", ["--model", "m=m.keras", "--warmup-batch-sizes", "1,8"]) is None
    assert parser_complaint("hessd", ["hessian", "demo", "--input", "x.npy", "--out", "h.npy"]) is None
    assert parser_complaint("hessd-server", ["--version"]) is None
    assert "--batch-sizes" in parser_complaint("hessd-server", ["--batch-sizes", "1"])
    assert "--result" in parser_complaint("hessd", ["hessian", "demo", "--input", "x.npy", "--result", "h.npy"])
    assert "hessians" in parser_complaint("hessd", ["hessians", "demo"])


def test_every_hessd_command_line_of_a_shell_block_parses() -> None:
    checked: dict[str, int] = {"hessd-server": 0, "hessd": 0}
    failures = []
    for page in PAGES:
        for block in code_blocks(page.read_text()):
            if block.language not in SHELL_LANGUAGES:
                continue
            for words in shell_commands(block.code):
                invocation = hessd_invocation(words)
                if invocation is None:
                    continue
                checked[invocation[0]] += 1
                complaint = parser_complaint(*invocation)
                if complaint is not None:
                    failures.append(f"{_page_id(page)}:{block.line}: {shlex.join(words)}\n  {complaint}")
    assert checked["hessd-server"] >= 5 and checked["hessd"] >= 5, checked
    assert failures == [], "\n".join(failures)


def test_every_json_request_body_decodes_as_its_message() -> None:
    bodies = [(page, block) for page in PAGES for block in code_blocks(page.read_text()) if block.directive == "json"]
    assert bodies
    for page, block in bodies:
        message = _message_class(block.argument)()
        try:
            json_format.Parse(block.code, message)
        except json_format.ParseError as error:
            pytest.fail(f"{_page_id(page)}:{block.line}: not a {block.argument}: {error}")
        assert message.ByteSize() > 0, f"{_page_id(page)}:{block.line}: an empty {block.argument}"
        for field, tensor in wire_tensors(message):
            tensor_codec.decode(tensor, field=field)  # its bytes must match its dtype and shape


@pytest.mark.parametrize("page", [p for p in PAGES if any(_runnable(b) for b in code_blocks(p.read_text()))], ids=_page_id)
def test_the_page_s_code_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    with _servers() as servers:
        for block in code_blocks(page.read_text()):
            if not _runnable(block):
                continue
            where = f"{_page_id(page)}:{block.line}"
            target = servers.target(block.argument) if block.directive == "server" else DOCUMENTED_TARGET
            code = block.code.replace(DOCUMENTED_TARGET, target)
            if block.language == "sh":
                _run_shell(code, target, tmp_path)
                continue
            exec(compile(code, where, "exec"), namespace)  # noqa: S102 - the docs' own examples


def test_the_readme_names_every_page_whose_python_blocks_are_skipped() -> None:
    readme = (REPO / "README.md").read_text()
    paragraph = next(part for part in readme.split("\n\n") if "runs every Python block" in part)
    named = set(re.findall(r"\]\((docs/[^)#]+)\)", paragraph))
    skipped = {
        _page_id(page)
        for page in PAGES
        for block in code_blocks(page.read_text())
        if block.language == "python" and block.directive == "skip"
    }
    assert skipped, "no skipped Python block: say so in the README"
    assert named == skipped, "the README's list of pages with skipped Python blocks is out of date"
