"""``jacobix bench images --plot DIR``: where each decoder's tokens came from, and tokens per pass.

For every non-AR row (SJD2 rows aside), two images per class are decoded at batch 1 with their
trajectories recorded; ``acceptance_kinds.png`` shows one sample per class beside a map of how
each token was committed (trunk redrafted, trunk kept from the pass before, tree branch, or the
pass's recovered/bonus token) and ``accepted_per_pass.png`` the share of passes by tokens
committed (SJD-PAC's own figure).
"""

from __future__ import annotations

from pathlib import Path

import torch

from jacobix.eval import figures
from jacobix.eval.tree_figures import kinds_figure, per_pass_histogram
from jacobix.images.model import ImageModel
from jacobix.images.provenance import KINDS, acceptance_kinds, committed_counts
from jacobix.images.sample import ImageSampling, generate_images

MOST = 16  # the histogram's last bin: 16 or more tokens


def tree_pictures(model: ImageModel, settings: list[ImageSampling], out_dir: Path, *, per_class: int = 2,
                  seed: int = 0) -> tuple[Path, Path]:
    """Write ``acceptance_kinds.png`` and ``accepted_per_pass.png`` into ``out_dir`` for ``settings``."""
    rows = [s for s in settings if s.method not in ("ar", "sjd2")]
    if not rows:
        raise ValueError("--plot draws the parallel rows; give at least one sjd, sjd-coupled or sjd-pac decoder")
    labels = torch.arange(10).repeat_interleave(per_class)
    samples, kinds, counts = {}, {}, {}
    for setting in rows:
        out = generate_images(model, labels, setting, generator=torch.Generator().manual_seed(seed), batch_size=1,
                              record=True)
        name = setting.label()
        first = torch.arange(0, len(labels), per_class)  # one sample per class in the map
        samples[name] = out.images[first].numpy()
        kinds[name] = acceptance_kinds(out, prompt_length=1)[first].numpy()
        counts[name] = committed_counts(out, MOST).numpy()
    out_dir.mkdir(parents=True, exist_ok=True)
    images = len(labels)
    kinds_path = figures.save(kinds_figure(samples, kinds, kind_names=KINDS,
                                           title=f"how each token was committed ({model.name}, batch 1)"),
                              out_dir / "acceptance_kinds.png")
    histogram = per_pass_histogram(counts, title=f"tokens committed per pass ({images} images per decoder, batch 1)")
    return kinds_path, figures.save(histogram, out_dir / "accepted_per_pass.png")


__all__ = ["tree_pictures"]
