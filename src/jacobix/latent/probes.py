"""What a latent holds: a linear probe per latent position for the value of the step it replaced.

Latent ``i`` (1-based; slot ``i`` of the layout) is probed for ``values[i]``, the value explicit
chain of thought writes at step ``i``. The probe is ridge regression onto one-hot targets, fitted
in closed form on one set of programs and scored by argmax on another, so it is deterministic and
needs no tuning; chance is ``1 / modulus``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from jacobix.latent.arith import Program
from jacobix.latent.evaluate import encode_questions
from jacobix.latent.model import LatentReasoner
from jacobix.latent.thoughts import ThinkMethod, think


@torch.no_grad()
def latent_states(model: LatentReasoner, programs: list[Program], *, method: ThinkMethod, passes: int | None = None,
                  batch_size: int = 500) -> Tensor:
    """The latents (N, c, dim) of ``programs``, float64."""
    device = model.lm.tok_embeddings.weight.device
    chunks = []
    for i in range(0, len(programs), batch_size):
        questions, lengths = encode_questions(programs[i : i + batch_size], device)
        chunks.append(think(model, questions, lengths, method=method, passes=passes).latents.double().cpu())
    return torch.cat(chunks)


def fit_probe(features: Tensor, labels: Tensor, classes: int, ridge: float = 1e-2) -> Tensor:
    """Weights (dim + 1, classes) of a ridge probe from ``features`` (N, dim) to ``labels`` (N,)."""
    x = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype)], 1)  # (N, dim + 1)
    y = torch.nn.functional.one_hot(labels, classes).to(features.dtype)  # (N, classes)
    gram = x.T @ x + ridge * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
    return torch.linalg.solve(gram, x.T @ y)


def probe_predict(weights: Tensor, features: Tensor) -> Tensor:
    """Predicted labels (N,) of ``features`` (N, dim)."""
    x = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype)], 1)
    return (x @ weights).argmax(-1)


def probe_accuracy(model: LatentReasoner, train: list[Program], test: list[Program], *, method: ThinkMethod,
                   passes: int | None = None) -> list[float | None]:
    """Held-out accuracy of a probe at each latent position (None where the programs have no step of that index).

    Args:
        model: the reasoner.
        train, test: programs to fit the probes on and to score them on (disjoint sets, one length).
        method, passes: how the latents are computed (see :func:`~jacobix.latent.thoughts.think`).
    """
    if not train or not test:
        raise ValueError("probe_accuracy needs programs to fit on (train) and to score on (test)")
    steps = {p.steps for p in (*train, *test)}
    if len(steps) != 1:
        raise ValueError(f"probe programs must all have one number of steps, got {sorted(steps)}")
    modulus = train[0].modulus
    fit_x, test_x = (latent_states(model, s, method=method, passes=passes) for s in (train, test))
    out: list[float | None] = []
    for i in range(1, model.latent.latents + 1):
        if i > train[0].steps:
            out.append(None)
            continue
        fit_y = torch.tensor([p.values[i] for p in train])
        test_y = torch.tensor([p.values[i] for p in test])
        weights = fit_probe(fit_x[:, i - 1], fit_y, modulus)
        out.append(float((probe_predict(weights, test_x[:, i - 1]) == test_y).double().mean()))
    return out


__all__ = ["fit_probe", "latent_states", "probe_accuracy", "probe_predict"]
