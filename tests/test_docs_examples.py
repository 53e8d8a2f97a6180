"""The documentation's shell examples and links: README.md and docs/*.md.

Every command line of every ```bash block is checked without running anything: a `python tools/X.py ARGS`
(or `torchrun ... tools/X.py ARGS`) line names an existing tool whose own argument parser accepts ARGS
(parsed in-process); every `configs/`, `tools/`, `scripts/`, `benchmarks/` path it names exists; `bash` and
`source` name existing scripts. A block preceded by `<!-- not-run: REASON -->` (real datasets, GPUs, long
trainings) gets the same checks; `-m slow` runs every other block, page by page and in order, each in a new
shell, in a fresh copy of the checkout, so nothing is written into the tree. Every relative link must point
to an existing file and, for `page.md#anchor`, to a heading of that page.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(\s*)(`{3,})\s*([\w+-]*)\s*$")
NOT_RUN = re.compile(r"^\s*<!--\s*not-run:\s*(\S.*?)\s*-->\s*$")
SHELL_LANGS = ("bash", "sh", "shell")
EXAMPLE_LANGS = (*SHELL_LANGS, "python")
REPO_PATH = re.compile(r"^(configs|tools|scripts|benchmarks)/")
PYTHONS = ("python", "python3", ".venv/bin/python")
SCRIPT_RUNNERS = ("bash", "sh", "source", ".")
OPERATORS = ("&&", "||", ";", "|", "&")
HEREDOC = re.compile(r"<<-?\s*['\"]?([A-Za-z_]\w*)['\"]?")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str  # "bash" (or "sh", "shell") or "python"
    text: str
    not_run: str | None  # the reason given in <!-- not-run: ... -->, or None: the slow test runs it

    @property
    def name(self) -> str:
        return f"{_shown(self.page)}:{self.line}"


def _fenced_spans(lines: list[str]) -> list[tuple[int, int, str, str]]:
    """(opening index, closing index, indent, language) of every fenced code block."""
    spans, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        j = i + 1
        while j < len(lines) and lines[j].strip() != fence:
            j += 1
        spans.append((i, j, indent, lang))
        i = j + 1
    return spans


def _not_run_reason(lines: list[str], fence_index: int) -> str | None:
    """The reason of a `<!-- not-run: ... -->` on the last non-blank line before the fence."""
    k = fence_index - 1
    while k >= 0 and not lines[k].strip():
        k -= 1
    m = NOT_RUN.match(lines[k]) if k >= 0 else None
    return m.group(1) if m else None


def example_blocks(page: Path) -> list[Block]:
    """The ```bash and ```python blocks of a page, in order."""
    lines = page.read_text().splitlines()
    blocks = []
    for start, end, indent, lang in _fenced_spans(lines):
        if lang in EXAMPLE_LANGS:
            body = [ln[len(indent):] if ln.startswith(indent) else ln.lstrip() for ln in lines[start + 1:end]]
            blocks.append(Block(page, start + 1, lang, "\n".join(body), _not_run_reason(lines, start)))
    return blocks


def shell_blocks(page: Path) -> list[Block]:
    return [b for b in example_blocks(page) if b.lang in SHELL_LANGS]


def prose_lines(page: Path) -> list[tuple[int, str]]:
    """(1-based line number, line) of every line outside fenced code blocks."""
    lines = page.read_text().splitlines()
    inside = set()
    for start, end, _, _ in _fenced_spans(lines):
        inside.update(range(start, end + 1))
    return [(i + 1, ln) for i, ln in enumerate(lines) if i not in inside]


def commands(text: str) -> list[list[str]]:
    """The simple commands of a shell block: continuation lines joined, comments dropped, split at
    `&&`, `||`, `;`, `|`, leading `VAR=value` assignments removed."""
    out, heredoc_end = [], None
    for line in text.replace("\\\n", " ").splitlines():
        if heredoc_end is not None:  # the body of `cmd <<'EOF'` is the command's input, not commands
            heredoc_end = None if line.strip() == heredoc_end else heredoc_end
            continue
        m = HEREDOC.search(line)
        heredoc_end = m.group(1) if m else None
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        cmd: list[str] = []
        for token in lexer:
            if token in OPERATORS:
                out.append(cmd)
                cmd = []
            else:
                cmd.append(token)
        out.append(cmd)
    for cmd in out:
        while cmd and ENV_ASSIGNMENT.match(cmd[0]):
            cmd.pop(0)
    return [cmd for cmd in out if cmd]


def tool_call(cmd: list[str]) -> tuple[str, list[str]] | None:
    """("tools/X.py", ARGS) for `python tools/X.py ARGS` or `torchrun [--opt=value ...] tools/X.py ARGS`."""
    if cmd[0] in PYTHONS and len(cmd) > 1 and cmd[1].startswith("tools/"):
        return cmd[1], cmd[2:]
    if cmd[0] == "torchrun":
        for k, token in enumerate(cmd[1:], 1):
            if not token.startswith("-"):  # torchrun's own options are written --key=value
                return token, cmd[k + 1:]
    return None


class _Parsed(Exception):
    """Raised right after a tool's argument parser accepted the arguments (nothing else runs)."""


_TOOLS: dict[str, object] = {}


def _load_tool(tool: str):
    if tool not in _TOOLS:
        spec = importlib.util.spec_from_file_location(f"_docs_tool_{Path(tool).stem}", ROOT / tool)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # defines parse_args / main; `if __name__ == "__main__"` does not fire
        _TOOLS[tool] = module
    return _TOOLS[tool]


@contextlib.contextmanager
def _stop_after_parsing():
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    argparse.ArgumentParser.parse_args = parse_then_stop
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original


def parse_tool_args(tool: str, args: list[str]) -> str | None:
    """None if the tool's argument parser accepts ``args``, else argparse's message.

    A tool with ``parse_args(argv)`` is asked directly (with its own checks after argparse); a tool that
    builds its parser inside ``main(argv)`` is stopped right after parsing.
    """
    module = _load_tool(tool)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if hasattr(module, "parse_args"):
                module.parse_args(list(args))
                return None
            if not hasattr(module, "main"):
                return f"{tool} has neither parse_args(argv) nor main(argv)"
            with _stop_after_parsing():
                module.main(list(args))
            return f"{tool}: main() returned without parsing its arguments"
    except _Parsed:
        return None
    except SystemExit as exit_:
        if exit_.code in (0, None):  # --help
            return None
        return err.getvalue().strip() or f"exit {exit_.code}"


def command_problems(cmd: list[str]) -> list[str]:
    """What is wrong with one documented command, checked without running it."""
    problems = []
    for token in cmd:
        for candidate in (token, token.partition("=")[2]):
            if REPO_PATH.match(candidate) and not (ROOT / candidate).exists():
                problems.append(f"{candidate}: no such file in the repository")
    if cmd[0] in SCRIPT_RUNNERS and (len(cmd) < 2 or not (REPO_PATH.match(cmd[1]) or (ROOT / cmd[1]).is_file())):
        problems.append(f"{shlex.join(cmd[:2])}: no such script")
    call = tool_call(cmd)
    if cmd[0] == "torchrun" and (call is None or not call[0].startswith("tools/")):
        problems.append(f"{shlex.join(cmd)}: torchrun should start a tools/*.py script")
    elif call is not None:
        tool, args = call
        if (ROOT / tool).is_file():  # a missing tool is named by the path check above
            message = parse_tool_args(tool, args)
            if message:
                problems.append(f"{shlex.join([tool, *args])}: {message}")
    return problems


BLOCKS = [block for page in PAGES for block in shell_blocks(page)]


def test_the_pages_have_examples():
    assert (ROOT / "docs").is_dir()
    assert len(BLOCKS) >= 20, [b.name for b in BLOCKS]
    assert any(b.not_run is None for b in BLOCKS) and any(b.not_run for b in BLOCKS)


def test_readme_opens_with_the_two_commands():
    first = shell_blocks(ROOT / "README.md")[0]
    assert commands(first.text) == [["bash", "scripts/demo.sh"], ["bash", "scripts/test.sh"]], first.text


@pytest.mark.parametrize("page", PAGES, ids=_shown)
def test_every_not_run_marker_belongs_to_a_block(page):
    markers = sum(1 for _, line in prose_lines(page) if NOT_RUN.match(line))
    assert markers == sum(1 for b in example_blocks(page) if b.not_run), \
        f"{_shown(page)}: a <!-- not-run: ... --> comment must sit right before a ```bash or ```python block"


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.name)
def test_commands_name_existing_files_and_parse(block):
    problems = [p for cmd in commands(block.text) for p in command_problems(cmd)]
    assert not problems, f"{block.name}:\n" + "\n".join(problems)


def test_python_examples_compile():
    problems = []
    for block in (b for page in PAGES for b in example_blocks(page) if b.lang == "python"):
        try:
            compile(block.text, block.name, "exec")
        except SyntaxError as err:
            problems.append(f"{block.name}: {err}")
    assert not problems, "\n".join(problems)


# --- the checker itself can fail ----------------------------------------------------------------------------------

def test_checker_catches_a_bad_flag_a_missing_config_and_a_missing_tool():
    assert command_problems(["python", "tools/train_cls.py", "configs/cls/synthetic_test.toml"]) == []
    assert command_problems(["python", "tools/eval_det.py", "x.pt", "--fuse"]) == []  # parser built inside main()
    assert "--no-such-flag" in command_problems(
        ["python", "tools/train_cls.py", "configs/cls/synthetic_test.toml", "--no-such-flag"])[0]
    assert "--no-such-flag" in command_problems(["python", "tools/eval_det.py", "x.pt", "--no-such-flag"])[0]
    assert "no such file" in command_problems(["python", "tools/train_cls.py", "configs/cls/nothing.toml"])[0]
    assert command_problems(["python", "tools/nothing.py", "--help"]) == ["tools/nothing.py: no such file in the repository"]
    assert command_problems(["bash", "scripts/nothing.sh"]) == ["scripts/nothing.sh: no such file in the repository"]
    assert command_problems(["source", "nothing.sh"]) == ["source nothing.sh: no such script"]
    assert command_problems(["torchrun", "--nproc_per_node=8", "tools/train_det.py",
                             "configs/det/synthetic_test.toml", "--device", "cuda"]) == []


def test_block_parsing(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n<!-- not-run: needs Cityscapes -->\n```bash\nOMP_NUM_THREADS=1 python tools/a.py \\\n"
                    "    --x 1   # comment\nsource s.sh && python -c \"import a; b\"\n```\n\n1. step\n   ```bash\n"
                    "   bash scripts/b.sh\n   python - <<'EOF'\n   print('it's not a command')\n   EOF\n   ```\n"
                    "```\n# not a heading\n```\n```python\nprint(1)\n```\n")
    assert [(b.lang, b.text) for b in example_blocks(page)][2:] == [("python", "print(1)")]
    blocks = shell_blocks(page)
    assert [(b.line, b.not_run) for b in blocks] == [(4, "needs Cityscapes"), (11, None)]
    assert commands(blocks[0].text) == [["python", "tools/a.py", "--x", "1"], ["source", "s.sh"],
                                        ["python", "-c", "import a; b"]]
    assert commands(blocks[1].text) == [["bash", "scripts/b.sh"], ["python", "-", "<<", "EOF"]]
    prose = [line for _, line in prose_lines(page)]
    assert "# not a heading" not in prose and "   bash scripts/b.sh" not in prose and "1. step" in prose


# --- links -------------------------------------------------------------------------------------------------------

def github_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the headings of a page (lower case, punctuation dropped, spaces to '-')."""
    anchors, seen = set(), {}
    for _, line in prose_lines(page):
        m = HEADING.match(line)
        if not m:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(2)).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def link_problems(page: Path) -> list[str]:
    problems = []
    for number, line in prose_lines(page):
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            path_part, _, anchor = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            where = f"{_shown(page)}:{number}: {target}"
            if not dest.exists():
                problems.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in github_anchors(dest):
                problems.append(f"{where}: no heading with anchor #{anchor}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=_shown)
def test_relative_links_resolve(page):
    problems = link_problems(page)
    assert not problems, "\n".join(problems)


def test_link_checker_catches_a_missing_file_and_anchor(tmp_path):
    (tmp_path / "b.md").write_text("# Title\n\n## The main job's run: `x.py`\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#the-main-jobs-run-xpy) [ok](b.md) [web](https://example.com/x)\n"
                    "[bad](c.md) [bad](b.md#nothing) ![bad](img/none.png)\n```\n[code](not/checked.md)\n```\n")
    problems = link_problems(page)
    assert len(problems) == 3 and all(":2:" in p for p in problems), problems


# --- the slow run ----------------------------------------------------------------------------------------------------

def _copy_checkout(dest: Path) -> None:
    """The files git would commit (tracked and new, not ignored), without data, runs or the environment."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".git", ".venv", "data", "work_dirs", "runs",
                                                                  "__pycache__", "*.onnx"))
        return
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _env_sh_would_pick_this_environment() -> bool:
    """scripts/env.sh links the cached environment it builds; only run it when that is the one running us
    (otherwise it would build a new multi-GB environment)."""
    return (Path(sys.prefix) / ".complete").is_file()


RUN_PAGES = [page for page in PAGES if any(b.not_run is None for b in example_blocks(page))]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUN_PAGES, ids=_shown)
def test_examples_run_as_written(page, tmp_path):
    checkout = tmp_path / "checkout"
    _copy_checkout(checkout)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1"}
    for block in example_blocks(page):
        if block.not_run:
            continue
        if "scripts/env.sh" in block.text and not _env_sh_would_pick_this_environment():
            warnings.warn(f"{block.name} not run: scripts/env.sh would build another environment than this one")
            continue
        argv = ["python", "-c", block.text] if block.lang == "python" else \
            ["bash", "-c", "set -eo pipefail\n" + block.text]
        result = subprocess.run(argv, cwd=checkout, env=env, capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, (f"{block.name} failed (exit {result.returncode}):\n{block.text}\n"
                                        f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}")
