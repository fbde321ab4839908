"""Every code block in docs/*.md runs as shown (the conventions are in docs/README.md).

Fences say what they are: ```python blocks run in order in one namespace per document (a fresh
module named `__main__`); an ```output block right after a python block lists lines its stdout
must contain; ```console / ```sh blocks hold `$ command` lines run by bash (venv `bin` first on
PATH, `set -o pipefail`) that must exit 0, and the other lines of the block are output the
command must print. Expected output matches line by line, in order, with lines left out allowed;
`...` inside a line matches anything. ```text, ```kir, ```diff, ```json, ```c and ```cpp are for
reading only. A block whose first line is `# file: PATH` or `// file: PATH` must equal that file.

Each document runs in its own subprocess (`python tests/test_docs.py DOC WORKDIR`), so what one
registers (passes, ops, targets) never leaks into another or into the test process. The working
directory is a fresh temporary folder with a `docs` link to the real docs/, so documents name
`docs/examples/...` as a user in the repository root would. HOME points to a per-session folder:
build caches land there, not in the user's home. The `// RUN:` lines of docs/examples/*.kir run
from the repository root, as tests/test_filecheck.py runs tests/filecheck.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import traceback
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
BIN = Path(sys.executable).parent
RUNNABLE = ("python", "output", "console", "sh")
READ_ONLY = ("text", "kir", "diff", "json", "c", "cpp")
PRELUDE = "set -o pipefail\n"
FENCE = re.compile(r"^(\s*)(`{3,})\s*([\w+-]*)\s*$")
FILE_MARK = re.compile(r"^(?:#|//) file: (\S+)\s*$")


class DocError(Exception):
    """A document whose blocks are malformed or fail; the message names file and line."""


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, the line of its first content line, its text."""

    lang: str
    line: int
    text: str


def parse_blocks(text: str, name: str) -> list[Block]:
    """The fenced blocks of a markdown text; an unmarked or unknown fence is an error."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, ticks, lang = match.groups()
        if lang not in RUNNABLE + READ_ONLY:
            known = ", ".join(RUNNABLE + READ_ONLY)
            raise DocError(f"{name}:{i + 1}: fence language {lang or '(none)'!r} is not one of "
                           f"{known}: mark blocks that do not run as ```text")
        body, j = [], i + 1
        while j < len(lines) and not _closes(lines[j], ticks):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
            j += 1
        if j == len(lines):
            raise DocError(f"{name}:{i + 1}: the ``` fence is never closed")
        blocks.append(Block(lang, i + 2, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def _closes(line: str, ticks: str) -> bool:
    stripped = line.strip()
    return len(stripped) >= len(ticks) and set(stripped) == {"`"}


# -- output matching ---------------------------------------------------------------------------
def _pattern(expected: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in expected.split("...")))


def missing_lines(expected: str, output: str) -> list[str]:
    """Expected lines not found in `output`, in order (empty when all are there).

    Each non-blank expected line other than a bare `...` must match a later output line than
    the previous one did (trailing blanks ignored, `...` a wildcard inside a line)."""
    got = [line.rstrip() for line in output.splitlines()]
    at, missing = 0, []
    for want in (w.rstrip() for w in expected.splitlines()):
        if not want.strip() or want.strip() == "...":
            continue
        pattern = _pattern(want)
        hit = next((k for k in range(at, len(got)) if pattern.fullmatch(got[k])), None)
        if hit is None:
            missing.append(want)
        else:
            at = hit + 1
    return missing


# -- shell blocks ------------------------------------------------------------------------------
def shell_steps(block: Block, name: str = "") -> list[tuple[str, str]]:
    """(command, expected output) pairs of a console/sh block; `\\` continues a command."""
    steps: list[list[str]] = []
    continued = False
    for line in block.text.splitlines():
        if continued or line.startswith("$ "):
            if continued:
                steps[-1][0] += "\n" + line
            else:
                steps.append([line[2:], ""])
            continued = line.endswith("\\")
        elif steps:
            steps[-1][1] += line + "\n"
        elif line.strip():
            raise DocError(f"{name}:{block.line}: output before the first `$ ` command")
    if not steps:
        raise DocError(f"{name}:{block.line}: a {block.lang} block without a `$ ` command "
                       "(mark it ```text if it is not meant to run)")
    return [(command, expected) for command, expected in steps]


def shell_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def run_shell(block: Block, name: str, cwd: Path) -> None:
    for command, expected in shell_steps(block, name):
        done = subprocess.run(["bash", "-c", PRELUDE + command], capture_output=True, text=True,
                              env=shell_env(), cwd=cwd, timeout=300, check=False)
        where = f"{name}:{block.line}: $ {command}"
        if done.returncode != 0:
            raise DocError(f"{where}\nexit {done.returncode}\n--- stdout ---\n{done.stdout}"
                           f"--- stderr ---\n{done.stderr}")
        missing = missing_lines(expected, done.stdout + done.stderr)
        if missing:
            raise DocError(f"{where}\nexpected output not found: {missing}\n--- stdout ---\n"
                           f"{done.stdout}--- stderr ---\n{done.stderr}")


# -- python blocks -----------------------------------------------------------------------------
class _Tee(io.StringIO):
    """Collects what a block prints and still shows it."""

    def __init__(self, echo: TextIO) -> None:
        super().__init__()
        self.echo = echo

    def write(self, text: str) -> int:
        self.echo.write(text)
        return super().write(text)


def run_python(block: Block, name: str, namespace: dict[str, object]) -> str:
    """Run one python block in the document's namespace; return what it printed."""
    code = compile("\n" * (block.line - 1) + block.text, name, "exec")
    tee = _Tee(sys.stdout)
    try:
        with contextlib.redirect_stdout(tee):
            exec(code, namespace)
    except Exception:
        raise DocError(f"{name}:{block.line}: python block failed\n"
                       f"{traceback.format_exc()}") from None
    return tee.getvalue()


def check_file_copy(block: Block, name: str) -> None:
    """A block that starts with `# file: PATH` must be that file, byte for byte."""
    first = block.text.splitlines()[0] if block.text.strip() else ""
    match = FILE_MARK.match(first)
    if match is None:
        return
    path = ROOT / match.group(1)
    if not path.is_file() or path.read_text(encoding="utf-8") != block.text:
        raise DocError(f"{name}:{block.line}: this block must be a copy of {match.group(1)}, "
                       "and it differs (or the file is missing)")


def run_document(path: Path, workdir: Path) -> None:
    """Run every block of `path` in order in `workdir` (raises `DocError` on the first failure)."""
    run_text(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)), workdir)


def run_text(text: str, name: str, workdir: Path) -> None:
    """Run the blocks of markdown `text` (called `name` in messages) in `workdir`, in a fresh
    `__main__` module and with `workdir` as the current directory; both are restored after."""
    module = types.ModuleType("__main__")
    saved_main, saved_cwd = sys.modules.get("__main__"), Path.cwd()
    sys.modules["__main__"] = module
    os.chdir(workdir)
    try:
        printed: tuple[int, str] | None = None  # (line, stdout) of the python block just run
        for block in parse_blocks(text, name):
            check_file_copy(block, name)
            if block.lang == "output":
                _check_printed(block, name, printed)
            elif block.lang in ("console", "sh"):
                run_shell(block, name, workdir)
            if block.lang == "python":
                printed = (block.line, run_python(block, name, module.__dict__))
            else:
                printed = None
    finally:
        os.chdir(saved_cwd)
        if saved_main is not None:
            sys.modules["__main__"] = saved_main


def _check_printed(block: Block, name: str, printed: tuple[int, str] | None) -> None:
    if printed is None:
        raise DocError(f"{name}:{block.line}: an output block must follow a python block")
    missing = missing_lines(block.text, printed[1])
    if missing:
        raise DocError(f"{name}:{block.line}: the python block at line {printed[0]} did not "
                       f"print {missing}\n--- it printed ---\n{printed[1]}")


def run_lines(path: Path) -> list[str]:
    """The commands of a .kir file's `// RUN:` lines, continuation lines joined."""
    commands, pending = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text.startswith("// RUN:"):
            continue
        part = text.removeprefix("// RUN:").strip()
        if part.endswith("\\"):
            pending += part[:-1] + " "
            continue
        commands.append(pending + part)
        pending = ""
    return commands


def main(argv: list[str]) -> int:
    """`python tests/test_docs.py DOC.md WORKDIR`: run one document (what the tests call)."""
    sys.path[0] = argv[1]  # as for a user's script in that folder, not tests/
    try:
        run_document(Path(argv[0]).resolve(), Path(argv[1]))
    except DocError as exc:
        sys.stdout.flush()
        sys.stderr.write(f"\n{exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


# -- the tests ---------------------------------------------------------------------------------
import pytest  # noqa: E402 - the document runner above must not need pytest

DOC_FILES = sorted(DOCS.glob("*.md"))
KIR_CASES = [pytest.param(path, command, id=f"{path.name}:{i + 1}")
             for path in sorted(EXAMPLES.glob("*.kir"))
             for i, command in enumerate(run_lines(path))]


@pytest.fixture(scope="session")
def doc_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One HOME for every document: kiln's build cache (~/.cache/kiln) is shared by them."""
    return tmp_path_factory.mktemp("home")


@pytest.mark.parametrize("path", DOC_FILES, ids=[p.name for p in DOC_FILES])
def test_document_runs(path: Path, tmp_path: Path, doc_home: Path) -> None:
    (tmp_path / "docs").symlink_to(DOCS, target_is_directory=True)
    env = {**shell_env(), "HOME": str(doc_home), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(path),
                           str(tmp_path)], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=600, check=False)
    assert done.returncode == 0, (f"{path.name} failed\n--- stderr ---\n{done.stderr[-6000:]}"
                                  f"\n--- stdout (tail) ---\n{done.stdout[-3000:]}")


@pytest.mark.parametrize(("path", "command"), KIR_CASES)
def test_example_filecheck(path: Path, command: str) -> None:
    for tool in ("kiln-opt", "filecheck"):
        assert (BIN / tool).exists(), f"{BIN / tool} is missing: run `pip install -e .[dev]`"
    script = PRELUDE + command.replace("%s", shlex.quote(str(path.relative_to(ROOT))))
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                          env=shell_env(), cwd=ROOT, timeout=120, check=False)
    assert done.returncode == 0, (f"RUN: {command}\nexit {done.returncode}\n"
                                  f"--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}")


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.kir")), ids=lambda p: p.name)
def test_example_kir_round_trips(path: Path) -> None:
    from kiln.ir.parser import parse

    text = parse(path.read_text(encoding="utf-8")).to_text()
    assert parse(text).to_text() == text


def test_every_fence_is_marked_and_every_copy_matches() -> None:
    for path in DOC_FILES:
        name = str(path.relative_to(ROOT))
        for block in parse_blocks(path.read_text(encoding="utf-8"), name):
            check_file_copy(block, name)


def test_the_index_links_every_document() -> None:
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    links = set(re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", index))
    for path in DOC_FILES:
        if path.name != "README.md":
            assert path.name in links, f"docs/README.md does not link {path.name}"
    for path in DOC_FILES:  # and every relative link of every document resolves
        for target in re.findall(r"\]\(([^)#\s:]+)(?:#[^)]*)?\)", path.read_text()):
            assert (path.parent / target).exists(), f"{path.name} links missing {target}"


# -- the runner catches what it should ---------------------------------------------------------
def test_output_matching() -> None:
    out = "a\nloss 0.123\nb\nc\n"
    assert missing_lines("a\n...\nc\n", out) == []
    assert missing_lines("loss 0...\nc\n", out) == []
    assert missing_lines("c\na\n", out) == ["a"]  # order matters
    assert missing_lines("loss 1...\n", out) == ["loss 1..."]


def test_malformed_blocks_are_errors() -> None:
    with pytest.raises(DocError, match="fence language '\\(none\\)'"):
        parse_blocks("```\nx\n```\n", "d.md")
    with pytest.raises(DocError, match="never closed"):
        parse_blocks("```python\nx = 1\n", "d.md")
    (block,) = parse_blocks("````text\n```python\n```\n````\n", "d.md")
    assert block.lang == "text" and "```python" in block.text
    with pytest.raises(DocError, match="output before the first"):
        shell_steps(Block("sh", 1, "ls\n"))
    with pytest.raises(DocError, match="without a `\\$ ` command"):
        shell_steps(Block("sh", 1, "\n"))
    assert shell_steps(Block("console", 1, "$ echo a \\\n  b\na b\n$ true\n")) == [
        ("echo a \\\n  b", "a b\n"), ("true", "")]


def test_failures_are_reported(tmp_path: Path) -> None:
    cases = {
        "```python\nprint('hi')\n```\n```output\nbye\n```\n": "did not print \\['bye'\\]",
        "```python\nx = 1\n```\n\n```python\nassert x == 2\n```\n": "d.md:6: python block",
        "```console\n$ echo one\ntwo\n```\n": "expected output not found: \\['two'\\]",
        "```sh\n$ false\n```\n": "exit 1",
        "```text\nx\n```\n```output\nx\n```\n": "must follow a python block",
    }
    for text, message in cases.items():
        with pytest.raises(DocError, match=message):
            run_text(text, "d.md", tmp_path)
    run_text("```python\nprint('hi')\n```\n```output\nhi\n```\n", "d.md", tmp_path)
