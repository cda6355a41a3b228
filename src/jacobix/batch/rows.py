"""Generate result rows from input rows with one model: the unit every batch backend runs.

:class:`BatchGenerator` holds one model; ``generate_rows`` turns a list of input rows into result
rows. Each row samples from its own generator seeded by ``(spec.seed, row id)``, so a row's
output is the same whatever batch, actor or machine it runs in.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from jacobix.api import load_text_model
from jacobix.batch.jobs import BatchSpec, ResultWriter, row_seed
from jacobix.images.model import load_image_model
from jacobix.images.sample import ImageSampling, generate_images
from jacobix.tokens.generate import generate
from jacobix.tokens.result import DecodeStats


class BatchGenerator:
    """One model and the settings of a batch job; turns input rows into result rows.

    Args:
        spec: the job's :class:`~jacobix.batch.jobs.BatchSpec`.
        threads: torch CPU threads for this generator (1 suits a process per core).
    """

    def __init__(self, spec: BatchSpec, *, threads: int | None = 1) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.spec = spec
        if spec.images:
            self.image_model = load_image_model()
            Path(spec.image_dir).mkdir(parents=True, exist_ok=True)
        else:
            self.text_model = load_text_model(spec.model)
            self.text_model.model.to(spec.device)

    def generate_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Result rows for ``rows`` (decoded together as one batch), in the same order.

        Text results: ``id``, ``prompt``, ``text``, ``tokens``, ``stats``; image results: ``id``,
        ``label``, ``png`` (the file written), ``stats`` (:func:`row_stats`).
        """
        if not rows:
            return []
        device = "cpu" if self.spec.images else self.spec.device
        generators = [torch.Generator(device=device).manual_seed(row_seed(self.spec.seed, row["id"])) for row in rows]
        return self._images(rows, generators) if self.spec.images else self._text(rows, generators)

    def _text(self, rows: Sequence[Mapping[str, Any]], generators: list[torch.Generator]) -> list[dict]:
        spec, text_model = self.spec, self.text_model
        prompts = [text_model.tokenizer.encode(row["prompt"]).tolist() for row in rows]
        result = generate(text_model.model, prompts, spec.decoding, spec.sampling, max_new_tokens=spec.max_new_tokens,
                          generator=generators, eos_token_id=text_model.eos_token_id)
        return [{"id": row["id"], "prompt": row["prompt"], "text": text_model.tokenizer.decode(tokens),
                 "tokens": tokens.tolist(), "method": spec.decoding.method, "stats": stats}
                for row, tokens, stats in zip(rows, result.tokens, row_stats(result.stats))]

    def _images(self, rows: Sequence[Mapping[str, Any]], generators: list[torch.Generator]) -> list[dict]:
        spec = self.spec
        settings = ImageSampling(decoding=spec.decoding, sampling=spec.sampling, cfg_scale=spec.cfg_scale)
        labels = [int(row["label"]) for row in rows]
        samples = generate_images(self.image_model, labels, settings, generator=generators, batch_size=len(rows))
        pixels = (samples.images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()  # (N, 28, 28)
        out = []
        for row, image, stats in zip(rows, pixels, row_stats(samples.stats[0])):
            path = Path(spec.image_dir) / f"{_file_stem(row['id'])}.png"
            _write_png(image, path)
            out.append({"id": row["id"], "label": row["label"], "png": str(path), "method": spec.decoding.method, "stats": stats})
        return out


def row_stats(stats: DecodeStats) -> list[dict[str, int]]:
    """Per row: new tokens, passes while active, drafts tested, and drafts accepted and committed
    (:meth:`DecodeStats.per_row`, which does not depend on the batch a row ran in)."""
    return stats.per_row()


def _file_stem(row_id: str | int) -> str:
    """A file name for a row id: the id itself when it is plain, else a hash of it."""
    text = str(row_id)
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", text):
        return text
    return "id-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _write_png(image, path: Path) -> None:
    """Write a (28, 28) uint8 array as a PNG, through a temporary name (no half files)."""
    from PIL import Image

    partial = path.with_name(path.name + ".partial")
    Image.fromarray(image, mode="L").save(partial, format="PNG")
    partial.replace(path)


def chunks(rows: Sequence[dict], size: int) -> Iterator[Sequence[dict]]:
    """Consecutive slices of ``size`` rows."""
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def run_local(spec: BatchSpec, rows: Sequence[dict], writer: ResultWriter, *, generator: BatchGenerator | None = None,
              on_batch=None) -> int:
    """Generate ``rows`` in this process, ``spec.batch_size`` at a time, writing each result as it comes.

    Args:
        spec: the job settings.
        rows: input rows (from :func:`~jacobix.batch.jobs.open_job`).
        writer: an open :class:`~jacobix.batch.jobs.ResultWriter`.
        generator: a :class:`BatchGenerator` to reuse (default: a new one).
        on_batch: called with the number of rows done after each batch (progress).
    Returns:
        rows written.
    """
    generator = generator or BatchGenerator(spec)
    done = 0
    for chunk in chunks(rows, spec.batch_size):
        for result in generator.generate_rows(chunk):
            writer.write(result)
        done += len(chunk)
        if on_batch is not None:
            on_batch(done)
    return done


__all__ = ["BatchGenerator", "chunks", "row_stats", "run_local"]
