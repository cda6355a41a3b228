"""LoRA adapters (through ``peft``) for fine-tuning a transformers model, saved as safetensors.

A Jacobi Forcing or CLLM student of a large model need not be a whole copy: :func:`add_lora` wraps
the model's attention and MLP projections, training touches only the adapters, and
:func:`save_lora` writes ``adapter_model.safetensors`` and ``adapter_config.json`` (peft's files)
plus ``jacobix-base.json``, the shape of the base model it was trained on. :func:`load_lora`
refuses an adapter trained on another base before peft reads a weight, and never runs code from
the folder.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BASE_FILE = "jacobix-base.json"
_SHAPE = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def _peft():
    try:
        import peft
    except ImportError:
        raise ImportError("LoRA needs peft: pip install peft") from None
    return peft


def base_shape(model: Any) -> dict:
    """The fields of a transformers model's config that an adapter depends on."""
    config = model.config
    return {name: getattr(config, name, None) for name in _SHAPE}


def add_lora(model: Any, *, rank: int = 16, alpha: int = 32, targets: tuple[str, ...] | None = None) -> Any:
    """``model`` wrapped with LoRA adapters of ``rank`` on its ``targets`` (default: the attention and MLP
    projections it has among :data:`DEFAULT_TARGETS`); only the adapters train. peft puts the adapters
    inside the model's own layers, so jacobix drives ``wrapped.get_base_model()`` (through
    :func:`~jacobix.integrations.hf.adapter.as_causal_lm`) and trains them.

    Raises:
        ValueError: a rank below 1, or a model none of whose modules is a target (naming its linear layers).
    """
    if rank < 1 or alpha <= 0:
        raise ValueError(f"LoRA needs rank >= 1 and alpha > 0, got rank={rank}, alpha={alpha}")
    import torch

    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    wanted = tuple(t for t in (targets or DEFAULT_TARGETS) if t in names)
    if not wanted:
        raise ValueError(f"LoRA cannot wrap {type(model).__name__}: none of its linear layers is named "
                         f"{', '.join(targets or DEFAULT_TARGETS)}; pass targets= from its layers: {', '.join(sorted(names))}")
    peft = _peft()
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(wanted), lora_dropout=0.0, bias="none",
                             task_type="CAUSAL_LM")
    return peft.get_peft_model(model, config)


def save_lora(model: Any, directory: str | Path, *, base: str | None = None) -> Path:
    """Write the adapters of a :func:`add_lora` model (safetensors), the base's shape and (``base``) the name
    :func:`jacobix.load_text_model` loads the base by into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    record = {**base_shape(model.get_base_model()), **({"name": base} if base else {})}
    (directory / BASE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return directory


def load_lora_text_model(directory: str | Path, load_text_model) -> Any:
    """The :class:`~jacobix.models.registry.TextModel` of a folder :func:`save_lora` wrote with a base name: the
    base loaded by ``load_text_model(name)``, the adapters merged into it."""
    directory = Path(directory)
    recorded = json.loads((directory / BASE_FILE).read_text()) if (directory / BASE_FILE).is_file() else {}
    if "name" not in recorded:
        raise ValueError(f"{directory} holds LoRA adapters but names no base model ({BASE_FILE}); load the base and "
                         "call jacobix.integrations.hf.lora.load_lora(base, folder)")
    base = load_text_model(recorded["name"])
    return dataclasses.replace(base, model=load_lora(base.model, directory), name=str(directory))


def load_lora(base: Any, directory: str | Path, *, merge: bool = True) -> Any:
    """``base`` with the adapters saved in ``directory`` (merged into its weights by default).

    Raises:
        FileNotFoundError: no adapter in ``directory``.
        ValueError: the adapter was trained on a base of another shape (both named).
    """
    directory = Path(directory)
    if not (directory / "adapter_model.safetensors").is_file() or not (directory / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{directory} holds no LoRA adapter (adapter_model.safetensors and adapter_config.json); "
                                "write one with jacobix.integrations.hf.lora.save_lora")
    recorded = json.loads((directory / BASE_FILE).read_text()) if (directory / BASE_FILE).is_file() else None
    recorded = None if recorded is None else {k: recorded.get(k) for k in _SHAPE}
    actual = base_shape(base)
    if recorded is not None and recorded != actual:
        differ = {k: (recorded.get(k), actual.get(k)) for k in _SHAPE if recorded.get(k) != actual.get(k)}
        raise ValueError(f"the LoRA adapter in {directory} was trained on another base model: "
                         + ", ".join(f"{k} {a} there, {b} here" for k, (a, b) in differ.items())
                         + "; load it onto the model it was trained from")
    model = _peft().PeftModel.from_pretrained(base, str(directory), is_trainable=False)
    return model.merge_and_unload() if merge else model


__all__ = ["DEFAULT_TARGETS", "add_lora", "base_shape", "load_lora", "load_lora_text_model", "save_lora"]
