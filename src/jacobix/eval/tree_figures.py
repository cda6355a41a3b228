"""Pictures of draft-tree decoding: what each token's acceptance came from, and tokens per pass."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from jacobix.eval.figures import new_figure

KIND_COLOURS = ("#d9d9d9", "#6baed6", "#08519c", "#e6550d")  # recovered, redrafted, kept, branch


def kinds_figure(samples: Mapping[str, np.ndarray], kinds: Mapping[str, np.ndarray], *, kind_names: Sequence[str],
                 title: str, dpi: int = 100) -> Figure:
    """For each decoder, its samples beside a map of how each token was committed.

    Args:
        samples: decoder name -> (N, H, W) images in [0, 1].
        kinds: decoder name -> (N, G, G) kind index of each token (into ``kind_names``).
        kind_names: one name per kind, in colour order.
        title: figure title.
        dpi: resolution when saved.
    """
    names = list(samples)
    n = len(next(iter(samples.values())))
    figure = new_figure(1.6 * 2 * len(names), 1.25 * n + 1.2, dpi=dpi)
    axes = np.asarray(figure.subplots(n, 2 * len(names), squeeze=False))
    colours = ListedColormap(list(KIND_COLOURS[: len(kind_names)]))
    for column, name in enumerate(names):
        for row in range(n):
            image_axes, kind_axes = axes[row, 2 * column], axes[row, 2 * column + 1]
            image_axes.imshow(samples[name][row], cmap="gray", vmin=0.0, vmax=1.0)
            kind_axes.imshow(kinds[name][row], cmap=colours, vmin=-0.5, vmax=len(kind_names) - 0.5)
            for a in (image_axes, kind_axes):
                a.set_xticks([]), a.set_yticks([])
        axes[0, 2 * column].set_title(name, fontsize=9, loc="left")
    handles = [Patch(color=KIND_COLOURS[i], label=kind) for i, kind in enumerate(kind_names)]
    figure.legend(handles=handles, loc="outside lower center", ncol=len(kind_names), fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=11)
    return figure


def per_pass_histogram(counts: Mapping[str, np.ndarray], *, title: str, dpi: int = 100) -> Figure:
    """Share of passes by tokens committed, one bar group per count and one bar per decoder.

    Args:
        counts: decoder name -> (M + 1,) passes that committed 0 .. M tokens (the last bin: M or more).
        title: figure title.
        dpi: resolution when saved.
    """
    figure = new_figure(8.0, 3.6, dpi=dpi)
    axes = figure.subplots()
    names = list(counts)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        share = np.asarray(counts[name], dtype=np.float64)
        share = share / max(share.sum(), 1.0)
        bins = np.arange(1, len(share))
        mean = float((np.arange(len(share)) * share).sum())
        axes.bar(bins + (i - (len(names) - 1) / 2) * width, share[1:], width, label=f"{name} (mean {mean:.2f})")
    most = len(next(iter(counts.values()))) - 1
    axes.set_xticks(np.arange(1, most + 1), [str(k) for k in range(1, most)] + [f"{most}+"], fontsize=7)
    axes.set_xlabel("tokens committed by the pass")
    axes.set_ylabel("share of passes")
    axes.legend(fontsize=8)
    axes.set_title(title, fontsize=10)
    return figure


__all__ = ["KIND_COLOURS", "kinds_figure", "per_pass_histogram"]
