"""``jacobix bench images --hf janus|emu3``: transformers' own image loop vs jacobix on the same model.

Every setting decodes the same prompts, one image per call, on a model built in code from a seed
(:mod:`jacobix.integrations.hf.tiny_images`; pass ``model=`` for a real checkpoint). A forward hook
on the transformer counts its calls, so both loops are measured the same way: transformers' Janus
loop makes one call per image token (its batch is doubled for guidance), its Emu3 loop two (the
guidance processor runs the unconditional prompt in a call of its own); jacobix runs both halves in
one doubled batch. Greedy rows also check that the tokens equal transformers' token for token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from jacobix.core.sampling import SamplingConfig
from jacobix.integrations.hf import generate_image
from jacobix.integrations.hf.image_families import emu3_prefix_allowed_tokens_fn
from jacobix.integrations.hf.tiny_images import tiny_emu3, tiny_emu3_prompts, tiny_janus, tiny_janus_prompts
from jacobix.tokens.decoding import Decoding

FAMILIES = ("janus", "emu3")
TRANSFORMERS_TOP_K = 50  # the top-k transformers' generate applies when a generation config sets none
SETTINGS = (("transformers", None), ("ar", Decoding(method="ar")), ("jacobi w16", Decoding(method="jacobi", window=16)),
            ("jacobi w16 row-above", Decoding(method="jacobi", window=16, init="row-above")),
            ("transformers sampled", None), ("sjd w16", Decoding(method="sjd", window=16)),
            ("sjd-coupled w16", Decoding(method="sjd-coupled", window=16)),
            ("sjd-coupled w16 row-above", Decoding(method="sjd-coupled", window=16, init="row-above")))


@dataclass(frozen=True, kw_only=True)
class HFImageBenchConfig:
    """What :func:`bench_hf_images` runs.

    Attributes:
        family: "janus" or "emu3".
        prompts: images per setting (one per call).
        side: image grid side in tokens (tiny models).
        codes: image codes of the tiny model.
        guidance_scale: classifier-free guidance of every setting.
        seed: seed of the tiny model and of the sampled settings.
    """

    family: str = "janus"
    prompts: int = 4
    side: int = 8
    codes: int = 16
    guidance_scale: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")


@dataclass
class HFImageRow:
    name: str
    sampled: bool
    calls_per_image: float
    wall_s: float
    same_as_transformers: bool | None


@dataclass
class HFImageBenchResult:
    config: HFImageBenchConfig
    image_tokens: int
    rows: list[HFImageRow] = field(default_factory=list)

    def table(self) -> str:
        c = self.config
        head = (f"{c.family} (tiny, seed {c.seed}): {self.image_tokens} tokens per image, {c.prompts} images, "
                f"guidance {c.guidance_scale}\n")
        lines = [f"{'setting':<28} {'calls/image':>11} {'vs transformers':>15} {'wall s':>7} {'same tokens':>11}"]
        by_name = {row.name: row for row in self.rows}
        for row in self.rows:
            base = by_name["transformers sampled" if row.sampled else "transformers"]
            same = "-" if row.same_as_transformers is None else ("yes" if row.same_as_transformers else "NO")
            lines.append(f"{row.name:<28} {row.calls_per_image:>11.1f} {base.calls_per_image / row.calls_per_image:>14.2f}x "
                         f"{row.wall_s:>7.2f} {same:>11}")
        return head + "\n".join(lines)

    def records(self) -> list[dict]:
        return [{"family": self.config.family, "setting": r.name, "sampled": r.sampled, "calls_per_image": r.calls_per_image,
                 "wall_s": round(r.wall_s, 3), "same_as_transformers": r.same_as_transformers,
                 "image_tokens": self.image_tokens} for r in self.rows]


def bench_hf_images(config: HFImageBenchConfig = HFImageBenchConfig(), *, model: Any = None,
                    inputs: list[dict] | None = None) -> HFImageBenchResult:
    """Run every setting of :data:`SETTINGS` on ``config.prompts`` prompts; see the module docstring."""
    model, inputs, transformer = _setup(config, model, inputs)
    calls = [0]
    hook = transformer.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        result, greedy_reference = None, []
        for name, decoding in SETTINGS:
            sampled = "sampled" in name or (decoding is not None and decoding.spec.sampled)
            calls[0], start, outputs = 0, time.perf_counter(), []
            for index, one in enumerate(inputs):
                torch.manual_seed(config.seed + index)
                if decoding is None:
                    outputs.append(_transformers(model, one, config, sampled).cpu())
                else:
                    outputs.append(_jacobix(model, one, config, decoding, sampled, config.seed + index).cpu())
            wall = time.perf_counter() - start
            if name == "transformers":
                greedy_reference = outputs
            same = None if sampled or name == "transformers" else all(torch.equal(a, b) for a, b in zip(outputs, greedy_reference))
            if result is None:
                result = HFImageBenchResult(config, outputs[0].shape[1])
            result.rows.append(HFImageRow(name, sampled, calls[0] / len(inputs), wall, same))
    finally:
        hook.remove()
    return result


def _setup(config: HFImageBenchConfig, model: Any, inputs: list[dict] | None) -> tuple[Any, list[dict], Any]:
    words = [[i % 8, (3 * i + 1) % 8] for i in range(config.prompts)]
    if config.family == "janus":
        model = model or tiny_janus(codes=config.codes, side=config.side, seed=config.seed)
        inputs = inputs or [tiny_janus_prompts([w]) for w in words]
        return model, inputs, model.model.language_model
    model = model or tiny_emu3(codes=config.codes, seed=config.seed)
    inputs = inputs or [tiny_emu3_prompts([w], config.side, config.side, config.codes) for w in words]
    return model, inputs, model.model.text_model


def _sampling(model: Any, sampled: bool) -> SamplingConfig:
    """Greedy, or the temperature, top-k and top-p of the model's generation config (which transformers' loop applies)."""
    if not sampled:
        return SamplingConfig()
    config = model.generation_config
    top_k = TRANSFORMERS_TOP_K if config.top_k is None else (config.top_k or None)  # 0 turns it off
    top_p = config.top_p if config.top_p is not None and config.top_p < 1.0 else None
    return SamplingConfig(temperature=float(config.temperature or 1.0), top_k=top_k, top_p=top_p)


def _transformers(model: Any, inputs: dict, config: HFImageBenchConfig, sampled: bool) -> torch.Tensor:
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    if config.family == "janus":
        return model.generate(ids, attention_mask=mask, generation_mode="image", do_sample=sampled,
                              guidance_scale=config.guidance_scale)
    height, width = (int(v) for v in inputs["image_sizes"][0])
    fn = emu3_prefix_allowed_tokens_fn(model, height, width)
    out = model.generate(ids, attention_mask=mask, prefix_allowed_tokens_fn=fn, guidance_scale=config.guidance_scale,
                         do_sample=sampled, max_new_tokens=(width + 1) * height + 3)
    return out[:, ids.shape[1]:]


def _jacobix(model: Any, inputs: dict, config: HFImageBenchConfig, decoding: Decoding, sampled: bool,
             seed: int) -> torch.Tensor:
    out = generate_image(model, inputs, decoding=decoding, sampling=_sampling(model, sampled), guidance_scale=config.guidance_scale,
                         generator=torch.Generator(device=model.device).manual_seed(seed) if sampled else None,
                         decode_pixels=False)
    return out.sequences


__all__ = ["FAMILIES", "HFImageBenchConfig", "HFImageBenchResult", "bench_hf_images"]
