"""The one registry of bundled assets (jacobix.assets) agrees with the folders it names, and every
rebuild command names a trainer that exists."""

from __future__ import annotations

import json
import re

import pytest

from jacobix import assets
from jacobix.train.recipes import RECIPES as TRAINERS  # the `jacobix train` targets


def test_every_asset_folder_is_registered_and_every_registered_folder_exists():
    on_disk = {path.name for path in assets.ROOT.iterdir() if path.is_dir() and not path.name.startswith((".", "__"))}
    registered = {asset.folder for asset in assets.REGISTRY if asset.folder is not None}
    assert on_disk == registered
    for asset in assets.REGISTRY:
        if asset.path is not None:
            assert (asset.path / "config.json").is_file(), asset.name


def test_each_rebuild_names_an_existing_train_target():
    for asset in assets.REGISTRY:
        if asset.kind == "hf-text":
            assert asset.rebuild.startswith("pip install"), asset  # installed from a wheel, not trained
            continue
        targets = re.findall(r"jacobix train (\S+)", asset.rebuild)
        assert targets and set(targets) <= set(TRAINERS), (asset.name, targets)


def test_names_are_unique_and_kinds_closed():
    assert len(assets.names()) == len(set(assets.names())) == len(assets.REGISTRY)
    assert {asset.kind for asset in assets.REGISTRY} == set(assets.KINDS)
    with pytest.raises(ValueError, match="kind must be one of"):
        assets.Asset(name="x", kind="video", folder="x", rebuild="jacobix train x")
    with pytest.raises(ValueError, match="only an hf-text asset has no folder"):
        assets.Asset(name="x", kind="text", folder=None, rebuild="jacobix train x")


def test_teachers_are_registered_and_agree_with_the_students_config():
    students = [asset for asset in assets.REGISTRY if asset.teacher is not None]
    assert {a.name for a in students} >= {"shakespeare-cllm", "shakespeare-cllm-ar1", "pointmass-policy-ceed"}
    for asset in students:
        assert assets.get(asset.teacher).kind == asset.kind
        meta = json.loads((asset.path / "config.json").read_text())
        recorded = (meta.get("cllm") or meta.get("ceed") or meta.get("jacobi_forcing"))["teacher"]
        assert recorded == asset.teacher, asset.name


def test_unknown_names_and_kinds_list_the_known_ones():
    with pytest.raises(ValueError, match="no bundled asset 'gpt5'; known names: shakespeare, "):
        assets.get("gpt5")
    with pytest.raises(ValueError, match="known names: pointmass-policy, "):
        assets.get("gpt5", kind="policy")
    with pytest.raises(ValueError, match="'fmnist-ar' is a bundled image asset, not policy"):
        assets.get("fmnist-ar", kind="policy")
    with pytest.raises(ValueError, match="unknown asset kind"):
        assets.names("video")
    assert assets.names("latent") == ("pccot", "pccot-seq", "pccot-chain-cot", "pccot-chain-nocot", "pccot-chain-seq", "pccot-chain")


def test_locate_looks_up_names_of_its_kind_only(tmp_path):
    assert assets.locate("fmnist-ar", kind="image") == assets.ROOT / "fmnist-ar"
    assert str(assets.locate("fmnist-ar", kind="text")) == "fmnist-ar"
    assert assets.locate(tmp_path, kind="image") == tmp_path
    assert assets.rebuild_hint("pointmass-policy", kind="policy").endswith("--suite pointmass --replace-bundled")
    assert assets.rebuild_hint(tmp_path, kind="policy") == ""


def test_replace_bundled_writes_only_registered_folders():
    import argparse

    from jacobix.train import output_folder

    args = argparse.Namespace(out=None, replace_bundled=True)
    assert output_folder(args, "pccot-seq") == assets.ROOT / ".pccot-seq.training"  # staged; swapped in when finished
    assert args.publish_to == assets.ROOT / "pccot-seq"
    with pytest.raises(ValueError, match="no bundled asset 'pccot-cot'; known names: "):
        output_folder(args, "pccot-cot")  # `jacobix train pccot --arm cot --replace-bundled`: no such bundled model
