"""Plant small, plausible bugs in the core modules one at a time and check the fast suite fails.

Each mutant is a regular-expression substitution in the library source (the file is found by a
glob, so a module that moves or splits only needs its glob updated). For every mutant the
script checks the pattern matches exactly once, writes the mutated file, runs
``pytest -m "not slow" -x -q`` (test files that should catch it first, then the whole fast
suite), and restores the original text in a ``finally`` block, also on Ctrl-C. A mutant is
*killed* when the suite fails or times out, *survived* when it passes.

Usage (from the repository root)::

    python tools/mutate.py                 # every mutant
    python tools/mutate.py --list          # names only
    python tools/mutate.py --only top-p-one-too-few temperature-twice
    python tools/mutate.py --timeout 900   # seconds per suite run

Exit status: 0 when every mutant is killed, 1 when one survives, 2 on a mutant that no longer
applies (its pattern matches zero or several times: retarget it).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    files: str  # glob under the repository root
    pattern: str  # regular expression; must match exactly once across the files
    replacement: str
    first: tuple[str, ...] = ()  # test files to run before the rest of the suite (speed only)


MUTANTS = (
    Mutant("top-p-one-too-few", "src/jacobix/core/sampling.py",
           r"mass_before = probs\.cumsum\(-1\) - probs", "mass_before = probs.cumsum(-1)", ("tests/test_sampling.py",)),
    Mutant("top-p-one-too-many-at-boundary", "src/jacobix/core/sampling.py",
           r"drop_sorted = mass_before >= p", "drop_sorted = mass_before > p", ("tests/test_sampling.py",)),
    Mutant("top-p-one-too-many", "src/jacobix/core/sampling.py",
           r"drop_sorted = mass_before >= p", "drop_sorted = (mass_before - probs.roll(1, -1)) >= p", ("tests/test_sampling.py",)),
    Mutant("temperature-twice", "src/jacobix/core/sampling.py",
           r"logits = logits / config\.temperature", "logits = logits / config.temperature / config.temperature",
           ("tests/test_sampling.py",)),
    Mutant("top-k-one-too-many", "src/jacobix/core/sampling.py",
           r"k = min\(k, logits\.shape\[-1\]\)", "k = min(k + 1, logits.shape[-1])", ("tests/test_sampling.py",)),
    Mutant("top-k-one-too-few", "src/jacobix/core/sampling.py",
           r"k = min\(k, logits\.shape\[-1\]\)", "k = max(min(k - 1, logits.shape[-1]), 1)", ("tests/test_sampling.py",)),
    Mutant("speculative-ignores-p-draft", "src/jacobix/core/acceptance.py",
           r"passed = \(u \* draft_at_draft < target_at_draft\)", "passed = (u < target_at_draft)",
           ("tests/test_acceptance.py",)),
    Mutant("speculative-residual-unclamped", "src/jacobix/core/acceptance.py",
           r"\(target_row - p_draft_padded\[rows, accepted\]\)\.clamp_min\(0\.0\)", "(target_row - p_draft_padded[rows, accepted])",
           ("tests/test_acceptance.py",)),
    Mutant("greedy-accept-shifted-targets", "src/jacobix/core/acceptance.py",
           r"drafts == target_tokens\[:, :-1\]", "drafts == target_tokens[:, 1:]", ("tests/test_acceptance.py",)),
    Mutant("greedy-accept-one-more", "src/jacobix/core/acceptance.py",
           r"return leading_true\(drafts == target_tokens\[:, :-1\]\)",
           "return (leading_true(drafts == target_tokens[:, :-1]) + 1).clamp(max=drafts.shape[1])",
           ("tests/test_acceptance.py",)),
    Mutant("tolerance-accept-strict", "src/jacobix/core/acceptance.py",
           r"\(guesses - head\)\.abs\(\) <= atol", "(guesses - head).abs() < atol", ("tests/test_acceptance.py",)),
    Mutant("kv-mask-sees-own-slot-not", "src/jacobix/core/cache.py",
           r"slots\[None, None, None, :\] <= positions", "slots[None, None, None, :] < positions", ("tests/test_engine.py",)),
    Mutant("engine-commit-unclamped", "src/jacobix/core/engine.py",
           r"torch\.minimum\(decision\.n_commit, budget\)", "decision.n_commit", ("tests/test_engine.py",)),
    Mutant("flow-rollback-ignores-stale-slots", "src/jacobix/flows/sampling.py",
           r"start = torch\.minimum\(self\.cache_valid, n - 1\)", "start = n - 1", ("tests/test_gs_jacobi_reference.py",)),
    Mutant("hf-position-ids-shifted", "src/jacobix/integrations/hf/**/*.py",
           r"position_ids=positions\b", "position_ids=positions + 1", ("tests/test_hf.py",)),
    Mutant("copy-init-offset-off-by-one", "src/jacobix/tokens/proposers/**/*.py",
           r"source = positions - hops \* offset", "source = positions - hops * offset - 1", ("tests/test_draft_rules.py",)),
    Mutant("candidates-accept-no-renormalise", "src/jacobix/core/acceptance.py",
           r"u\[:, t\]\.gather\(1, rank\) \* before < mass", "u[:, t].gather(1, rank) < mass",
           ("tests/test_lookahead_multi.py", "tests/test_acceptance.py")),
    Mutant("verifier-skips-sibling-copy", "src/jacobix/tokens/verify.py",
           r"self\.cache\.copy_slots\(source\.repeat\(r\), positions\.repeat\(r, 1\)\)", "pass",
           ("tests/test_lookahead_multi.py",)),
    Mutant("first-token-skips-processors", "src/jacobix/tokens/prompts.py",
           r"verifier\.sampling, verifier\.processors\)", "verifier.sampling, ())", ("tests/test_errors.py",)),
    Mutant("coupled-redraft-without-noise", "src/jacobix/tokens/proposers/coupled.py",
           r"\(p_target / race\.to\(p_target\.dtype\)\)\.argmax\(-1\)", "p_target.argmax(-1)",
           ("tests/test_token_seams.py", "tests/test_images.py")),
    Mutant("unfed-drafts-shift-a-position", "src/jacobix/tokens/problem.py",
           r"rest = self\.candidates\.tokens\[rows, verdict\.winner, fed \+ 1 :\]",
           "rest = self.candidates.tokens[rows, verdict.winner, fed:]", ("tests/test_lookahead_multi.py",)),
    # lossy rules at exactly their thresholds, lossless variants' laws (tests/test_boundaries.py)
    Mutant("ceed-mixed-labels-strict-at-delta-max", "src/jacobix/train/ceed.py",
           r"near = distance <= delta_max", "near = distance < delta_max", ("tests/test_boundaries.py",)),
    Mutant("settle-test-ignores-the-last-draft-it-rests-on", "src/jacobix/core/engine.py",
           r">= budget\[:, None\] - 1", ">= budget[:, None] - 2", ("tests/test_boundaries.py",)),
    Mutant("settle-test-reads-the-slot-past-the-budget", "src/jacobix/core/engine.py",
           r">= budget\[:, None\] - 1", ">= budget[:, None]", ("tests/test_boundaries.py",)),
    Mutant("sweep-cap-one-sweep-late", "src/jacobix/core/engine.py",
           r"forced \|= state\.sweeps_on_window \+ 1 >= cap", "forced |= state.sweeps_on_window + 1 > cap",
           ("tests/test_boundaries.py",)),
    Mutant("bin-tolerance-strict-at-max-moved", "src/jacobix/core/acceptance.py",
           r"\(old - new\)\.abs\(\) <= self\.max_moved", "(old - new).abs() < self.max_moved", ("tests/test_boundaries.py",)),
    Mutant("bin-tolerance-range-one-too-wide", "src/jacobix/core/acceptance.py",
           r"\(old < self\.first \+ self\.count\)", "(old <= self.first + self.count)", ("tests/test_boundaries.py",)),
    Mutant("segment-rule-strict-at-tolerance", "src/jacobix/core/acceptance.py",
           r"done = \(residual <= tolerance\)", "done = (residual < tolerance)", ("tests/test_boundaries.py",)),
    Mutant("segment-rule-one-sweep-late", "src/jacobix/core/acceptance.py",
           r"\| \(sweeps >= max_sweeps\)", "| (sweeps > max_sweeps)", ("tests/test_boundaries.py",)),
    Mutant("sjd2-verifies-a-slot-one-level-noisy", "src/jacobix/tokens/proposers/denoising.py",
           r"torch\.cumprod\(\(~noisy\)\.long\(\), 1\)\.bool\(\)", "torch.cumprod((level <= 1).long(), 1).bool()",
           ("tests/test_boundaries.py", "tests/test_sjd2.py")),
    Mutant("sjd2-verifies-the-first-noisy-slot", "src/jacobix/tokens/proposers/denoising.py",
           r"torch\.cumprod\(\(~noisy\)\.long\(\), 1\)\.bool\(\)",
           "torch.cat([torch.ones_like(noisy[:, :1]), torch.cumprod((~noisy).long(), 1).bool()[:, :-1]], 1)",
           ("tests/test_boundaries.py", "tests/test_sjd2.py")),
    # trainers: checks before work, staging, publishing (tests/test_train_robust.py)
    Mutant("train-rate-zero-accepted", "src/jacobix/train/options.py",
           r"if value <= 0:", "if value < 0:", ("tests/test_train_robust.py",)),
    Mutant("train-nan-accepted", "src/jacobix/train/options.py",
           r"if not math\.isfinite\(value\):", "if False:", ("tests/test_train_robust.py",)),
    Mutant("train-other-teacher-accepted", "src/jacobix/train/options.py",
           r"if not same_model\(given, expected\):", "if False:", ("tests/test_train_robust.py",)),
    Mutant("train-writes-into-the-bundled-folder", "src/jacobix/train/__init__.py",
           r"return publish\.staging\(target\)", "return target", ("tests/test_train_robust.py",)),
    Mutant("train-publishes-an-early-stop", "src/jacobix/train/recipe.py",
           r"any\(getattr\(args, name, None\) for name in UNFINISHED\)", "False", ("tests/test_train_robust.py",)),
    Mutant("publish-ignores-the-recorded-teacher", "src/jacobix/train/publish.py",
           r"        if not same:", "        if False:", ("tests/test_train_robust.py",)),
    Mutant("publish-ships-training-state", "src/jacobix/train/publish.py",
           r"if item\.name in TRAINING_STATE:", "if False:", ("tests/test_train_robust.py",)),
    Mutant("resume-skips-the-checkpoint-check", "src/jacobix/train/distributed.py",
           r"            check_checkpoint_file\(self\.resume\)", "            pass", ("tests/test_train_robust.py",)),
    # loaders (tests/test_checkpoint_errors.py)
    Mutant("loader-takes-a-bool-for-an-int", "src/jacobix/core/checkpoints.py",
           r"return isinstance\(value, int\) and not isinstance\(value, bool\)", "return isinstance(value, int)",
           ("tests/test_checkpoint_errors.py",)),
    Mutant("loader-skips-missing-keys", "src/jacobix/core/checkpoints.py",
           r"if required and name not in values:", "if False:", ("tests/test_checkpoint_errors.py",)),
    Mutant("loader-skips-the-shape-check", "src/jacobix/core/checkpoints.py",
           r"if name in own and own\[name\]\.shape != tensor\.shape:", "if False:", ("tests/test_checkpoint_errors.py",)),
    # inputs at the door
    Mutant("pccot-keeps-padding-past-the-longest-question", "src/jacobix/latent/thoughts.py",
           r"questions = questions\[:, : int\(lengths\.max\(\)\)\]", "questions = questions", ("tests/test_api_checks.py",)),
    Mutant("batch-empty-output-pins-its-settings", "src/jacobix/batch/jobs.py",
           r" and Path\(output_path\)\.stat\(\)\.st_size > 0", "", ("tests/test_batch_robust.py",)),
)


def locate(mutant: Mutant) -> tuple[Path, str] | str:
    """The one file the pattern matches and its text, or a message saying why it does not apply."""
    hits = []
    for path in sorted(ROOT.glob(mutant.files)):
        text = path.read_text()
        count = len(re.findall(mutant.pattern, text))
        if count:
            hits.append((path, text, count))
    if len(hits) != 1 or hits[0][2] != 1:
        where = ", ".join(f"{p.relative_to(ROOT)} x{c}" for p, _, c in hits) or "nowhere"
        return f"pattern matches {where} (needs exactly one match in {mutant.files}): retarget it"
    return hits[0][0], hits[0][1]


def run_suite(first: tuple[str, ...], timeout: float) -> tuple[str, float, str]:
    """('killed' | 'survived' | 'timeout', seconds, last output line) of the fast suite.

    The test files named in ``first`` run alone first (a quick kill); if they pass, the whole
    fast suite runs.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "pytest", "-m", "not slow", "-x", "-q", "-p", "no:cacheprovider"]
    runs = [[t for t in first if (ROOT / t).exists()], ["tests"]]
    start, last = time.monotonic(), ""
    for tests in (r for r in runs if r):
        left = timeout - (time.monotonic() - start)
        try:
            done = subprocess.run([*base, *tests], cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(left, 1))
        except subprocess.TimeoutExpired:
            return "timeout", time.monotonic() - start, f"no result in {timeout:.0f} s"
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        if done.returncode != 0:
            return "killed", time.monotonic() - start, f"{' '.join(tests)}: {last}"
    return "survived", time.monotonic() - start, last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutants only")
    parser.add_argument("--list", action="store_true", help="print the mutant names and exit")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per suite run (a timeout counts as killed)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the check that the unmutated suite passes")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.only and len(mutants) != len(args.only):
        parser.error(f"unknown mutant among {args.only}; see --list")
    if args.list:
        print("\n".join(m.name for m in MUTANTS))
        return 0
    if not args.no_baseline:
        outcome, seconds, detail = run_suite((), args.timeout)
        print(f"{'(no mutant: baseline)':36} {'passes' if outcome == 'survived' else 'FAILS':9} {seconds:6.0f} s  {detail}", flush=True)
        if outcome != "survived":
            print("the unmutated fast suite must pass before mutants can be scored", file=sys.stderr)
            return 2
    results = []
    for mutant in mutants:
        found = locate(mutant)
        if isinstance(found, str):
            results.append((mutant.name, "not applied", 0.0, found))
            print(f"{mutant.name:36} not applied: {found}", flush=True)
            continue
        path, original = found
        try:
            path.write_text(re.sub(mutant.pattern, mutant.replacement, original, count=1))
            outcome, seconds, detail = run_suite(mutant.first, args.timeout)
        finally:
            path.write_text(original)
        results.append((mutant.name, outcome, seconds, detail))
        print(f"{mutant.name:36} {outcome:9} {seconds:6.0f} s  {detail}", flush=True)
    killed = sum(r[1] in ("killed", "timeout") for r in results)
    applied = sum(r[1] != "not applied" for r in results)
    print(f"\nmutation score: {killed}/{applied} killed" + (f" ({len(results) - applied} not applied)" if applied < len(results) else ""))
    for name, outcome, _, _ in results:
        if outcome == "survived":
            print(f"  survived: {name}")
    if applied < len(results):
        return 2
    return 0 if killed == applied else 1


if __name__ == "__main__":
    sys.exit(main())
