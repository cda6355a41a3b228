"""GGUF causal LMs, offline, with their dequantised weights cached as safetensors.

Reading a GGUF file takes tens of seconds (the ``gguf`` package dequantises every tensor), so
:func:`load_gguf_cached` writes the converted model once to a cache folder and reads that
folder afterwards. The folder also records which GGUF file it came from
(:data:`SOURCE_RECORD`); a different file (name or size) is converted again. A new version is
written completely beside the old one, and the cache folder, a symbolic link, is switched to it
in one atomic rename; the old version is deleted last. A failed or interrupted conversion leaves
the old cache as it was, and no moment is without a complete cache.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch

from jacobix.integrations.hf._deps import require_transformers

SOURCE_RECORD = "jacobix-source.json"
WEIGHTS = "model.safetensors"


def load_gguf_cached(gguf_path: Path, cache_dir: Path, *, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Load a GGUF causal LM and its tokenizer; dequantised weights are cached as safetensors.

    Args:
        gguf_path: the ``.gguf`` file (needs the ``gguf`` package on first use).
        cache_dir: the cache folder (config, tokenizer, ``model.safetensors``, source record).
        dtype: the dtype of the returned model (and of the weights on conversion).

    Returns:
        ``(model, tokenizer)``, the model in eval mode. Nothing is downloaded: every
        ``from_pretrained`` runs with ``local_files_only=True``.
    """
    tf = require_transformers()
    source = _source_of(gguf_path)
    if not _is_current(cache_dir, source):
        model, tokenizer = _read_gguf(gguf_path, dtype)
        _save_dequantised(model, tokenizer, cache_dir, source)
    model = tf.AutoModelForCausalLM.from_pretrained(cache_dir, dtype=dtype, local_files_only=True)
    tokenizer = tf.AutoTokenizer.from_pretrained(cache_dir, local_files_only=True)
    return model.eval(), tokenizer


def _source_of(gguf_path: Path) -> dict[str, Any]:
    return {"gguf": Path(gguf_path).name, "bytes": Path(gguf_path).stat().st_size}


def _is_current(cache_dir: Path, source: dict[str, Any]) -> bool:
    """True when ``cache_dir`` holds weights converted from ``source``.

    A cache written before source records existed (weights, no record) is kept as it is.
    """
    if not (cache_dir / WEIGHTS).exists():
        return False
    record = cache_dir / SOURCE_RECORD
    return not record.exists() or json.loads(record.read_text()) == source


def _read_gguf(gguf_path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """The model and tokenizer stored in a GGUF file (slow: every tensor is dequantised)."""
    tf = require_transformers()
    where, name = Path(gguf_path).parent, Path(gguf_path).name
    model = tf.AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=dtype, local_files_only=True)
    tokenizer = tf.AutoTokenizer.from_pretrained(where, gguf_file=name, local_files_only=True)
    return model, tokenizer


def _save_dequantised(model: Any, tokenizer: Any, cache_dir: Path, source: dict[str, Any]) -> None:
    """Write the dequantised model to a sibling folder, then swap it in for ``cache_dir``."""
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.new-", dir=cache_dir.parent))
    try:
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights are plain floats now
        model.hf_quantizer = None
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        model.generation_config.save_pretrained(staging)
        (staging / SOURCE_RECORD).write_text(json.dumps(source))  # last: it marks the folder complete
        _swap_in(staging, cache_dir, source)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already unless something failed


def _swap_in(staging: Path, cache_dir: Path, source: dict[str, Any]) -> None:
    """Make ``cache_dir`` point at the complete folder ``staging`` in one atomic step.

    ``cache_dir`` is a symbolic link to a versioned sibling folder; the swap writes a new link
    beside it and renames it over the old one (``os.replace``, atomic on POSIX), so at every
    moment ``cache_dir`` names a complete cache. The old version is deleted afterwards. A cache
    folder from before links (a plain directory) is first moved aside, once. A concurrent
    process that finished first wins: its version is kept and ``staging`` dropped.
    """
    if _is_current(cache_dir, source):
        return
    version = cache_dir.with_name(f".{cache_dir.name}.v-{uuid.uuid4().hex}")
    os.replace(staging, version)
    old = cache_dir.resolve() if cache_dir.is_symlink() else None
    if cache_dir.exists() and not cache_dir.is_symlink():  # a plain folder written before links
        old = cache_dir.with_name(f".{cache_dir.name}.old-{uuid.uuid4().hex}")
        os.replace(cache_dir, old)
    link = cache_dir.with_name(f".{cache_dir.name}.link-{uuid.uuid4().hex}")
    try:
        os.symlink(version.name, link, target_is_directory=True)
        os.replace(link, cache_dir)
    except BaseException:
        link.unlink(missing_ok=True)
        shutil.rmtree(version, ignore_errors=True)
        if old is not None and not cache_dir.exists() and old.name.startswith(f".{cache_dir.name}.old-"):
            os.replace(old, cache_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["SOURCE_RECORD", "load_gguf_cached"]
