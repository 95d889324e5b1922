"""Every Python block of the README and the docs pages runs as written.

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

Unmarked shell blocks (``make``, ``pip``, ``docker``) are not run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from hessd_server.serving.main import parse_config
from support.wire_fixtures import RunningServer

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
DOCUMENTED_TARGET = "127.0.0.1:50051"
DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(?P<kind>server|skip)\b(?P<rest>.*?)-->", re.S)
RUN_LANGUAGES = {"python", "sh"}


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


def test_every_skip_says_why_and_every_directive_is_known() -> None:
    for page in PAGES:
        for block in code_blocks(page.read_text()):
            if block.directive == "skip":
                assert re.fullmatch(r"\(.+\)", block.argument), f"{_page_id(page)}:{block.line}: skip needs (why)"


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
