"""Write docs/cli.md from the command line's own parsers, so the page never differs from ``--help``.

Run from the repository root after changing a command or a flag:

    python tools/cli_docs.py            # rewrites docs/cli.md
    python tools/cli_docs.py --check    # exit 1 if docs/cli.md is out of date

``tests/test_docs.py`` fails when the committed page differs from what this writes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "cli.md"
WIDTH = "100"  # argparse wraps help at $COLUMNS; fixed so the page is the same on every machine

INTRO = """# The command line

This page is generated from the parsers of `jacobix` by `python tools/cli_docs.py`; it is exactly
what `jacobix COMMAND --help` prints. The decoding and sampling flags of `generate` and
`generate-batch` are derived from the fields of `jacobix.Decoding` and `jacobix.SamplingConfig`
(see [Text](text.md#the-decoding-spec)).

Every argument is checked before any work starts, and a bad one ends with exit status 2 and a
message that names the argument and the fix: values out of range (`--threads -1`,
`--batch-size 0`, `--window abc`), an unknown model (the message lists the bundled ones), a
damaged checkpoint folder, a `--window` or `--max-new-tokens` beyond the model's context, a
device that is not there (`--device foo`, `--device cuda` without CUDA), an `--out` or `--json`
folder that cannot be written. An option that would be ignored is refused rather than dropped:
`--lookahead`, `--window` or `--init` with `--method ar`, `--temperature` with `--method jacobi`,
`--top-k`/`--top-p` without sampling, and the bench options that do not apply to the chosen
target. `bench --quick` shrinks what you did not set: explicit `--seeds` and `--max-new-tokens`
still apply.
"""


def commands(parser: argparse.ArgumentParser, name: str = "jacobix"):
    """(name, parser) for the root and every subcommand, depth first, in the order they were added."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from commands(sub, f"{name} {sub_name}")


def render() -> str:
    """The page: the intro, then each command's help in a text block."""
    sys.path.insert(0, str(ROOT / "src"))
    from jacobix.cli.main import parser

    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        sections = [INTRO]
        for name, command in commands(parser()):
            sections.append(f"## {name}\n\n```text\n{command.format_help().rstrip()}\n```\n")
    finally:
        if before is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = before
    import jacobix

    # Defaults that are folders of the installed package read the same from any checkout.
    return "\n".join(sections).replace(str(Path(jacobix.__file__).resolve().parent), "<jacobix>")


def main() -> int:
    check = "--check" in sys.argv[1:]
    text = render()
    if check:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{PAGE.relative_to(ROOT)} is out of date: run python tools/cli_docs.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
