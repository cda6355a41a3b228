"""``jacobix bench text``: sequential vs Jacobi vs SJD on a text model, measured side by side.

Every setting runs on the same prompts and seeds, interleaved, in one process, so the ratios
compare like with like. Forward passes are exact counts; wall times are this machine's.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from jacobix.api import generate, load_text_model
from jacobix.bench.baselines import transformers_generate
from jacobix.bench.text_settings import (  # re-exported: the settings live beside
    CLLM_SETTINGS, DEFAULT_PROMPTS, DEFAULT_SETTINGS, HF_PROMPTS, HF_SETTINGS, Setting, model_options,
)
from jacobix.core.acceptance import leading_true
from jacobix.core.sampling import SamplingConfig
from jacobix.models.registry import TextModel
from jacobix.tokens.decoding import Decoding
from jacobix.tokens.trajectory import convergence_counts, split_blocks


@dataclass(frozen=True, kw_only=True)
class TextBenchConfig:
    model: str = "shakespeare"
    teacher: str | None = None  # also run every setting on this model (a distilled model's teacher)
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    settings: tuple[Setting, ...] = DEFAULT_SETTINGS
    max_new_tokens: int = 200
    sampling: SamplingConfig = SamplingConfig(temperature=0.8)  # of the sampled rows
    seeds: tuple[int, ...] = (0, 1, 2)
    device: str = "cpu"
    suite: str | None = None  # a task suite (jacobix.bench.text_suites): quality measured per model
    quality_problems: int = 1000  # held-out problems the suite's quality figure is measured on
    data: Path | None = None  # the plays, for the shakespeare suite's validation loss

    def __post_init__(self) -> None:
        if not self.prompts or not self.seeds:
            raise ValueError("TextBenchConfig needs at least one prompt and one seed")
        if self.max_new_tokens < 1:
            raise ValueError("TextBenchConfig.max_new_tokens must be >= 1")
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r}: no CUDA device here (this torch build: {torch.__version__}); "
                             "use --device cpu")


@dataclass
class BenchRow:
    setting: Setting
    model: str = ""
    passes: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    mismatches: int = 0  # greedy runs whose output differed from greedy AR (must stay 0)
    runs: int = 0
    per_prompt: list[list[tuple[int, int, float]]] = field(default_factory=list)  # (passes, tokens, seconds) per seed
    convergence: list[tuple[int, int]] = field(default_factory=list)  # block mode: (fast-forwarded, stationary) per block

    @property
    def tokens_per_pass(self) -> float:
        return self.tokens / max(self.passes, 1)

    def prompt_cost(self, prompt: int, what: int) -> float:
        """Median over seeds of passes (``what=0``) or seconds (``what=2``) per generated token.

        The median of interleaved repeats keeps one slow run (machine noise) out of a prompt's ratio.
        """
        return statistics.median(run[what] / max(run[1], 1) for run in self.per_prompt[prompt])

    def pass_spread(self, prompt: int) -> float:
        """Largest over smallest pass count of one prompt across its repetitions (1.0: stable)."""
        passes = [run[0] for run in self.per_prompt[prompt]]
        return max(passes) / max(min(passes), 1)


@dataclass
class TextBenchResult:
    config: TextBenchConfig
    rows: list[BenchRow] = field(default_factory=list)
    pass_costs: dict[int, float] = field(default_factory=dict)  # pass cost by width / one-token pass cost
    samples: list[tuple[str, str, str, int]] = field(default_factory=list)  # prompt, teacher, student, agreeing tokens
    quality: dict[str, dict] = field(default_factory=dict)  # per model: the suite's quality record (greedy AR)

    def role(self, model: str) -> str:
        """``teacher`` for the teacher run beside the model, else ``student`` (with a teacher) or ``model``."""
        if self.config.teacher is None:
            return "model"
        return "teacher" if model == self.config.teacher else "student"

    def quality_table(self) -> str:
        """The suite's quality figure per model (greedy sequential decoding; Jacobi rows are exact, so equal)."""
        lines = []
        for model, record in self.quality.items():
            figures = ", ".join(f"{k} {v}" for k, v in record.items())
            lines.append(f"{self.role(model)} {model}: {figures}")
        return "\n".join(lines)

    def reference(self, row: BenchRow) -> BenchRow:
        """The sequential row that ``row`` is compared with (greedy or sampling AR)."""
        return next(r for r in self.rows if r.setting.method in ("ar", "hf") and r.setting.sampled == row.setting.sampled
                    and r.model == row.model)

    def _model(self, name: str) -> str:
        """The model column, shown when a teacher runs beside the model."""
        if self.config.teacher is None:
            return ""
        width = max(len(r.model) for r in self.rows) + 1
        return f"{name:<{width}} "

    def table(self) -> str:
        head = (f"{self._model('model')}{'setting':<20} {'passes':>7} {'tokens':>7} {'tok/pass':>8} {'wall s':>8} {'passes vs AR':>12} "
                f"{'wall vs AR':>10} {'worst prompt':>12} {'exact':>6}")
        lines = [head, "-" * len(head)]
        for row in self.rows:
            ref = self.reference(row)
            exact = "-" if row.setting.sampled else ("yes" if row.mismatches == 0 else f"NO({row.mismatches})")
            worst = min((_ratio(ref, row, i, 2) for i in range(len(row.per_prompt))), default=0.0)
            lines.append(
                f"{self._model(row.model)}{row.setting.label:<20} {row.passes:>7} {row.tokens:>7} {row.tokens_per_pass:>8.2f} {row.wall_s:>8.3f} "
                f"{_per_token_ratio(ref.passes, ref.tokens, row.passes, row.tokens):>11.2f}x "
                f"{_per_token_ratio(ref.wall_s, ref.tokens, row.wall_s, row.tokens):>9.2f}x {worst:>11.2f}x {exact:>6}"
            )
        c = self.config
        lines.append(
            f"model {c.model} on {c.device}; {len(c.prompts)} prompts x {len(c.seeds)} seeds x {c.max_new_tokens} new "
            f"tokens; sampling at temperature {c.sampling.temperature}; ratios = AR / setting (higher is better; AR = first "
            f"sequential row of the same mode), per generated token (sampled runs differ in length); worst prompt = "
            f"lowest per-prompt wall ratio (median over seeds); "
            f"{_threads(torch.get_num_threads())}"
        )
        for row in self.rows:
            if row.setting.adaptive:
                lines.append(f"{self._model(row.model)}{row.setting.label}: {self.auto_vs_best_fixed(row):.2f} of the wall "
                             f"speed-up of the best fixed setting ({self.best_fixed(row).setting.label}), median prompt")
        if self.pass_costs:
            costs = ", ".join(f"w{w} {c:.2f}x" for w, c in sorted(self.pass_costs.items()) if w in (2, 4, 8, 16))
            lines.append(f"measured cost of a pass vs a one-token pass (window='auto' plans with it): {costs}")
        return "\n".join(lines)

    def convergence_table(self) -> str:
        """Block-mode rows: fast-forwarded and stationary tokens per block (CLLM, Table 3)."""
        lines = [f"{self._model('model')}{'setting':<20} {'blocks':>7} {'fast-forwarded':>15} {'stationary':>11}"]
        for row in self.rows:
            if row.convergence:
                counts = torch.tensor(row.convergence, dtype=torch.float64).mean(0).tolist()
                lines.append(f"{self._model(row.model)}{row.setting.label:<20} {len(row.convergence):>7} {counts[0]:>15.2f} "
                             f"{counts[1]:>11.2f}")
        lines.append("per block of greedy block-mode decoding: fast-forwarded = tokens a sweep committed beyond its one "
                     "sure token; stationary = tokens right while an earlier one was wrong, and never changed after")
        return "\n".join(lines) if len(lines) > 2 else ""

    def samples_table(self) -> str:
        """Greedy text of the teacher and the model for each prompt, and how many tokens agree before they split."""
        lines = []
        for prompt, teacher, student, agree in self.samples:
            lines += [f"--- prompt {prompt!r}: the first {agree} tokens agree", f"teacher: {teacher!r}",
                      f"student: {student!r}"]
        return "\n".join(lines)

    def records(self) -> list[dict]:
        """One JSON-ready object per setting (``--json``)."""
        out = []
        for row in self.rows:
            ref = self.reference(row)
            prompts = range(len(row.per_prompt))
            quality = self.quality.get(row.model, {}) if row.setting.method == "ar" and not row.setting.sampled else {}
            out.append({
                **({"suite": self.config.suite} if self.config.suite else {}),
                "setting": row.setting.label,
                "model": row.model,
                "role": self.role(row.model),
                "device": self.config.device,
                "tokens": row.tokens,
                "forward_passes": row.passes,
                "tokens_per_pass": round(row.tokens_per_pass, 4),
                "passes_vs_ar": round(_per_token_ratio(ref.passes, ref.tokens, row.passes, row.tokens), 4),
                "wall_vs_ar": round(_per_token_ratio(ref.wall_s, ref.tokens, row.wall_s, row.tokens), 4),
                "worst_prompt_wall_vs_ar": round(min(_ratio(ref, row, i, 2) for i in prompts), 4),
                "per_prompt_wall_vs_ar": [round(_ratio(ref, row, i, 2), 4) for i in prompts],
                "per_prompt_passes_vs_ar": [round(_ratio(ref, row, i, 0), 4) for i in prompts],
                "pass_spread": round(max(row.pass_spread(i) for i in prompts), 4),
                "exact": None if row.setting.sampled else row.mismatches == 0,
                "seeds": len(self.config.seeds),
                "batch_size": 1,
                **_convergence_record(row),
                **quality,
                **({"auto_vs_best_fixed": round(self.auto_vs_best_fixed(row), 4),
                    "best_fixed": self.best_fixed(row).setting.label} if row.setting.adaptive else {}),
            })
        return out

    def median_wall(self, row: BenchRow) -> float:
        """The row's wall speed-up over AR on its median prompt."""
        ref = self.reference(row)
        return statistics.median(_ratio(ref, row, i, 2) for i in range(len(row.per_prompt)))

    def best_fixed(self, row: BenchRow) -> BenchRow:
        """The fastest fixed-width row of ``row``'s method and model, or its AR row, by median-prompt
        wall (``window="auto"`` chooses the width, not the method)."""
        fixed = [r for r in self.rows if r.model == row.model and r.setting.sampled == row.setting.sampled
                 and not r.setting.adaptive and r.setting.baseline is None
                 and r.setting.decoding.method in (row.setting.decoding.method, "ar")]
        return max(fixed, key=self.median_wall)

    def auto_vs_best_fixed(self, row: BenchRow) -> float:
        """An auto row's median-prompt wall speed-up over the best fixed setting's (1.0: as fast)."""
        return self.median_wall(row) / self.median_wall(self.best_fixed(row))

    def prompt_table(self) -> str:
        """Per prompt: each setting's passes and wall-time ratios to its AR row (passes x / wall x)."""
        head = f"{self._model('model')}{'setting':<20} " + " ".join(f"{f'prompt {i}':>13}" for i in range(len(self.config.prompts)))
        lines = [head, "-" * len(head)]
        for row in self.rows:
            ref = self.reference(row)
            cells = (f"{_ratio(ref, row, i, 0):.2f}/{_ratio(ref, row, i, 2):.2f}" for i in range(len(row.per_prompt)))
            spread = max(row.pass_spread(i) for i in range(len(row.per_prompt)))
            lines.append(f"{self._model(row.model)}{row.setting.label:<20} " + " ".join(f"{cell:>13}" for cell in cells) + f" {spread:>8.2f}")
        lines[0] += f" {'spread':>8}"
        lines.append("cells: passes vs AR / wall vs AR per generated token, per prompt (medians over seeds); spread: "
                     "largest / smallest pass count of one prompt over the seeds (greedy rows: run-to-run stability)")
        return "\n".join(lines)


def _threads(count: int) -> str:
    return "1 CPU thread" if count == 1 else f"{count} CPU threads"


def _convergence_record(row: BenchRow) -> dict:
    if not row.convergence:
        return {}
    mean = torch.tensor(row.convergence, dtype=torch.float64).mean(0).tolist()
    return {"fast_forwarded_per_block": round(mean[0], 3), "stationary_per_block": round(mean[1], 3)}


def _per_token_ratio(ref_cost: float, ref_tokens: int, cost: float, tokens: int) -> float:
    """How many times cheaper per generated token ``cost`` is than ``ref_cost`` (higher is better)."""
    return (ref_cost / max(ref_tokens, 1)) / max(cost / max(tokens, 1), 1e-12)


def _ratio(ref: BenchRow, row: BenchRow, prompt: int, what: int) -> float:
    """``ref`` over ``row`` per-token cost on one prompt (``what``: 0 passes, 2 seconds)."""
    return ref.prompt_cost(prompt, what) / max(row.prompt_cost(prompt, what), 1e-12)


def bench_text(config: TextBenchConfig = TextBenchConfig(), *, text_model: TextModel | None = None) -> TextBenchResult:
    """Run every setting on every prompt and seed (and on the teacher, if any); return summed counts and times."""
    models = {config.model: text_model or load_text_model(config.model)}
    if config.teacher is not None:
        models = {config.teacher: load_text_model(config.teacher), **models}
    for m in models.values():
        m.model.to(config.device)
    rows = [BenchRow(setting=s, model=name) for name in models for s in config.settings]
    pass_costs: dict[int, float] = {}
    first = next(iter(models.values()))
    prompts = [first.tokenizer.encode(p).to(config.device) for p in config.prompts]
    for m in models.values():
        generate(m.model, prompts[0], decoding=Decoding(window=4), max_new_tokens=8)  # warm-up
        for setting in config.settings:  # "auto" settings probe their pass costs once, outside the timings
            if setting.adaptive:
                _run(m, prompts[0], setting, dataclasses.replace(config, max_new_tokens=4), seed=0)
    greedy: list[dict[str, torch.Tensor]] = []  # per prompt: each model's greedy output (the first seed's)
    for prompt in prompts:
        for row in rows:
            row.per_prompt.append([])
        for seed in config.seeds:
            greedy_reference: dict[str, torch.Tensor] = {}
            if seed == config.seeds[0]:
                greedy.append(greedy_reference)
            for row in rows:
                result = _run(models[row.model], prompt, row.setting, config, seed)
                _add(row, result, greedy_reference)
                if getattr(result.stats, "schedule", None) is not None and not pass_costs:
                    pass_costs.update(result.stats.schedule.cost_ratio)
    for row in rows:  # trajectories of block mode, recorded outside the timings
        if row.setting.block:
            for prompt in prompts:
                result = _run(models[row.model], prompt, row.setting, config, 0, record=True)
                row.convergence += [convergence_counts(b) for b in split_blocks(
                    result.trajectory, result.tokens, torch.tensor([len(prompt)]), int(row.setting.window))]
    samples = _samples(models, prompts, greedy, config) if config.teacher is not None else []
    quality = {}
    if config.suite is not None:  # outside the timings
        from jacobix.bench.text_suites import QualityInputs, get_suite

        quality = {name: get_suite(config.suite).quality(m, QualityInputs(
            problems=config.quality_problems, data=config.data, outputs=[g[name].tolist() for g in greedy if name in g]))
            for name, m in models.items()}
    return TextBenchResult(config=config, rows=rows, pass_costs=pass_costs, samples=samples, quality=quality)


def _samples(models: dict[str, TextModel], prompts: list, greedy: list[dict[str, torch.Tensor]],
             config: TextBenchConfig) -> list[tuple[str, str, str, int]]:
    """Greedy continuations of every prompt by the teacher and the model: those the greedy rows
    already made, or (with no greedy setting) one AR run each, outside the timings."""
    names = (config.teacher, config.model)
    out = []
    for text, prompt, made in zip(config.prompts, prompts, greedy):
        a, b = (made[name].cpu() if name in made else generate(
            models[name].model, prompt, decoding=Decoding(method="ar"), max_new_tokens=config.max_new_tokens,
            eos_token_id=models[name].eos_token_id).tokens[0].cpu() for name in names)
        shared = min(len(a), len(b))
        out.append((text, models[names[0]].tokenizer.decode(a), models[names[1]].tokenizer.decode(b),
                    int(leading_true(a[:shared] == b[:shared]))))
    return out


def _add(row: BenchRow, result, greedy_reference: dict[str, torch.Tensor]) -> None:
    """Add one run's counts to its row; greedy runs are checked against the model's first greedy output."""
    row.passes += result.stats.forward_passes
    row.tokens += sum(result.stats.new_tokens)
    row.wall_s += result.stats.wall_time_s
    row.per_prompt[-1].append((result.stats.forward_passes, sum(result.stats.new_tokens), result.stats.wall_time_s))
    row.runs += 1
    if not row.setting.sampled:
        reference = greedy_reference.setdefault(row.model, result.tokens[0])
        row.mismatches += int(not torch.equal(result.tokens[0].cpu(), reference.cpu()))


def _run(text_model: TextModel, prompt, setting: Setting, config: TextBenchConfig, seed: int, *, record: bool = False):
    if setting.baseline is not None:
        lookup = 10 if setting.baseline == "hf-pld" else None
        tokens, passes, seconds = transformers_generate(text_model.model, prompt, max_new_tokens=config.max_new_tokens,
                                                        eos_token_id=text_model.eos_token_id, prompt_lookup_num_tokens=lookup)
        return _HFRun(tokens=[tokens], stats=_HFStats(passes, [len(tokens)], seconds))
    sampling = config.sampling if setting.sampled else SamplingConfig()
    return generate(text_model.model, prompt, decoding=setting.decoding, sampling=sampling, max_new_tokens=config.max_new_tokens,
                    generator=torch.Generator(device=config.device).manual_seed(seed),
                    eos_token_id=text_model.eos_token_id, record=record)


@dataclass(frozen=True)
class _HFStats:
    forward_passes: int
    new_tokens: list[int]
    wall_time_s: float


@dataclass(frozen=True)
class _HFRun:
    tokens: list
    stats: _HFStats
