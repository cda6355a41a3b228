"""Hugging Face model folders (``config.json`` + safetensors): load offline, save a fine-tuned model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from jacobix.core.checkpoints import is_transformers_folder as is_hf_folder
from jacobix.integrations.hf._deps import require_transformers


def load_hf_folder(directory: str | Path, *, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """The causal LM (eval mode) and tokenizer saved in ``directory``, read offline without running its code."""
    tf = require_transformers()
    model = tf.AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, local_files_only=True,
                                                    trust_remote_code=False, use_safetensors=True)
    tokenizer = tf.AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    return model.eval(), tokenizer


def save_hf_folder(model: Any, tokenizer: Any, directory: str | Path, *, extra: dict | None = None) -> Path:
    """Write ``model`` (safetensors), its generation config and ``tokenizer`` into ``directory``.

    ``extra`` is written as ``jacobix.json`` beside them (training report, reproduce command).
    """
    import json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    if extra:
        (directory / "jacobix.json").write_text(json.dumps(extra, indent=2) + "\n")
    return directory


__all__ = ["is_hf_folder", "load_hf_folder", "save_hf_folder"]
