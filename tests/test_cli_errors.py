"""Every CLI argument is checked before any work starts: exit status 2, a message on stderr that
names the argument and the fix, no traceback; and what the header says is what ran."""

from __future__ import annotations

import string

import pytest
import torch

from jacobix.cli import main
from jacobix.models import Llama, LlamaConfig, save_llama

ALPHABET = "".join(sorted(set(string.printable[:95] + "\n")))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm")
    torch.manual_seed(0)
    save_llama(Llama(LlamaConfig(vocab_size=len(ALPHABET), dim=32, num_layers=1, max_seq_len=64)), folder,
               extra={"tokenizer": {"kind": "char", "alphabet": ALPHABET}})
    return folder


@pytest.fixture
def never_run(monkeypatch):
    """Fail the test if any decoding, benchmark or demo starts: the checks must come first."""
    import jacobix.cli.bench as cli_bench
    import jacobix.cli.demo as cli_demo
    import jacobix.cli.text as cli_text

    def boom(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    for module, name in ((cli_text, "generate"), (cli_text, "load_text_model"), (cli_demo, "run"), (cli_demo, "text_demo")):
        monkeypatch.setattr(module, name, boom)
    for target, (summary, options, _) in list(cli_bench._TARGETS.items()):
        monkeypatch.setitem(cli_bench._TARGETS, target, (summary, options, boom))
    for module, name in (("jacobix.demos.images", "demo_images"), ("jacobix.demos.tarflow", "demo_tarflow"),
                         ("jacobix.bench.tarflow", "bench_tarflow"), ("jacobix.bench.images", "bench_images"),
                         ("jacobix.bench.text", "bench_text")):
        monkeypatch.setattr(f"{module}.{name}", boom)


def refused(capsys, argv: list[str], *fragments: str) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (argv, err)
    return err


@pytest.mark.parametrize("argv, fragments", [
    (["--threads", "-1", "generate", "x"], ["argument --threads", "integer >= 0", "'-1'"]),
    (["generate", "--window", "abc", "x"], ["argument --window", "or 'auto'", "'abc'"]),
    (["generate", "--window", "0", "x"], ["argument --window", ">= 1"]),
    (["generate", "--max-new-tokens", "0", "x"], ["argument --max-new-tokens", "integer >= 1"]),
    (["generate", "--top-p", "1.5", "x"], ["argument --top-p", "(0, 1]"]),
    (["generate", "--temperature", "nan", "x"], ["argument --temperature", "finite"]),
    (["generate", "--init", "zeros", "x"], ["argument --init", "random", "repeat"]),
    (["generate", "--lookahead", "--method", "ar", "x"], ["--lookahead does not apply to --method ar", "--method jacobi"]),
    (["generate", "--window", "8", "--method", "ar", "x"], ["--window does not apply to --method ar"]),
    (["generate", "--method", "jacobi", "--temperature", "0.5", "x"], ["--method jacobi is greedy", "--method sjd"]),
    (["generate", "--method", "sjd", "--temperature", "0", "x"], ["sjd samples", "--method jacobi"]),
    (["generate", "--method", "jacobi", "--top-k", "5", "x"], ["--top-k applies only to sampling"]),
    (["bench", "text", "--device", "foo"], ["--device 'foo' is not a torch device", "cpu"]),
    (["bench", "tarflow", "--device", "cuda"], ["bench tarflow runs on the CPU only"]),
    (["bench", "images", "--device", "cuda:0"], ["bench images runs on the CPU only"]),
    (["bench", "images", "--batch-size", "0"], ["argument --batch-size", "integer >= 1"]),
    (["bench", "text", "--batch-size", "4"], ["--batch-size does not apply to bench text", "images, tarflow"]),
    (["bench", "tarflow", "--seeds", "2"], ["--seeds does not apply to bench tarflow"]),
    (["bench", "images", "--max-new-tokens", "9"], ["--max-new-tokens does not apply to bench images"]),
    (["bench", "images", "--tolerance", "0.1"], ["--tolerance does not apply to bench images"]),
    (["bench", "tarflow", "--per-prompt"], ["--per-prompt does not apply to bench tarflow"]),
    (["bench", "tarflow", "--quick", "--batch-size", "16"], ["--batch-size 16", "8 samples"]),
    (["bench", "text", "--seeds", "0"], ["argument --seeds"]),
    (["bench", "text", "--json", "/proc/nope/x.json"], ["--json /proc/nope", "cannot write"]),
    (["demo", "images", "--out", "/proc/nope"], ["--out /proc/nope", "cannot write there", "writable folder"]),
    (["demo", "all", "--out", "/proc/nope"], ["--out /proc/nope", "cannot write there"]),
    (["demo", "text", "--out", "somewhere"], ["demo text writes no files"]),
    (["train", "no-such-target"], ["argument target", "invalid choice"]),
])
def test_bad_arguments_are_refused_before_any_work(capsys, never_run, argv, fragments):
    refused(capsys, argv, *fragments)


def test_bench_on_a_device_this_machine_lacks(capsys, never_run):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    refused(capsys, ["bench", "text", "--device", "cuda"], "no CUDA device here", "--device cpu")


def test_an_unknown_model_lists_every_name(capsys):
    refused(capsys, ["generate", "--model", "gpt5", "x"], "'gpt5'", "shakespeare", "smollm2", "checkpoint folder")
    refused(capsys, ["bench", "text", "--model", "gpt5"], "smollm2")


def test_a_checkpoint_with_corrupt_weights_is_named(capsys, checkpoint, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((checkpoint / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"\x93garbage, not safetensors" * 20)
    refused(capsys, ["generate", "--model", str(broken), "x"], str(broken), "model.safetensors", "damaged")
    (broken / "config.json").write_text('{"architecture": ')
    refused(capsys, ["generate", "--model", str(broken), "x"], str(broken), "damaged")


def test_window_and_length_beyond_the_models_context(capsys, checkpoint):
    refused(capsys, ["generate", "--model", str(checkpoint), "--window", "5000", "x"],
            "--window 5000", "context of 64 positions", "--window auto")
    refused(capsys, ["generate", "--model", str(checkpoint), "--max-new-tokens", "100", "abc"],
            "--max-new-tokens 100", "64-position context", "--max-new-tokens 61")


def test_bundled_model_window_5000_names_its_1024_positions(capsys):
    refused(capsys, ["generate", "--window", "5000", "x"], "model shakespeare has a context of 1024 positions")


def test_help_shows_defaults_and_describes_every_option(capsys):
    import argparse

    from jacobix.cli import parser as _parser

    for command in (["generate"], ["bench", "text"], ["demo"], []):
        assert main([*command, "--help"]) == 0
        assert "(default: " in capsys.readouterr().out
    parsers, described = [_parser()], 0
    while parsers:
        for action in parsers.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            else:
                assert action.help and len(action.help) > 10, action.option_strings or action.dest
                described += 1
    assert described > 25


def test_ar_alone_is_greedy_unless_a_temperature_is_given(capsys, checkpoint):
    base = ["generate", "--model", str(checkpoint), "--max-new-tokens", "10", "--no-progress", "--method", "ar", "ab"]
    assert main(base) == 0
    greedy = capsys.readouterr().out
    assert "=== ar: greedy, window 1 ===" in greedy
    assert main(base[:-1] + ["--temperature", "1.5", "--seed", "3", "ab"]) == 0
    sampled = capsys.readouterr().out
    assert "=== ar: sampling at temperature 1.5, window 1 ===" in sampled
    assert main(["generate", "--model", str(checkpoint), "--max-new-tokens", "10", "--no-progress", "--method", "all",
                 "ab"]) == 0
    everything = capsys.readouterr().out
    assert greedy.split("=== ar")[1] .split("---")[0] == everything.split("=== ar")[1].split("---")[0]


def test_header_says_auto_window(capsys, checkpoint):
    assert main(["generate", "--model", str(checkpoint), "--max-new-tokens", "10", "--no-progress", "--method", "jacobi",
                 "--window", "auto", "--lookahead", "ab"]) == 0
    assert "=== jacobi: greedy, window auto (1-16), n-gram pool drafts ===" in capsys.readouterr().out


def test_quick_keeps_explicit_seeds_and_tokens(monkeypatch, capsys):
    import jacobix.bench.text as text

    seen = {}

    class Stop(Exception):
        pass

    def record(config, **kwargs):
        seen["config"] = config
        raise Stop

    monkeypatch.setattr(text, "bench_text", record)
    with pytest.raises(Stop):
        main(["bench", "text", "--quick"])
    assert seen["config"].seeds == (0,) and seen["config"].max_new_tokens == 60
    with pytest.raises(Stop):
        main(["bench", "text", "--quick", "--seeds", "2", "--max-new-tokens", "30"])
    assert seen["config"].seeds == (0, 1) and seen["config"].max_new_tokens == 30


def test_the_readme_demo_command_parses_with_and_without_a_target(monkeypatch, capsys, tmp_path):
    """`jacobix demo` (the README's first command) and `jacobix demo images --quick` reach the demo."""
    import jacobix.cli as cli
    import jacobix.cli.demo as cli_demo

    seen = []
    monkeypatch.setattr(cli_demo, "run", lambda args: seen.append((args.target, args.quick)) or 0)
    assert cli.main(["demo", "--out", str(tmp_path)]) == 0
    assert cli.main(["demo", "images", "--quick", "--out", str(tmp_path)]) == 0
    assert seen == [("all", False), ("images", True)]
