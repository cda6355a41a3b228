"""Replacing a bundled model only when its run succeeded.

With ``--replace-bundled`` a trainer writes into a staging folder beside the bundled one,
``assets/.NAME.training`` (its checkpoints, metrics and model files), never into ``assets/NAME``.
When the run has finished, :func:`publish` copies the model files (not the training state) into
``assets/.NAME.ready`` and swaps that folder with ``assets/NAME`` in one ``renameat2`` exchange,
so a reader sees the old model or the new one, never a mix. A run killed before that point leaves
``assets/NAME`` byte for byte as it was, and its staging folder holds ``checkpoint.pt`` to resume from.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)
TRAINING_STATE = frozenset({"checkpoint.pt", "checkpoint.pt.partial", "metrics.jsonl", "trajectories.safetensors",
                            "demonstrations.npz"})  # what a run needs to resume, not what the model needs to load
MODEL_FILES = ("model.safetensors", "config.json")


def staging(target: Path) -> Path:
    """The folder a ``--replace-bundled`` run writes to: ``.NAME.training`` beside ``target``."""
    return target.with_name(f".{target.name}.training")


def _aside(target: Path, what: str) -> Path:
    return target.with_name(f".{target.name}.{what}")


def recover(target: Path) -> None:
    """Put back a bundled folder that a publish killed between its two renames left aside (no-op otherwise)."""
    old = _aside(target, "old")
    if not target.exists() and old.is_dir():
        os.replace(old, target)
        log.warning("restored %s from %s (a replacement was interrupted)", target, old)
    elif old.exists():
        shutil.rmtree(old, ignore_errors=True)


def ready(folder: Path) -> bool:
    """True when ``folder`` holds a loadable model (its weights and ``config.json``)."""
    return all((Path(folder) / name).is_file() for name in MODEL_FILES)


def origin(meta: dict) -> dict[str, str]:
    """What a model's ``config.json`` records it was made from: a distilled student's teacher, an image
    model's tokenizer, an SJD2 fine-tune's base (only the entries present)."""
    found = {}
    for key in ("cllm", "ceed"):
        if isinstance(meta.get(key), dict) and meta[key].get("teacher") is not None:
            found[f"{key} teacher"] = str(meta[key]["teacher"])
    if isinstance(meta.get("image"), dict) and meta["image"].get("vq") is not None:
        found["tokenizer"] = str(meta["image"]["vq"])
    bases = [run.get("init_from") for run in meta.get("train_runs", []) if isinstance(run, dict) and run.get("kind") == "sjd2"]
    if bases and bases[-1] is not None:
        found["base"] = str(bases[-1])
    return found


def check_origin(source: Path, target: Path, *, allow: bool = False) -> None:
    """Refuse to replace ``target`` by the model in ``source`` when their recorded teachers, tokenizers or
    bases differ (``allow``: ``--other-origin``); nothing is changed then and ``source`` stays for a look."""
    if allow or not (Path(target) / "config.json").is_file():
        return
    from jacobix.core.checkpoints import read_json
    from jacobix.train.options import same_model

    new, old = origin(read_json(Path(source) / "config.json")), origin(read_json(Path(target) / "config.json"))
    for key in sorted(set(new) & set(old)):
        same = new[key] == old[key] if key == "base" else same_model(new[key], old[key])  # bases are recorded by name
        if not same:
            raise ValueError(f"the model made in {source} records {key} {new[key]!r}, the bundled {Path(target).name} "
                             f"{old[key]!r}: {target} is unchanged; pass --other-origin to replace it anyway")


def publish(source: Path, target: Path) -> None:
    """Replace ``target`` by the model files of ``source`` at once; then remove ``source``.

    Raises:
        ValueError: ``source`` holds no finished model (nothing is changed).
    """
    source, target = Path(source), Path(target)
    if not ready(source):
        raise ValueError(f"{source} holds no finished model ({' + '.join(MODEL_FILES)}); {target} is unchanged")
    new = _aside(target, "ready")
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    for item in sorted(source.iterdir()):
        if item.name in TRAINING_STATE:
            continue
        copy = shutil.copytree if item.is_dir() else shutil.copy2
        copy(item, new / item.name)
    _fsync_folder(new)
    if target.exists() and _exchange(new, target):
        shutil.rmtree(new)  # now the old model
    else:
        old = _aside(target, "old")
        if target.exists():
            os.replace(target, old)
        os.replace(new, target)  # killed between the two: recover() puts the old folder back
        shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(source, ignore_errors=True)
    log.info("replaced %s", target)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _fsync_folder(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as file:
                os.fsync(file.fileno())


__all__ = ["MODEL_FILES", "TRAINING_STATE", "check_origin", "origin", "publish", "ready", "recover", "staging"]
