"""The README's examples, run as a user would run them (after Polygraphy's test_examples.py).

Every ```bash and ```python block of README.md runs, in README order, in one temporary folder
where ``models`` links to the repository's ``models/`` and ``.venv`` to the virtual environment,
with the environment's ``bin`` first on PATH (so both ``onnx2burst`` and ``.venv/bin/onnx2burst``
work). Bash blocks run under ``bash -euo pipefail``, Python blocks with this interpreter; each
must exit 0. A block whose last non-blank line before the fence is

    <!-- readme-test: skip (REASON) -->

is reported as skipped with REASON. Later blocks read files that earlier ones wrote (``out/``),
so run the module whole: ``pytest tests/test_readme.py``.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 300
RUNNABLE = ("bash", "python")
TIMEOUT_S = 600
SHOWN_OUTPUT = 8000  # characters of a failing block's output shown in the report

_FENCE = re.compile(r"^```\s*(?P<lang>[\w+-]*)\s*$")
_SKIP = re.compile(r"^<!--\s*readme-test:\s*skip\s*\((?P<reason>.+)\)\s*-->$")


@dataclass(frozen=True)
class Block:
    """One fenced code block: its language, the README line of its opening fence, its code,
    and the reason it is skipped (None: it runs)."""

    lang: str
    line: int
    code: str
    skip: str | None

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.lang}"


def parse(text: str) -> tuple[list[Block], list[int]]:
    """Every fenced block of ``text`` in order, and the lines of skip markers that no fenced
    block follows (a marker that skips nothing is a mistake). Raises ValueError on an
    unclosed fence."""
    lines = text.splitlines()
    blocks, markers, used = [], {}, set()
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if _SKIP.match(stripped):
            markers[i] = _SKIP.match(stripped)["reason"].strip()
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"README.md:{i + 1}: code block is never closed")
        prev = i - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        skip = markers.get(prev)
        if skip is not None:
            used.add(prev)
        blocks.append(Block(m["lang"], i + 1, "\n".join(lines[i + 1:end]) + "\n", skip))
        i = end + 1
    return blocks, [k + 1 for k in markers if k not in used]


def _runnable() -> list[Block]:
    try:
        return [b for b in parse(README.read_text(encoding="utf-8"))[0] if b.lang in RUNNABLE]
    except (OSError, ValueError):
        return []  # test_readme_parses reports why


BLOCKS = _runnable()


def test_readme_is_short_and_names_the_two_commands():
    text = README.read_text(encoding="utf-8")
    n = len(text.splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines; at most {MAX_LINES}"
    for command in ("make demo", "make test"):
        assert command in text, f"README.md does not name `{command}`"


def test_readme_parses():
    blocks, stray = parse(README.read_text(encoding="utf-8"))
    assert not stray, f"skip marker(s) on README.md line(s) {stray} are not followed by a code block"
    running = {b.lang for b in blocks if b.lang in RUNNABLE and b.skip is None}
    assert running == set(RUNNABLE), f"README.md should have bash and python examples that run, has {running}"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """The folder the blocks run in, their environment, and the blocks that failed so far."""
    folder = tmp_path_factory.mktemp("readme")
    (folder / "models").symlink_to(ROOT / "models", target_is_directory=True)
    venv = ROOT / ".venv" if (ROOT / ".venv").is_dir() else Path(sys.prefix)
    (folder / ".venv").symlink_to(venv, target_is_directory=True)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("MPLBACKEND", "Agg")
    env.setdefault("OMP_NUM_THREADS", "1")  # torch's threads stall each other on a small shared machine
    return {"folder": folder, "env": env, "failed": []}


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block(block: Block, sandbox):
    if block.skip is not None:
        pytest.skip(block.skip)
    folder, env = sandbox["folder"], sandbox["env"]
    script = folder / f"readme_{block.id.lower().replace('-', '_')}.{'sh' if block.lang == 'bash' else 'py'}"
    script.write_text(block.code, encoding="utf-8")
    argv = ["bash", "-euo", "pipefail", script.name] if block.lang == "bash" else [sys.executable, script.name]
    try:
        proc = subprocess.run(argv, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=TIMEOUT_S)
        rc, output = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        rc, output = f"timeout after {TIMEOUT_S} s", out
    if rc == 0:
        return
    earlier = sandbox["failed"][:]
    sandbox["failed"].append(block.id)
    if len(output) > SHOWN_OUTPUT:
        output = "[...]\n" + output[-SHOWN_OUTPUT:]
    note = f" (earlier blocks failed too: {', '.join(earlier)})" if earlier else ""
    pytest.fail(f"README.md line {block.line}: the {block.lang} block exited with {rc}{note}\n"
                f"--- block ---\n{block.code}--- output ---\n{output}", pytrace=False)
