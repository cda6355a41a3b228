"""The documentation: every block marked runnable runs, every relative link and anchor resolves,
the command-line page is the parsers' own help, the words are a product's, and the site builds.

A code block is runnable when the line before its opening fence is ``<!-- runnable -->`` (GitHub
and MkDocs both hide the comment). The runnable blocks of one page run in order in one namespace,
so a later block may use what an earlier one defined.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
MARKER = "<!-- runnable -->"


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def runnable_blocks(text: str) -> list[str]:
    """The code of every fenced block whose fence follows the marker line."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip() == MARKER and i + 1 < len(lines) and lines[i + 1].startswith("```"):
            end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
            blocks.append("\n".join(lines[i + 2:end]) + "\n")
            i = end
        i += 1
    return blocks


def test_the_marker_finds_blocks_and_ignores_others():
    text = f"intro\n```python\nskipped()\n```\n{MARKER}\n```python\nx = 1\n```\n{MARKER}\n```python\ny = x\n```\n"
    assert runnable_blocks(text) == ["x = 1\n", "y = x\n"]


@pytest.mark.parametrize("page", [p for p in PAGES if runnable_blocks(p.read_text())], ids=page_id)
def test_runnable_blocks_run(page, capsys):
    blocks = runnable_blocks(page.read_text())
    if any("transformers" in block for block in blocks):
        pytest.importorskip("transformers", reason="this page's examples need jacobix[hf]")
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for number, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"{page_id(page)} runnable block {number}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"{page_id(page)}: runnable block {number} failed: {error!r}\n{block}") from error


# --- links and anchors --------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """A heading's anchor as GitHub and MkDocs (toc's default slugify) both make it, for plain headings."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"[-\s]+", "-", text).strip("-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # a '#' inside code is no heading
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def test_slugs_agree_with_github_and_mkdocs():
    assert slug("Faster policies: consistency distillation and early exit (CEED-VLA)") == \
        "faster-policies-consistency-distillation-and-early-exit-ceed-vla"
    assert slug("SJD2: Jacobi-denoising") == "sjd2-jacobi-denoising"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_and_anchor_resolves(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(f"{target}: no file {path}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading with anchor #{anchor} in {path.name}")
    assert broken == []


def test_the_site_lists_every_page():
    config = (ROOT / "mkdocs.yml").read_text()
    assert [p.name for p in DOCS.glob("*.md") if p.name not in config] == []


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="building the site needs jacobix[docs]")
    pytest.importorskip("material", reason="building the site needs jacobix[docs] (mkdocs-material)")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", **_env()})
    assert done.returncode == 0, done.stdout + done.stderr


def _env() -> dict:
    import os

    return dict(os.environ)


# --- the README ---------------------------------------------------------------------------------

def _bash_lines(text: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return blocks[0].strip().splitlines() if blocks else []


def test_the_readme_is_short_and_its_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert readme.count("\n") <= 300
    setup = _bash_lines(readme)
    assert setup[0] == "pip install torch==2.13.0 -e . && jacobix demo"
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd ", "export "))]
    assert ci[-2:] == [setup[1], "python -m pytest -m slow"]  # the README's line, then the slow tests
    assert _bash_lines((DOCS / "getting-started.md").read_text())[:2] == setup


# --- the command-line page ----------------------------------------------------------------------

def _cli_docs():
    spec = importlib.util.spec_from_file_location("cli_docs", ROOT / "tools" / "cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_command_line_page_is_the_parsers_help():
    assert (DOCS / "cli.md").read_text() == _cli_docs().render(), "docs/cli.md is out of date: run python tools/cli_docs.py"


# --- the words of a product ---------------------------------------------------------------------

PROCESS_WORDS = re.compile(r"\b(issues?|goals?|missed|lent|tasks?|previous release)\b", re.I)
ROBOT_WORDS = re.compile(r"\b(tasks?|goals?)\b", re.I)  # robot control's own vocabulary: MT10 tasks, goal positions
ROBOT_PAGES = ("robot.md",)
ROBOT_COMMANDS = ("jacobix bench policy", "jacobix train policy", "jacobix train ceed")
ROBOT_PHRASES = re.compile(r"\b(?:(?:MT10|robot) tasks?|per[-_ ]task|tasks? x \d+)\b", re.I)  # on the other pages


def process_words(text: str, *, robot: bool = False) -> list[str]:
    """Each process word in the prose (code left out), with its context.

    Args:
        text: Markdown or plain text.
        robot: a robot-control text, where "task" and "goal" are the domain's own words.
    """
    text = re.sub(r"```text\n.*?```", " ", text, flags=re.S)  # the help texts, checked from the parsers
    text = re.sub(r"`[^`\n]*`", " ", text)  # code names (`--episodes-per-task`) are not prose
    text = ROBOT_PHRASES.sub(" ", text)
    found = [m for m in PROCESS_WORDS.finditer(text) if not (robot and ROBOT_WORDS.fullmatch(m.group(0)))]
    return [text[max(0, m.start() - 40):m.end() + 40].replace("\n", " ") for m in found]


def test_the_word_check_catches_process_words_and_spares_robot_vocabulary():
    assert len(process_words("the goal the issue asks for was missed; no GPU was lent to this task")) == 5
    assert len(process_words("the previous release")) == 1
    assert process_words("10 MT10 tasks x 30, `--episodes-per-task`, 100 episodes per task") == []
    assert process_words("the goal position of the task", robot=True) == []
    assert len(process_words("the goal position of the issue", robot=True)) == 1


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_pages_speak_of_the_project_and_its_users(page):
    assert process_words(page.read_text(), robot=page.name in ROBOT_PAGES) == []


def test_help_texts_speak_of_the_project_and_its_users():
    from jacobix.cli.main import parser

    hits = {name: found for name, command in _cli_docs().commands(parser())
            if (found := process_words(command.format_help(), robot=name in ROBOT_COMMANDS))}
    assert hits == {}


def test_public_docstrings_speak_of_the_project_and_its_users():
    import inspect

    import jacobix
    import jacobix.hf

    hits = {}
    for module in (jacobix, jacobix.hf):
        for name in module.__all__:
            obj = getattr(module, name)
            docs = [inspect.getdoc(obj) or ""] + [inspect.getdoc(m) or "" for _, m in inspect.getmembers(obj)
                                                  if inspect.isfunction(m) and not _.startswith("_")] if inspect.isclass(obj) else [inspect.getdoc(obj) or ""]
            if found := process_words("\n".join(docs)):
                hits[name] = found
    assert hits == {}


# --- names the documentation uses ---------------------------------------------------------------

def test_import_jacobix_hf_is_the_adapter():
    import jacobix
    import jacobix.hf
    import jacobix.integrations.hf as adapter

    assert jacobix.hf is sys.modules["jacobix.hf"]
    assert set(jacobix.hf.__all__) == set(adapter.__all__)
    assert all(getattr(jacobix.hf, name) is getattr(adapter, name) for name in adapter.__all__)


def test_the_cli_page_names_every_command():
    from jacobix.cli.main import parser

    page = (DOCS / "cli.md").read_text()
    assert all(f"## {name}\n" in page for name, _ in _cli_docs().commands(parser()))
    assert isinstance(parser(), argparse.ArgumentParser) and shutil.which  # the page is built from this parser
