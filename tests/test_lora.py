"""LoRA adapters through peft: trained with the Jacobi Forcing loss, saved as safetensors, refused on another base."""

from __future__ import annotations

import pytest
import torch

tf = pytest.importorskip("transformers")
pytest.importorskip("peft")

from jacobix.integrations.hf.adapter import as_causal_lm  # noqa: E402
from jacobix.integrations.hf.lora import add_lora, load_lora, save_lora  # noqa: E402
from jacobix.train.jacobi_forcing import collate, pack, packed_forward, step_losses  # noqa: E402


def _llama(hidden: int = 16, seed: int = 4):
    torch.manual_seed(seed)
    config = tf.LlamaConfig(vocab_size=11, hidden_size=hidden, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024, pad_token_id=0)
    return tf.LlamaForCausalLM(config).eval()


def _batch():
    t = torch.tensor
    return collate([pack(2, t([1, 2, 3]), [t([4, 9, 6]), t([7, 9])], [t([4, 5, 6]), t([7, 8])])])


def test_a_lora_student_trains_only_its_adapters_and_reloads_onto_a_fresh_base(tmp_path):
    model = add_lora(_llama(), rank=4, alpha=8)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        losses = step_losses(packed_forward(as_causal_lm(model.get_base_model())), _batch())  # adapters are in it
        (10 * losses["ar"] + losses["consistency"]).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if "lora_" not in n)
    save_lora(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        expected = model(tokens).logits
        reloaded = load_lora(_llama(), tmp_path / "adapter")(tokens).logits
        base = _llama()(tokens).logits
    assert torch.allclose(reloaded, expected, atol=1e-5) and not torch.allclose(base, expected, atol=1e-5)


def test_an_adapter_for_another_base_is_refused_before_loading(tmp_path):
    save_lora(add_lora(_llama(), rank=2), tmp_path / "adapter")
    with pytest.raises(ValueError, match="trained on another base model: hidden_size 16 there, 32 here"):
        load_lora(_llama(hidden=32), tmp_path / "adapter")
    with pytest.raises(FileNotFoundError, match="holds no LoRA adapter"):
        load_lora(_llama(), tmp_path)


def test_a_base_lora_cannot_wrap_is_refused_naming_its_layers():
    config = tf.GPT2Config(vocab_size=11, n_embd=16, n_layer=1, n_head=2, n_positions=32)
    with pytest.raises(ValueError, match="LoRA cannot wrap GPT2LMHeadModel: .*pass targets="):
        add_lora(tf.GPT2LMHeadModel(config))
    with pytest.raises(ValueError, match="rank >= 1"):
        add_lora(_llama(), rank=0)


def _teacher_folder(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from jacobix.integrations.hf.folders import save_hf_folder

    words = ["def", "return", "self", "if", "else", "for", "in", "import", "class", "None"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)} | {"[UNK]": 10}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    return save_hf_folder(_llama(), tokenizer, tmp_path / "teacher")


@pytest.mark.parametrize("lora", [0, 2])
def test_the_forcing_recipe_trains_a_transformers_model_whole_or_through_lora(tmp_path, lora):
    from jacobix.api import load_text_model
    from jacobix.train.recipes import forcing

    teacher = _teacher_folder(tmp_path)
    out = tmp_path / "student"
    forcing.RECIPE.train(forcing.parse_args([
        "--teacher", str(teacher), "--data", "stdlib", "--lora", str(lora), "--out", str(out), "--rounds", "1",
        "--prompts", "3", "--held-out", "1", "--max-new-tokens", "12", "--block-size", "4", "--steps", "2",
        "--batch-size", "2", "--collect-batch", "3"]))
    if lora:
        assert (out / "adapter_model.safetensors").is_file()
        student = load_lora(load_text_model(str(teacher)).model, out)
        by_name = load_text_model(str(out)).model  # the base loaded by the name the folder records, adapters merged
        with torch.no_grad():
            assert torch.allclose(by_name(torch.tensor([[1, 2, 3]])).logits, student(torch.tensor([[1, 2, 3]])).logits)
    else:
        student = load_text_model(str(out)).model
    tokens = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert not torch.allclose(student(tokens).logits, load_text_model(str(teacher)).model(tokens).logits)


def test_lora_on_a_jacobix_model_is_refused_before_any_work(tmp_path):
    from jacobix.train.recipes import forcing

    with pytest.raises(ValueError, match="--lora trains adapters of a transformers model"):
        forcing.parse_args(["--teacher", "arith", "--lora", "4", "--out", str(tmp_path / "s")])


def test_the_humaneval_suite_scores_completions_in_the_sandbox(tmp_path):
    from jacobix.api import load_text_model
    from jacobix.bench.text_suites import QualityInputs, get_suite

    model = load_text_model(str(_teacher_folder(tmp_path)))
    suite = get_suite("humaneval")
    record = suite.quality(model, QualityInputs(problems=2, data=None, outputs=[]))
    assert record["problems"] == 2 and record["pass_at_1"] == 0.0  # a random model writes no working function
    assert record["pass_at_1_interval"][0] == 0.0 < record["pass_at_1_interval"][1]
    assert len(suite.prompts(3)) == 3 and suite.prompts(1)[0].startswith("from typing import List")
