"""Roll a token policy out in a suite: all episodes in lockstep, each decoded chunk executed open-loop.

The caller supplies the decoder as ``decide(prompts (B, Lp)) -> (tokens (B, block), passes (B,))``
(AR, Jacobi, a distilled student with early exit, ...); :func:`greedy_decider` wraps
:func:`jacobix.tokens.generate.generate` for the usual cases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from jacobix.models.protocol import CausalLM
from jacobix.robot.envs import Env, Lockstep
from jacobix.robot.policy import PolicyFormat
from jacobix.tokens.decoding import Decoding
from jacobix.tokens.generate import generate

Decide = Callable[[Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class RolloutResult:
    """Episodes of one rollout, in the order of the given tasks and seeds.

    Attributes:
        tasks, seeds: the episodes.
        success: (N,) bool, the task was achieved.
        steps: (N,) environment steps taken.
        chunks: (N,) action chunks decoded.
        chunk_passes: (N, C) forward passes of each decoded chunk (0 beyond ``chunks``).
        chunk_tokens: (N, C, block) the decoded tokens of each chunk (-1 beyond ``chunks``).
        invalid_slots: (N,) action slots that held a non-action token (decoded as 0.0).
    """

    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    success: np.ndarray
    steps: np.ndarray
    chunks: np.ndarray
    chunk_passes: np.ndarray
    chunk_tokens: np.ndarray
    invalid_slots: np.ndarray

    @property
    def episodes(self) -> int:
        return len(self.success)

    @property
    def success_rate(self) -> float:
        return float(self.success.mean()) if self.episodes else 0.0

    @property
    def passes_per_chunk(self) -> float:
        """Forward passes per decoded chunk, over all chunks."""
        return float(self.chunk_passes.sum()) / max(int(self.chunks.sum()), 1)

    def per_task(self) -> dict[str, float]:
        """Success rate of each task."""
        tasks = np.asarray(self.tasks)
        return {t: float(self.success[tasks == t].mean()) for t in dict.fromkeys(self.tasks)}


def run_episodes(decide: Decide, make_env: Callable[[], Env], fmt: PolicyFormat, tasks: Sequence[str],
                 seeds: Sequence[int], *, batch_size: int | None = None) -> RolloutResult:
    """Run one episode per (task, seed), ``batch_size`` at a time in lockstep (default: all at once).

    Each round, every running episode gets a prompt; ``decide`` returns one block per prompt; its
    ``fmt.chunk`` actions are executed open-loop (an episode that ends mid-chunk drops the rest).

    Args:
        decide: prompts (B, Lp) -> (tokens (B, block), passes (B,)).
        make_env: builds one environment (reused across batches).
        fmt: the policy's token format.
        tasks, seeds: the episodes (task variant = seed).
        batch_size: episodes stepped side by side (bounds memory for MuJoCo suites).
    """
    if len(tasks) != len(seeds):
        raise ValueError(f"tasks and seeds must have the same length, got {len(tasks)} and {len(seeds)}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be an integer >= 1 or None, got {batch_size!r}")
    n, size = len(tasks), batch_size or max(len(tasks), 1)
    max_chunks = max(math.ceil(make_env().max_steps / fmt.chunk), 1) if n else 1
    out = {"success": np.zeros(n, bool), "steps": np.zeros(n, np.int64), "chunks": np.zeros(n, np.int64),
           "chunk_passes": np.zeros((n, max_chunks), np.int64),
           "chunk_tokens": np.full((n, max_chunks, fmt.block), -1, np.int64), "invalid_slots": np.zeros(n, np.int64)}
    envs: list[Env] = []
    for first in range(0, n, size):
        rows = slice(first, min(first + size, n))
        run = Lockstep.start(make_env, tasks[rows], seeds[rows], envs)
        envs = run.envs if len(run.envs) > len(envs) else envs
        _run_batch(decide, fmt, run, {key: value[rows] for key, value in out.items()})
    return RolloutResult(tuple(tasks), tuple(int(s) for s in seeds), **out)


def _run_batch(decide: Decide, fmt: PolicyFormat, run: Lockstep, out: dict[str, np.ndarray]) -> None:
    """Decode and execute chunks until every episode of ``run`` is done; fills the views in ``out``."""
    while len(rows := run.active):
        prompts = fmt.prompts([run.tasks[r] for r in rows], run.obs[rows])  # (R, Lp)
        tokens, passes = decide(prompts)
        tokens = torch.as_tensor(tokens).long()
        if tokens.shape != (len(rows), fmt.block):
            raise ValueError(f"decide must return tokens of shape ({len(rows)}, {fmt.block}), got {tuple(tokens.shape)}")
        actions = fmt.actions(tokens).numpy()  # (R, k, A)
        chunk = out["chunks"][rows]  # (R,)
        out["chunk_passes"][rows, chunk] = torch.as_tensor(passes).long().numpy()
        out["chunk_tokens"][rows, chunk] = tokens.numpy()
        out["invalid_slots"][rows] += fmt.invalid(tokens).numpy()
        out["chunks"][rows] += 1
        for j in range(fmt.chunk):
            running = rows[~run.done[rows]]
            run.step(running, actions[np.searchsorted(rows, running), j])
    out["success"][:] = run.success
    out["steps"][:] = run.steps


def chunk_jacobi(fmt: PolicyFormat) -> Decoding:
    """How one action chunk is decoded by greedy Jacobi as CEED trains it: one block of the tokens
    after the prefill's first one, drafted from the action one step before (``init="row-above"``
    with the action dimensions as the row). Early exit is ``replace(chunk_jacobi(fmt),
    lossy=LossyExit(sweep_cap=c))``."""
    return Decoding(method="jacobi", window=fmt.block - 1, block=True, init="row-above", row_length=fmt.act_dim)


def greedy_decider(model: CausalLM, fmt: PolicyFormat, decoding: Decoding = Decoding(method="ar")) -> Decide:
    """A ``decide`` that decodes one block per prompt with :func:`~jacobix.tokens.generate.generate`.

    Args:
        model: the policy.
        fmt: its format (``block`` new tokens per prompt).
        decoding: a greedy decoding (default sequential; :func:`chunk_jacobi` for CEED's).
    Returns:
        prompts (B, Lp) -> (tokens (B, block), passes (B,)); passes are the decoding passes in
        which the row was active (the prompt's prefill pass, which also gives the first token,
        is not counted, as in :class:`~jacobix.tokens.result.DecodeStats`).
    """

    @torch.no_grad()
    def decide(prompts: Tensor) -> tuple[Tensor, Tensor]:
        result = generate(model, prompts, decoding, max_new_tokens=fmt.block)
        tokens = torch.stack([row[: fmt.block] for row in result.tokens])  # (B, block)
        passes = result.stats.active_per_pass.sum(0).long()  # (B,)
        return tokens, passes

    return decide


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (low, high) of a success rate ``successes / n`` (Wilson 1927).

    ``(p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)``; (0, 1) when ``n`` is 0.
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p, z2 = successes / n, z * z
    centre = p + z2 / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z2 / n)), min(1.0, (centre + spread) / (1 + z2 / n))
