"""The Python API of every family checks its inputs at the door, and batches padded wider than their
longest row decode as the unpadded batch does."""

from __future__ import annotations

import math

import pytest
import torch

import jacobix
from jacobix import assets
from jacobix.flows.checkpoint import load_tarflow
from jacobix.flows.sampling import BlockPlan, sample_tarflow, uniform_schedule
from jacobix.images.model import load_image_model
from jacobix.images.sample import ImageSampling, generate_images
from jacobix.latent.model import load_reasoner
from jacobix.latent.thoughts import answer, think
from jacobix.robot.policy import load_policy


@pytest.fixture(scope="module")
def reasoner():
    return load_reasoner(assets.get("pccot").path)[0]


def test_a_question_batch_padded_wider_than_its_longest_question_answers_as_the_tight_one(reasoner):
    questions = torch.tensor([[3, 4, 5, 6], [7, 3, 0, 0]])
    lengths = torch.tensor([4, 2])
    tight = answer(reasoner, questions, lengths)
    for extra in (1, 9):
        wide = torch.nn.functional.pad(questions, (0, extra), value=0)  # (B, 4 + extra): pads past every row
        assert torch.equal(answer(reasoner, wide, lengths).tokens, tight.tokens)
        garbage = torch.nn.functional.pad(questions, (0, extra), value=5)  # what sits past a row is never read
        assert torch.equal(answer(reasoner, garbage, lengths).tokens, tight.tokens)


@pytest.mark.parametrize("questions,lengths,message", [
    (torch.tensor([[3, 4, 10_000]]), torch.tensor([3]), "token ids must be in"),
    (torch.tensor([[3, -1]]), torch.tensor([2]), "token ids must be in"),
    (torch.tensor([[3.0, 4.0]]), torch.tensor([2]), "integer token ids"),
    (torch.tensor([[True, False]]), torch.tensor([2]), "integer token ids"),
    (torch.tensor([[3, 4]]), torch.tensor([3]), "lengths must be"),
    (torch.tensor([[3, 4]]), torch.tensor([0]), "lengths must be"),
    (torch.tensor([[3, 4]]), torch.tensor([1.5]), "lengths must be"),
    (torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, dtype=torch.long), "lengths must be"),
])
def test_latent_questions_are_checked(reasoner, questions, lengths, message):
    with pytest.raises(ValueError, match=message):
        think(reasoner, questions, lengths)


def test_latent_passes_must_be_an_integer(reasoner):
    for passes in (True, 1.5, 0):
        with pytest.raises(ValueError, match="passes"):
            think(reasoner, torch.tensor([[3, 4]]), torch.tensor([2]), passes=passes)


@pytest.fixture(scope="module")
def image_model():
    return load_image_model("fmnist-ar")


@pytest.mark.parametrize("labels", [[1.5], torch.tensor([1.0]), [True], torch.tensor([True]), ["3"]])
def test_image_labels_are_integer_class_ids(image_model, labels):
    with pytest.raises(ValueError, match="labels must be"):
        generate_images(image_model, labels)


@pytest.mark.parametrize("options,message", [
    ({"batch_size": True}, "batch_size"), ({"batch_size": 0}, "batch_size"), ({"batch_size": 2.0}, "batch_size"),
    ({"record": 1}, "record"), ({"settings": "sjd"}, "settings"),
])
def test_image_options_are_checked(image_model, options, message):
    with pytest.raises(ValueError, match=message):
        generate_images(image_model, [1], **options)


def test_image_labels_out_of_range_and_bad_scales(image_model):
    with pytest.raises(ValueError, match=r"class ids in \[0, 10\)"):
        generate_images(image_model, [10])
    for scale in (math.nan, math.inf, -1.0, True):
        with pytest.raises(ValueError, match="cfg_scale"):
            ImageSampling(cfg_scale=scale)


@pytest.fixture(scope="module")
def digits_flow():
    return load_tarflow(assets.get("tarflow-digits").path)[0]


def test_flow_inputs_are_checked(digits_flow):
    model = digits_flow
    shape = (2, model.config.num_patches, model.config.patch_dim)
    schedule = uniform_schedule(len(model.blocks), BlockPlan(mode="sequential"))
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    bad = noise.clone()
    bad[0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="finite"):
        sample_tarflow(model, bad, schedule=schedule)
    with pytest.raises(ValueError, match="unconditional"):
        sample_tarflow(model, noise, torch.tensor([0, 1]), schedule=schedule)
    with pytest.raises(ValueError, match="BlockPlan"):
        sample_tarflow(model, noise, schedule=[{"mode": "sequential"}] * len(model.blocks))
    with pytest.raises(ValueError, match="denoise_step and record"):
        sample_tarflow(model, noise, schedule=schedule, denoise_step=1)
    assert sample_tarflow(model, noise, schedule=schedule).images.shape[0] == 2


def test_robot_observations_must_be_finite():
    _, fmt = load_policy("pointmass-policy")
    task = fmt.tasks[0]
    obs = torch.zeros(fmt.obs_dim)
    fmt.prompt(task, obs)
    for value in (math.nan, math.inf, -math.inf):
        obs[0] = value
        with pytest.raises(ValueError, match="observations must be finite"):
            fmt.prompt(task, obs)


def test_image_proposer_and_sjd2_switches_are_checked(image_model):
    from jacobix.images.sjd2 import SJD2Config

    with pytest.raises(ValueError, match="proposer must be an SJD2Proposer"):
        generate_images(image_model, [1], proposer=object())
    for name in ("lossy", "coupled"):
        with pytest.raises(ValueError, match=f"SJD2Config.{name}"):
            SJD2Config(levels=2, **{name: 1})


def test_rollout_batch_size_is_an_integer_of_at_least_one():
    from jacobix.robot.rollout import run_episodes

    _, fmt = load_policy("pointmass-policy")
    for size in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="batch_size"):
            run_episodes(lambda prompts: None, lambda: None, fmt, [fmt.tasks[0]], [0], batch_size=size)


@pytest.mark.parametrize("eos", [999, -1, True, [1, 99], 2.0])
def test_text_eos_ids_are_token_ids_of_the_vocabulary(eos):
    from conftest import tiny_model

    with pytest.raises(ValueError, match="eos_token_id must be token ids"):
        jacobix.generate(tiny_model(), [[1, 2]], max_new_tokens=4, eos_token_id=eos)
    for fine in (3, [1, 2], torch.tensor(3), torch.tensor([1, 2])):
        jacobix.generate(tiny_model(), [[1, 2]], max_new_tokens=4, eos_token_id=fine)
