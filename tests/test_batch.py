"""Batch generation without Ray: per-row seeds make a row's output independent of its batch;
JSONL jobs report bad lines by number, restart without redoing or duplicating rows, and the
command refuses bad options with exit status 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import torch

from jacobix.core.sampling import SamplingConfig
from jacobix.tokens.decoding import Decoding

from jacobix.api import generate, load_text_model
from jacobix.batch import BatchGenerator, BatchSpec, ResultWriter, finished_ids, open_job, read_rows, row_seed, run_local
from jacobix.batch.rows import row_stats
from jacobix.core.sampling import SamplingConfig
from jacobix.tokens.decoding import Decoding
from jacobix.cli import main

PROMPTS = ["ROMEO:\n", "JULIET:\nO ", "To be", "KING HENRY:\nNow, lords", "A", "Good morrow"]
# A fixed window: a row's sample and statistics then do not depend on its batch (with window="auto"
# the width each pass feeds, and so which random draws a row uses, follows the batch's history).
SPECS = {"jacobi": BatchSpec(decoding=Decoding(method="jacobi", window=16, init="repeat"), max_new_tokens=40),
         "sjd": BatchSpec(decoding=Decoding(method="sjd", window=16, init="repeat"), sampling=SamplingConfig(temperature=0.8),
                          max_new_tokens=40),
         "sjd-random-init": BatchSpec(decoding=Decoding(method="sjd", window=16, init="random"),
                                      sampling=SamplingConfig(temperature=0.8), max_new_tokens=40)}


@pytest.fixture(scope="module")
def generators() -> dict[str, BatchGenerator]:
    return {name: BatchGenerator(spec) for name, spec in SPECS.items()}


def _rows(n: int = len(PROMPTS)) -> list[dict]:
    return [{"id": f"p{i}", "prompt": PROMPTS[i % len(PROMPTS)]} for i in range(n)]


@pytest.mark.parametrize("method", list(SPECS))
def test_a_row_gives_the_same_tokens_alone_or_in_any_batch(generators, method):
    generator, rows = generators[method], _rows()
    together = generator.generate_rows(rows)
    alone = [generator.generate_rows([row])[0] for row in rows]
    shuffled = generator.generate_rows([rows[i] for i in (3, 0, 5, 1, 4, 2)])
    by_id = {r["id"]: r for r in shuffled}
    for a, b in zip(together, alone):
        assert a == b  # tokens, text and per-row stats
        assert by_id[a["id"]] == a
    assert len({tuple(r["tokens"]) for r in together}) == len(rows)


def test_row_stats_count_accepted_drafts_only_up_to_the_budget(generators):
    """With random drafts, "Good morrow" (id 5) accepts 2 drafts in its last pass in the batch
    but 1 alone (positions past its budget differ with the batch's cache capacity); it commits
    1 either way, and the row's stats count what it commits."""
    text_model = load_text_model("shakespeare")
    texts = ["ROMEO:\n", "JULIET:\nO ", "To be", "KING HENRY:\nNow", "A", "Good morrow"]
    prompts = [text_model.tokenizer.encode(text).tolist() for text in texts]

    def stats(ids):
        return generate(text_model.model, [prompts[i] for i in ids], method="sjd", window=16, init="random", temperature=0.8,
                        max_new_tokens=40, generator=[torch.Generator().manual_seed(row_seed(0, i)) for i in ids]).stats
    raw, alone = stats(range(6)), stats([5])
    assert int(raw.accepted_per_pass[:, 5].sum()) != int(alone.accepted_per_pass[:, 0].sum())  # the raw count moves
    assert raw.per_row()[5] == alone.per_row()[0]  # what the row committed does not
    assert row_stats(raw) == raw.per_row()


def test_coupled_sjd_rows_do_not_depend_on_their_batch():
    """sjd-coupled grows each row's noise table by amounts set by that row alone, from its own generator."""
    text_model, rows = load_text_model("shakespeare"), _rows()
    prompts = [text_model.tokenizer.encode(r["prompt"]).tolist() for r in rows]

    def run(indices):
        return generate(text_model.model, [prompts[i] for i in indices], method="sjd-coupled", init="repeat",
                        temperature=0.8, max_new_tokens=40, window=8,
                        generator=[torch.Generator().manual_seed(row_seed(0, i)) for i in indices]).tokens
    together = run(range(len(rows)))
    for i in range(len(rows)):
        assert torch.equal(run([i])[0], together[i])
    BatchSpec(decoding=Decoding(method="sjd-coupled"), sampling=SamplingConfig(temperature=0.8))  # offered to batch jobs


def test_greedy_rows_equal_sequential_greedy_decoding(generators):
    text_model = load_text_model("shakespeare")
    for row in generators["jacobi"].generate_rows(_rows()):
        prompt = text_model.tokenizer.encode(row["prompt"])
        reference = generate(text_model.model, prompt, method="ar", max_new_tokens=40).tokens[0]
        assert row["tokens"] == reference.tolist()
        assert row["stats"]["new_tokens"] == 40 and row["stats"]["forward_passes"] <= 39


def test_sampled_rows_follow_their_seed_not_their_neighbours(generators):
    row = _rows(1)[0]
    first = generators["sjd"].generate_rows([row])[0]
    renamed = generators["sjd"].generate_rows([{**row, "id": "other"}])[0]
    assert renamed["tokens"] != first["tokens"]  # another id, another seed
    reseeded = BatchGenerator(BatchSpec(decoding=Decoding(method="sjd", init="repeat"), sampling=SamplingConfig(temperature=0.8), max_new_tokens=40, seed=1)).generate_rows([row])[0]
    assert reseeded["tokens"] != first["tokens"]
    assert row_seed(0, 7) == row_seed(0, "7") != row_seed(1, 7)
    assert 0 <= row_seed(123, "x") < 2**63


def test_image_rows_are_the_same_pngs_in_any_batch(tmp_path):
    rows = [{"id": f"img{label}", "label": label} for label in (0, 7, 9)]
    pngs = {}
    for name, batches in (("together", [rows]), ("alone", [[r] for r in rows])):
        spec = BatchSpec(model="fmnist-ar", decoding=Decoding(method="sjd", window=16), sampling=SamplingConfig(temperature=1.0), image_dir=str(tmp_path / name))
        generator = BatchGenerator(spec)
        results = [r for batch in batches for r in generator.generate_rows(batch)]
        assert [r["label"] for r in results] == [0, 7, 9]
        assert all(r["stats"]["new_tokens"] == 196 for r in results)
        pngs[name] = [Path(r["png"]).read_bytes() for r in results]
    assert pngs["together"] == pngs["alone"]
    assert pngs["together"][0][:8] == b"\x89PNG\r\n\x1a\n"


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_bad_lines_are_reported_with_their_numbers(tmp_path):
    source = _write(tmp_path / "in.jsonl", ['{"id": "a", "prompt": "x"}', "{not json", "", '[1, 2]',
                                            '{"id": "a", "prompt": "again"}', '{"prompt": 3}', '{"prompt": "no id"}'])
    rows, bad = read_rows(source, images=False)
    assert rows == [{"id": "a", "prompt": "x"}, {"id": 7, "prompt": "no id"}]
    assert [(b.line, b.reason.split(" ")[0]) for b in bad] == [(2, "not"), (4, "a"), (5, "duplicate"), (6, "needs")]
    with pytest.raises(ValueError, match=r"4 bad line\(s\):\n  line 2: not JSON"):
        open_job(source, tmp_path / "out.jsonl", images=False, on_bad_line="error")
    assert len(open_job(source, tmp_path / "out.jsonl", images=False, on_bad_line="skip").bad_lines) == 4
    labels, bad = read_rows(_write(tmp_path / "img.jsonl", ['{"label": 3}', '{"label": "3"}', '{"label": true}']),
                            images=True)
    assert labels == [{"id": 1, "label": 3}] and [b.line for b in bad] == [2, 3]


class Interrupted(Exception):
    pass


def test_an_interrupted_job_restarts_without_redoing_or_duplicating_rows(tmp_path, generators):
    spec, rows = BatchSpec(decoding=Decoding(method="sjd", init="repeat"), sampling=SamplingConfig(temperature=0.8), max_new_tokens=40, batch_size=2), _rows(6)
    source = _write(tmp_path / "in.jsonl", [json.dumps(r) for r in rows])
    full, cut = tmp_path / "full.jsonl", tmp_path / "cut.jsonl"
    with ResultWriter(full) as writer:
        run_local(spec, rows, writer, generator=generators["sjd"])

    def crash(done: int) -> None:
        if done == 4:
            raise Interrupted
    with pytest.raises(Interrupted), ResultWriter(cut) as writer:
        run_local(spec, open_job(source, cut, images=False).rows, writer, generator=generators["sjd"], on_batch=crash)
    with cut.open("a") as file:  # a line torn by a crash mid-write
        file.write('{"id": "p4", "prompt": "A", "te')
    job = open_job(source, cut, images=False)
    assert job.finished == 4 and [r["id"] for r in job.rows] == ["p4", "p5"] and job.cut > 0
    with ResultWriter(cut) as writer:
        run_local(spec, job.rows, writer, generator=generators["sjd"])
    assert cut.read_text() == full.read_text()
    assert len(finished_ids(cut)[0]) == 6 and open_job(source, cut, images=False).rows == []


def test_an_output_of_other_settings_is_refused(tmp_path, capsys):
    source = _write(tmp_path / "in.jsonl", ['{"id": 1, "prompt": "ROMEO:\\n"}'])
    out = tmp_path / "out.jsonl"
    assert main(["generate-batch", "--input", str(source), "--output", str(out), "--max-new-tokens", "8"]) == 0
    assert main(["generate-batch", "--input", str(source), "--output", str(out), "--max-new-tokens", "9"]) == 2
    assert "max_new_tokens differ" in capsys.readouterr().err
    assert main(["generate-batch", "--input", str(source), "--output", str(out), "--max-new-tokens", "8",
                 "--batch-size", "3"]) == 0  # the batch size changes no row
    assert len(out.read_text().splitlines()) == 1


def test_the_command_refuses_bad_input_and_options(tmp_path, capsys):
    source = _write(tmp_path / "in.jsonl", ['{"id": 1, "prompt": "ROMEO:\\n"}', "oops", '{"id": 2, "prompt": "To be"}'])
    out = tmp_path / "out.jsonl"
    base = ["generate-batch", "--input", str(source), "--output", str(out), "--max-new-tokens", "8"]
    assert main(base) == 2
    assert "line 2: not JSON" in capsys.readouterr().err and not out.exists()
    assert main([*base, "--on-bad-line", "skip"]) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "line 2" in captured.err
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [1, 2]
    assert main([*base, "--backend", "spark"]) == 2
    assert "invalid choice: 'spark'" in capsys.readouterr().err
    assert main([*base, "--actors", "2"]) == 2
    assert "--actors applies to --backend ray only" in capsys.readouterr().err


def test_the_ray_engine_without_ray_names_the_install_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError, as when it is not installed
    source = _write(tmp_path / "in.jsonl", ['{"id": 1, "prompt": "ROMEO:\\n"}'])
    assert main(["generate-batch", "--input", str(source), "--output", str(tmp_path / "o.jsonl"), "--backend", "ray"]) == 2
    assert "pip install 'jacobix[ray]'" in capsys.readouterr().err


def test_specs_are_checked():
    with pytest.raises(ValueError, match="temperature > 0"):
        BatchSpec(decoding=Decoding(method="sjd"))
    with pytest.raises(ValueError, match="greedy"):
        BatchSpec(decoding=Decoding(method="jacobi"), sampling=SamplingConfig(temperature=0.5))
    with pytest.raises(ValueError, match="image_dir"):
        BatchSpec(model="fmnist-ar", decoding=Decoding(method="sjd"), sampling=SamplingConfig(temperature=1.0))
    with pytest.raises(ValueError, match="unknown method"):
        BatchSpec(decoding=Decoding(method="beam"))


def test_a_killed_command_finishes_on_the_second_run(tmp_path, generators):
    """SIGKILL mid-job (no clean-up runs), then the same command: every row once, as one run writes them."""
    import os
    import signal
    import subprocess
    import time

    rows = _rows(12)
    source = _write(tmp_path / "in.jsonl", [json.dumps(r) for r in rows])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    killed = tmp_path / "killed.jsonl"
    command = [sys.executable, "-m", "jacobix.cli", "generate-batch", "--input", str(source), "--output", str(killed),
               "--method", "sjd", "--window", "16", "--batch-size", "2", "--max-new-tokens", "40"]
    job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while (not killed.exists() or len(killed.read_bytes().splitlines()) < 2) and time.monotonic() < deadline:
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert 2 <= len(killed.read_text().splitlines()) < 12, "the job was not stopped half-way"
    assert subprocess.run(command, env=env, capture_output=True, timeout=300).returncode == 0
    whole = tmp_path / "whole.jsonl"
    with ResultWriter(whole) as writer:
        run_local(SPECS["sjd"], rows, writer, generator=generators["sjd"])
    assert killed.read_text() == whole.read_text()
