"""The ``jacobix`` command: generate, generate-batch, bench, demo and train.

One module per command; the decoding and sampling flags are derived from the specs' fields
(:mod:`jacobix.cli.flags`). Every argument is checked before any work starts; a bad one ends
with exit status 2 and a message that names the argument and the fix.
"""

from jacobix.cli.main import main, parser

__all__ = ["main", "parser"]
