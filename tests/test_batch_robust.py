"""generate-batch and bench refuse bad input with one line before any work, a failed start leaves
nothing that blocks the corrected rerun, and a resume names a damaged output file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from jacobix import assets
from jacobix.cli import main

TINY = ["--max-new-tokens", "4", "--batch-size", "2"]


@pytest.fixture
def rows(tmp_path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "prompt": "ROMEO:"}) for i in range(3)) + "\n")
    return path


def run(argv: list[str], capsys) -> tuple[int, str]:
    status = main(argv)
    return status, capsys.readouterr().err.strip()


def batch(rows: Path, out: Path, *extra: str) -> list[str]:
    return ["generate-batch", "--input", str(rows), "--output", str(out), *TINY, *extra]


@pytest.mark.parametrize("extra,message", [
    (["--backend", "ray", "--num-cpus", "0"], "argument --num-cpus"),
    (["--backend", "ray", "--gpus-per-actor", "nan"], "argument --gpus-per-actor"),
    (["--backend", "ray", "--gpus-per-actor", "-1"], "argument --gpus-per-actor"),
    (["--backend", "ray", "--num-cpus", "1", "--actors", "3"], "cannot hold 3 actors"),
    (["--cfg-scale", "inf"], "argument --cfg-scale"),
    (["--model", "no-such-model"], "--model no-such-model: not a text model"),
    (["--model", "fmnist-vq"], "is a bundled vq model"),
])
def test_bad_options_are_one_line_and_write_nothing(rows, tmp_path, capsys, extra, message):
    out = tmp_path / "out" / "o.jsonl"
    status, err = run(batch(rows, out, *extra), capsys)
    assert status == 2 and message in err.splitlines()[-1], err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_paths_that_cannot_work_are_refused(rows, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    status, err = run(batch(rows, tmp_path / "file" / "o.jsonl"), capsys)
    assert status == 2 and f"lies under the file {tmp_path / 'file'}" in err
    status, err = run(batch(rows, tmp_path), capsys)
    assert status == 2 and "is a folder" in err
    status, err = run(batch(tmp_path, tmp_path / "o.jsonl"), capsys)
    assert status == 2 and "--input" in err and "a folder" in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    status, err = run(batch(empty, tmp_path / "o.jsonl"), capsys)
    assert status == 2 and "holds no rows" in err and not (tmp_path / "o.jsonl").exists()


def test_malformed_rows_are_named_by_line(tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": ""}\n[1]\n{"id": 1, "prompt": "b"}\n')
    status, err = run(batch(path, tmp_path / "o.jsonl"), capsys)
    assert status == 2
    assert "line 2: the prompt is empty" in err and "line 3: a JSON list" in err and "line 4: duplicate id 1" in err
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"label": 3}\n{"label": 10}\n{"label": -1}\n')
    status, err = run(["generate-batch", "--input", str(labels), "--output", str(tmp_path / "i.jsonl"),
                       "--model", "fmnist-ar", "--method", "jacobi"], capsys)
    assert status == 2 and "line 2: label 10 is not a class" in err and "line 3: label -1" in err


def test_a_truncated_checkpoint_is_named_before_any_work(rows, tmp_path, capsys):
    folder = Path(shutil.copytree(assets.ROOT / "shakespeare", tmp_path / "model"))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    out = tmp_path / "out" / "o.jsonl"
    status, err = run(batch(rows, out, "--model", str(folder)), capsys)
    assert status == 2 and f"{weights}: not a readable safetensors file" in err
    assert not (tmp_path / "out").exists()


def test_a_failed_start_leaves_nothing_that_blocks_the_corrected_rerun(rows, tmp_path, capsys):
    folder = Path(shutil.copytree(assets.ROOT / "shakespeare", tmp_path / "model"))
    (folder / "config.json").write_text("{not json")
    out = tmp_path / "o.jsonl"
    status, err = run(batch(rows, out, "--model", str(folder)), capsys)
    assert status == 2 and "config.json: not valid JSON" in err
    assert not out.exists() and not out.with_name(out.name + ".settings.json").exists()
    status, err = run(batch(rows, out), capsys)  # corrected: the bundled model, other settings
    assert status == 0, err
    assert len(out.read_text().splitlines()) == 3


def test_an_empty_output_left_by_a_failed_start_does_not_pin_its_settings(rows, tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    out.write_text("")
    out.with_name(out.name + ".settings.json").write_text(json.dumps({"model": "other", "seed": 9}))
    status, err = run(batch(rows, out), capsys)
    assert status == 0, err


def test_resume_names_a_damaged_output_or_settings_file(rows, tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    assert run(batch(rows, out), capsys)[0] == 0
    good = out.read_bytes()
    out.write_bytes(good + b"\xff\xfe garbage\n")
    status, err = run(batch(rows, out), capsys)
    assert status == 2 and f"{out} line 4 is not a result row" in err
    out.write_bytes(good)
    settings = out.with_name(out.name + ".settings.json")
    settings.write_bytes(b"\x00\x01")
    status, err = run(batch(rows, out), capsys)
    assert status == 2 and f"{settings} is damaged" in err


def test_bench_json_that_is_a_folder_is_refused_before_the_run(tmp_path, capsys):
    status, err = run(["bench", "text", "--quick", "--json", str(tmp_path)], capsys)
    assert status == 2 and f"--json {tmp_path} is a folder" in err


def test_bench_refuses_a_model_of_another_suite_or_kind(capsys):
    status, err = run(["bench", "policy", "--quick", "--suite", "pointmass", "--teacher", "metaworld-mt10-policy"], capsys)
    assert status == 2 and "--teacher metaworld-mt10-policy is not a policy of --suite pointmass" in err
    status, err = run(["bench", "policy", "--quick", "--student", "metaworld-mt10-policy-ceed"], capsys)
    assert status == 2 and "--student metaworld-mt10-policy-ceed is not a policy of --suite" in err
    status, err = run(["bench", "text", "--quick", "--model", "pointmass-policy"], capsys)
    assert status == 2 and "is a bundled policy model" in err


@pytest.mark.parametrize("target,name,option", [("text", "shakespeare", "--model"),
                                                ("policy", "pointmass-policy", "--teacher"),
                                                ("pccot", "pccot", "--runs")])
def test_bench_names_a_truncated_checkpoint_before_the_run(tmp_path, capsys, target, name, option):
    folder = Path(shutil.copytree(assets.ROOT / name, tmp_path / name))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:3000])
    extra = ["--student", "none"] if target == "policy" else []
    status, err = run(["bench", target, "--quick", option, str(folder), *extra], capsys)
    assert status == 2 and f"{weights}: not a readable safetensors file" in err, err
