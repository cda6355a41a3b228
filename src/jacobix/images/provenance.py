"""Where each token of a decoded image came from: the data behind the draft-tree pictures.

Every committed token is one of four kinds (:data:`KINDS`): the pass's recovered or bonus token
(drawn by the verifier, no draft passed there), a trunk draft that passed after being redrafted by
the pass before, a trunk draft that passed unchanged from the pass before (kept: a coupled or
continued draft), or a draft tree's branch that passed where the trunk's draft was rejected.
"""

from __future__ import annotations

import torch
from torch import Tensor

from jacobix.images.sample import ImageSamples

KINDS = ("recovered or bonus", "trunk, redrafted", "trunk, kept from the pass before", "tree branch")
RECOVERED, REDRAFTED, KEPT, BRANCH = range(4)


def acceptance_kinds(samples: ImageSamples, *, prompt_length: int) -> Tensor:
    """(N, grid, grid) kind of every token (an index into :data:`KINDS`); needs ``record=True`` samples."""
    if not samples.trajectories or not samples.trajectories[0]:
        raise ValueError("acceptance_kinds needs samples generated with record=True")
    grid, tokens = samples.tokens.shape[1], samples.tokens.shape[1] * samples.tokens.shape[2]
    kinds = [_batch_kinds(records, stats.branch_per_pass, prompt_length, tokens)
             for records, stats in zip(samples.trajectories, samples.stats)]
    return torch.cat(kinds).view(-1, grid, grid)


def _batch_kinds(records: list, branch_per_pass: Tensor | None, prompt_length: int, tokens: int) -> Tensor:
    b = records[0].start.shape[0]
    out = torch.full((b, tokens), RECOVERED, dtype=torch.long)
    rows = torch.arange(b)[:, None]
    for sweep, record in enumerate(records):
        d = record.drafts.shape[1]
        offsets = torch.arange(d)[None]  # (1, D)
        index = record.start[:, None] - prompt_length + offsets  # (B, D) image index of each draft slot
        accepted = (offsets < record.n_accepted[:, None]) & (offsets < record.n_commit[:, None]) & (index < tokens)
        branch = torch.zeros(b, dtype=torch.long) if branch_per_pass is None else branch_per_pass[sweep]
        on_branch = offsets >= (record.n_accepted - branch)[:, None]  # the last accepted slots of a branch path
        kept = torch.zeros_like(accepted)
        if sweep:
            last = records[sweep - 1]
            shift = record.start - last.start  # (B,) how far the window moved
            source = offsets + shift[:, None]  # (B, D) the same position in the pass before
            inside = source < last.drafts.shape[1]
            before = last.drafts.gather(1, source.clamp(max=last.drafts.shape[1] - 1))
            kept = inside & (before == record.drafts)
        kind = torch.where(on_branch, BRANCH, torch.where(kept, KEPT, REDRAFTED))
        out[rows.expand_as(index)[accepted], index[accepted]] = kind[accepted]
    return out


def committed_counts(samples: ImageSamples, most: int) -> Tensor:
    """(most + 1,) passes of active rows by tokens committed (the last bin holds ``most`` or more)."""
    counts = torch.zeros(most + 1, dtype=torch.long)
    for stats in samples.stats:
        committed = stats.committed_per_pass[stats.active_per_pass].clamp(max=most)
        counts += torch.bincount(committed, minlength=most + 1)[: most + 1]
    return counts


__all__ = ["BRANCH", "KEPT", "KINDS", "RECOVERED", "REDRAFTED", "acceptance_kinds", "committed_counts"]
