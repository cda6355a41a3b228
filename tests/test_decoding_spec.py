"""The decoding spec is declared once and carried unchanged: its checks, its record, the facade's
keyword split, the method registry, and a field added here reaching the command line, batch jobs,
the benchmark and the Hugging Face path with no edit there."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import jacobix
from jacobix.core.sampling import SamplingConfig
from jacobix.tokens.decoding import Decoding, Guidance, LossyExit
from jacobix.tokens.proposers.ngram import LookaheadConfig

SRC = Path(__file__).resolve().parent.parent / "src" / "jacobix"


@pytest.mark.parametrize("fields, message", [
    (dict(method="beam"), "unknown method 'beam'"),
    (dict(window=0), "Decoding.window must be an int >= 1"),
    (dict(window=True), "Decoding.window"),
    (dict(window="wide"), "Decoding.window"),
    (dict(init="zeros"), "unknown init 'zeros'"),
    (dict(init=3), "Decoding.init"),
    (dict(row_length=0), "Decoding.row_length"),
    (dict(lookahead="yes"), "Decoding.lookahead"),
    (dict(block=1), "Decoding.block"),
    (dict(block=True, window="auto"), "whole number"),
    (dict(lossy=3), "Decoding.lossy must be a LossyExit"),
    (dict(proposer=object()), "Decoding.proposer"),
    (dict(width_policy=object()), "Decoding.width_policy"),
    (dict(costs={}), "Decoding.costs"),
])
def test_a_bad_field_is_refused_when_the_spec_is_built(fields, message):
    with pytest.raises(ValueError, match=message):
        Decoding(**fields)


def test_lossy_exit_is_never_empty_and_checks_its_parts():
    with pytest.raises(ValueError, match="sweep_cap or settled"):
        LossyExit()
    with pytest.raises(ValueError, match="sweep_cap must be an int >= 1"):
        LossyExit(sweep_cap=0)
    with pytest.raises(ValueError, match="settled must be a rule"):
        LossyExit(settled=3)
    assert not Decoding(lossy=LossyExit(sweep_cap=2)).lossless and Decoding().lossless


def test_check_ties_the_method_to_the_temperature():
    Decoding(method="sjd").check(SamplingConfig(temperature=0.5))
    Decoding(method="ar").check(SamplingConfig(temperature=0.5))
    with pytest.raises(ValueError, match="greedy"):
        Decoding(method="jacobi").check(SamplingConfig(temperature=0.5))
    with pytest.raises(ValueError, match="needs temperature > 0"):
        Decoding(method="sjd-coupled").check(SamplingConfig())
    with pytest.raises(ValueError, match="SamplingConfig"):
        Decoding().check({"temperature": 0.0})


def test_guidance_checks_its_scale():
    for scale in (float("nan"), float("inf"), True, "2"):
        with pytest.raises(ValueError, match="Guidance.scale"):
            Guidance(scale=scale, negative_input_ids=[[0]])
    with pytest.raises(ValueError, match="negative_input_ids"):
        Guidance(scale=2.0, negative_input_ids=None)


def test_the_record_round_trips_through_json_and_refuses_objects():
    spec = Decoding(method="sjd", window="auto", init="context", lookahead=LookaheadConfig(verify=3),
                    lossy=LossyExit(sweep_cap=4))
    again = Decoding.from_record(json.loads(json.dumps(spec.record())))
    assert again == spec and again.lookahead.key_lengths == (3, 2, 1)
    with pytest.raises(ValueError, match="cannot be written to a settings record"):
        Decoding(lossy=LossyExit(settled=lambda old, new: old == new)).record()
    with pytest.raises(ValueError, match="unknown type"):
        Decoding.from_record({"lookahead": {"type": "Pickle"}})


def test_the_facade_splits_keywords_by_field_and_refuses_unknown_ones():
    from jacobix.api import split_options

    decoding, sampling, request = split_options(dict(method="sjd", window="auto", temperature=0.8, top_k=5,
                                                     max_new_tokens=9, lossy_sweep_cap=3, policy=None))
    assert decoding == Decoding(method="sjd", window="auto", lossy=LossyExit(sweep_cap=3))
    assert sampling == SamplingConfig(temperature=0.8, top_k=5) and request == dict(max_new_tokens=9)
    base = Decoding(method="jacobi", init="repeat")
    decoding, _, _ = split_options(dict(decoding=base, window=4))
    assert decoding == dataclasses.replace(base, window=4)
    with pytest.raises(ValueError, match="unknown keyword.*windw.*known:.*window"):
        split_options(dict(windw=4))


def test_generate_takes_at_most_twelve_parameters_and_fits_on_a_screen():
    from jacobix.tokens.generate import generate

    assert len(inspect.signature(generate).parameters) <= 12
    source = inspect.getsource(generate)
    body = ast.parse(source).body[0].body
    first = body[1] if isinstance(body[0], ast.Expr) else body[0]  # after the docstring
    assert body[-1].end_lineno - first.lineno + 1 <= 60


def test_temperature_is_a_loose_keyword_only_where_the_spec_is_built():
    """Outside the sampling spec, the facade, the command line (flags derived from the spec) and the
    transformers mapping, ``temperature=`` appears only as a field of ``SamplingConfig(...)``.
    TarFlow's latent temperature (flows/) is another quantity."""
    allowed = {"core/sampling.py", "api.py", "integrations/hf/custom_generate.py"}
    loose = []
    for path in SRC.rglob("*.py"):
        if str(path.relative_to(SRC)) in allowed or path.relative_to(SRC).parts[0] in ("cli", "flows"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and any(k.arg == "temperature" for k in node.keywords):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                if name not in ("SamplingConfig", "replace"):
                    loose.append(f"{path.relative_to(SRC)}:{node.lineno} {name}(temperature=...)")
    assert loose == []


def test_every_method_is_registered_without_importing_its_family():
    code = "import jacobix.tokens.methods as m, sys; print(sorted(m.METHODS), 'jacobix.images' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['ar', 'jacobi', 'sjd', 'sjd-coupled', 'sjd-pac', 'sjd2'] False"
    with pytest.raises(ValueError, match="needs proposer=SJD2Proposer"):
        from conftest import tiny_model

        jacobix.generate(tiny_model(1), [[1, 2]], method="sjd2", temperature=1.0, max_new_tokens=3)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Probe(Decoding):
    """A decoding spec with one field more.

    Attributes:
        probe: a knob added by this test: it must reach every entry point unchanged.
    """

    probe: int = 0


@pytest.fixture
def probe_field(monkeypatch):
    """Every loaded jacobix module that names ``Decoding`` sees the spec with the extra field."""
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("jacobix") and getattr(module, "Decoding", None) is Decoding:
            monkeypatch.setattr(module, "Decoding", _Probe)
    return _Probe


def test_a_new_field_reaches_the_command_line(probe_field, monkeypatch, capsys):
    import jacobix.cli.text as cli_text
    from jacobix.cli import main

    seen = []

    def capture(model, prompt, *, decoding, sampling, **request):
        seen.append(decoding)
        return jacobix.generate(model, prompt, decoding=decoding, sampling=sampling, **request)

    monkeypatch.setattr(cli_text, "generate", capture)
    assert main(["generate", "--method", "jacobi", "--probe", "3", "--max-new-tokens", "4", "--no-progress", "x"]) == 0
    assert [(type(d), d.probe) for d in seen] == [(_Probe, 3)]
    assert main(["generate", "--probe", "many", "x"]) == 2
    assert "argument --probe" in capsys.readouterr().err


def test_a_new_field_reaches_batch_jobs_and_their_settings_record(probe_field, monkeypatch, tmp_path):
    import jacobix.cli.batch as cli_batch
    from jacobix.batch.jobs import BatchSpec, settings_path
    from jacobix.cli import main

    seen = []
    monkeypatch.setattr(cli_batch, "run_local", lambda spec, rows, writer, **loaded: seen.append(spec) or 0)
    rows = tmp_path / "in.jsonl"
    rows.write_text('{"id": 1, "prompt": "ROMEO:"}\n')
    assert main(["generate-batch", "--input", str(rows), "--output", str(tmp_path / "out.jsonl"), "--probe", "5"]) == 0
    assert seen[0].decoding.probe == 5
    recorded = json.loads(settings_path(tmp_path / "out.jsonl").read_text())
    assert recorded["decoding"]["probe"] == 5
    assert BatchSpec.from_record({**recorded, "batch_size": 8}).decoding.probe == 5


def test_a_new_field_reaches_the_benchmark(probe_field, monkeypatch):
    import jacobix.bench.text as bench_text
    from jacobix.api import load_text_model

    seen = []
    monkeypatch.setattr(bench_text, "generate", lambda model, prompt, *, decoding, **rest: seen.append(decoding))
    setting = bench_text.Setting(label="probe", decoding=_Probe(method="jacobi", probe=7))
    text_model = load_text_model("shakespeare")
    bench_text._run(text_model, text_model.tokenizer.encode("A"), setting, bench_text.TextBenchConfig(), seed=0)
    assert seen == [setting.decoding] and seen[0].probe == 7


def test_a_new_field_reaches_the_hugging_face_path(probe_field, monkeypatch):
    tf = pytest.importorskip("transformers")
    import jacobix.integrations.hf.custom_generate as custom

    seen = []
    real = custom.generate
    monkeypatch.setattr(custom, "generate", lambda lm, prompts, decoding, sampling, **rest:
                        seen.append(decoding) or real(lm, prompts, decoding, sampling, **rest))
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0)
    model = tf.LlamaForCausalLM(config).eval()
    model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False,
                   custom_generate=custom.jacobi_generate, decoding=_Probe(method="jacobi", probe=9), window=4)
    assert len(seen) == 1 and seen[0].probe == 9 and seen[0].window == 4
    decoding, sampling = custom.specs_from_generation_config(tf.GenerationConfig(do_sample=True, temperature=0.7),
                                                             _Probe(method="sjd", probe=2))
    assert decoding.probe == 2 and sampling.temperature == 0.7
