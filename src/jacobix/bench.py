"""``jacobix bench text``: sequential vs Jacobi vs SJD on a text model, measured side by side.

Every setting runs on the same prompts and seeds, interleaved, in one process, so the ratios
compare like with like. Forward passes are exact counts; wall times are this machine's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from jacobix.generate import generate
from jacobix.models.registry import TextModel, load_text_model

DEFAULT_PROMPTS = (
    "ROMEO:\n",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n",
    "KING HENRY:\nOnce more unto the breach, dear friends, once more;\n",
    "HAMLET:\nTo be, or not to be, that is the question:\n",
)


@dataclass(frozen=True, kw_only=True)
class Setting:
    """One decoding configuration of the benchmark."""

    label: str
    method: str
    window: int = 1
    init: str = "random"
    sampled: bool = False


DEFAULT_SETTINGS = (
    Setting(label="ar greedy", method="ar"),
    Setting(label="jacobi w16 random", method="jacobi", window=16),
    Setting(label="jacobi w16 repeat", method="jacobi", window=16, init="repeat"),
    Setting(label="ar sample", method="ar", sampled=True),
    Setting(label="sjd w16 random", method="sjd", window=16, sampled=True),
    Setting(label="sjd w16 repeat", method="sjd", window=16, init="repeat", sampled=True),
)


@dataclass(frozen=True, kw_only=True)
class TextBenchConfig:
    model: str = "shakespeare"
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    settings: tuple[Setting, ...] = DEFAULT_SETTINGS
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = None
    seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        if not self.prompts or not self.seeds:
            raise ValueError("TextBenchConfig needs at least one prompt and one seed")
        if self.max_new_tokens < 1:
            raise ValueError("TextBenchConfig.max_new_tokens must be >= 1")


@dataclass
class BenchRow:
    setting: Setting
    passes: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    mismatches: int = 0  # greedy runs whose output differed from greedy AR (must stay 0)
    runs: int = 0

    @property
    def tokens_per_pass(self) -> float:
        return self.tokens / max(self.passes, 1)


@dataclass
class TextBenchResult:
    config: TextBenchConfig
    rows: list[BenchRow] = field(default_factory=list)

    def reference(self, row: BenchRow) -> BenchRow:
        """The sequential row that ``row`` is compared with (greedy or sampling AR)."""
        return next(r for r in self.rows if r.setting.method == "ar" and r.setting.sampled == row.setting.sampled)

    def table(self) -> str:
        head = f"{'setting':<20} {'passes':>7} {'tokens':>7} {'tok/pass':>8} {'wall s':>8} {'passes vs AR':>12} {'wall vs AR':>10} {'exact':>6}"
        lines = [head, "-" * len(head)]
        for row in self.rows:
            ref = self.reference(row)
            exact = "-" if row.setting.sampled else ("yes" if row.mismatches == 0 else f"NO({row.mismatches})")
            lines.append(
                f"{row.setting.label:<20} {row.passes:>7} {row.tokens:>7} {row.tokens_per_pass:>8.2f} {row.wall_s:>8.3f} "
                f"{ref.passes / max(row.passes, 1):>11.2f}x {ref.wall_s / max(row.wall_s, 1e-9):>9.2f}x {exact:>6}"
            )
        c = self.config
        lines.append(
            f"model {c.model}; {len(c.prompts)} prompts x {len(c.seeds)} seeds x {c.max_new_tokens} new tokens; "
            f"sampling at temperature {c.temperature}; ratios = AR / setting (higher is better); "
            f"{torch.get_num_threads()} CPU threads"
        )
        return "\n".join(lines)


def bench_text(config: TextBenchConfig = TextBenchConfig(), *, text_model: TextModel | None = None) -> TextBenchResult:
    """Run every setting on every prompt and seed; return summed counts and times."""
    text_model = text_model or load_text_model(config.model)
    rows = [BenchRow(setting=s) for s in config.settings]
    prompts = [text_model.tokenizer.encode(p) for p in config.prompts]
    generate(text_model.model, prompts[0], method="jacobi", max_new_tokens=8, window=4)  # warm-up
    for prompt in prompts:
        for seed in config.seeds:
            greedy_reference = None
            for row in rows:
                result = _run(text_model, prompt, row.setting, config, seed)
                row.passes += result.stats.forward_passes
                row.tokens += sum(result.stats.new_tokens)
                row.wall_s += result.stats.wall_time_s
                row.runs += 1
                if not row.setting.sampled:
                    greedy_reference = greedy_reference if greedy_reference is not None else result.tokens[0]
                    row.mismatches += int(not torch.equal(result.tokens[0], greedy_reference))
    return TextBenchResult(config=config, rows=rows)


def _run(text_model: TextModel, prompt, setting: Setting, config: TextBenchConfig, seed: int):
    sampling = dict(temperature=config.temperature, top_k=config.top_k) if setting.sampled else {}
    return generate(
        text_model.model,
        prompt,
        method=setting.method,
        window=setting.window,
        init=setting.init,
        max_new_tokens=config.max_new_tokens,
        generator=torch.Generator().manual_seed(seed),
        eos_token_id=text_model.eos_token_id,
        **sampling,
    )
