"""Every loader names the file (and the key) it cannot use: truncated or random-bytes weights, a
config.json that is no JSON object, a config key missing or of the wrong type."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from jacobix import assets
from jacobix.eval.quality import _load as load_classifier
from jacobix.flows.checkpoint import load_tarflow
from jacobix.images.model import load_image_model
from jacobix.images.vq import load_vq
from jacobix.latent.model import load_reasoner
from jacobix.models.llama import load_llama
from jacobix.robot.policy import load_policy

LOADERS = {  # bundled folder: loader, a key of its config and a value of the wrong type for it
    "shakespeare": (load_llama, "dim", "wide"),
    "shakespeare-cllm": (load_llama, "num_layers", 2.5),
    "fmnist-vq": (load_vq, "codebook_size", "many"),
    "fmnist-ar": (load_image_model, "num_heads", True),
    "fmnist-classifier": (load_classifier, "channels", "abc"),
    "tarflow-digits": (load_tarflow, "num_blocks", [2]),
    "pccot": (load_reasoner, None, None),
    "pointmass-policy": (load_policy, "vocab_size", None),
    "pointmass-policy-ceed": (load_policy, "hidden_dim", "x"),
}


@pytest.fixture
def copy_of(tmp_path):
    def make(name: str) -> Path:
        return Path(shutil.copytree(assets.ROOT / name, tmp_path / name))

    return make


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_truncated_and_random_weights_name_the_file(name, copy_of):
    load = LOADERS[name][0]
    folder = copy_of(name)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"{weights}: not a readable safetensors file"):
        load(folder)
    weights.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match=f"{weights}: not a readable safetensors file"):
        load(folder)
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load(folder)


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_a_config_that_is_not_json_names_the_file(name, copy_of):
    load = LOADERS[name][0]
    folder = copy_of(name)
    (folder / "config.json").write_bytes(os.urandom(300))
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        load(folder)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="config.json: expected a JSON object"):
        load(folder)


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_a_missing_or_mistyped_config_key_is_named(name, copy_of):
    load, key, wrong = LOADERS[name]
    folder = copy_of(name)
    meta = json.loads((folder / "config.json").read_text())
    config = meta["config"]["llama"] if name == "pccot" else meta["config"]
    prefix = "config.llama" if name == "pccot" else "config"
    key = key or "vocab_size"
    del config[key]
    (folder / "config.json").write_text(json.dumps(meta))
    if key in ("vocab_size",):  # required
        with pytest.raises(ValueError, match=rf"config.json: key '{prefix}.{key}' is missing"):
            load(folder)
    config[key] = wrong if wrong is not None else "12"
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=rf"config.json: key '{prefix}.{key}' must be"):
        load(folder)
    del meta["config"]
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="config.json: key 'config' is missing"):
        load(folder)


def test_weights_of_another_shape_name_the_tensor(copy_of):
    folder = copy_of("shakespeare")
    meta = json.loads((folder / "config.json").read_text())
    meta["config"]["hidden_dim"] += 2
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"model.safetensors: tensor '.*' has shape"):
        load_llama(folder)


def test_a_policy_format_missing_a_key_is_named(copy_of):
    folder = copy_of("pointmass-policy")
    meta = json.loads((folder / "config.json").read_text())
    del meta["policy"]["chunk"]
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"config.json: key 'policy.chunk' is missing"):
        load_policy(folder)


def test_damaged_side_files_of_image_models_are_named(copy_of):
    folder = copy_of("fmnist-ar-sjd2")
    (folder / "sjd2.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="sjd2.safetensors: not a readable safetensors file"):
        load_image_model(folder)
    folder = copy_of("fmnist-ar")
    (folder / "drafts.safetensors").write_bytes(os.urandom(100))
    from jacobix.images.proposers import load_draft_tables

    with pytest.raises(ValueError, match="drafts.safetensors: not a readable safetensors file"):
        load_draft_tables(folder)
