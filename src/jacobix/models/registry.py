"""jacobix's own text models: a character-level Llama, bundled (``shakespeare``) or in a checkpoint folder.

Which names exist is :mod:`jacobix.assets`'s to say (kind ``text``); the one public loader of
every text model, transformers ones included, is :func:`jacobix.load_text_model`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from jacobix import assets
from jacobix.models.llama import Llama, load_llama
from jacobix.models.text import CharTokenizer


@dataclass(frozen=True)
class TextModel:
    """A token model with its tokenizer."""

    name: str
    model: Llama
    tokenizer: CharTokenizer
    eos_token_id: int | None = None


def distilled_teacher(name: str) -> str | None:
    """The teacher of a consistency-distilled text model (None for other models).

    A bundled name answers from :mod:`jacobix.assets`; a checkpoint folder from the ``cllm.teacher``
    or ``jacobi_forcing.teacher`` its ``config.json`` records (the registry test checks that the two
    agree on the bundled ones).
    """
    asset = assets.find(name)
    if asset is not None and asset.kind == "text":
        return asset.teacher
    config = Path(name) / "config.json"
    if not config.is_file():
        return None
    try:
        meta = json.loads(config.read_text())
        teacher = (meta.get("cllm") or meta.get("jacobi_forcing") or {}).get("teacher")
    except (ValueError, AttributeError):
        return None
    return teacher if isinstance(teacher, str) else None


def load_llama_text(name: str) -> TextModel:
    """A jacobix Llama and its character tokenizer: a bundled text model by name, or a checkpoint folder.

    Args:
        name: a bundled ``text`` asset (``"shakespeare"``) or a folder written by
            :func:`jacobix.models.save_llama` with ``{"tokenizer": {"kind": "char", ...}}`` in its config.
    Raises:
        FileNotFoundError: no such name or folder (a missing bundled folder names its rebuild command).
        ValueError: a folder whose config or weights cannot be read, or with no character tokenizer.
    """
    directory = assets.locate(name, kind="text")
    if not (directory / "config.json").exists():
        known = ", ".join(sorted(assets.names("text")))
        hint = assets.rebuild_hint(name, kind="text")
        raise FileNotFoundError(f"no model {name!r}: not a bundled name ({known}) nor a checkpoint folder{hint}")
    try:
        model, meta = load_llama(directory)
    except FileNotFoundError:
        raise
    except Exception as error:  # a damaged config.json or weights file: name the folder and the way out
        raise ValueError(f"cannot load the text model in {directory}: {error} ({type(error).__name__}); the config.json "
                         "or model.safetensors there is damaged or not a jacobix checkpoint: write it again with "
                         "jacobix.models.save_llama or a jacobix trainer") from error
    tokenizer_meta = meta.get("tokenizer", {})
    if tokenizer_meta.get("kind") != "char":
        raise ValueError(f"{directory}/config.json names no character tokenizer; jacobix cannot encode text for it")
    tokenizer = CharTokenizer(tokenizer_meta["alphabet"])
    end = tokenizer_meta.get("end")  # a character that ends a text (the worked-arithmetic model's newline)
    if end is not None and (not isinstance(end, str) or len(end) != 1 or end not in tokenizer.alphabet):
        raise ValueError(f"{directory}/config.json: tokenizer.end must be one character of the alphabet, got {end!r}")
    eos = None if end is None else tokenizer.alphabet.index(end)
    return TextModel(name=name, model=model, tokenizer=tokenizer, eos_token_id=eos)
