"""The token format of a robot policy: prompt = task + quantised observation, output = an action chunk.

Vocabulary layout (ids, in this order)::

    [0, action_bins)                          action tokens: a token's id IS its action bin
    [obs_first, obs_first + obs_bins)         observation tokens, shared by all dimensions:
                                              obs_first + bin(obs[d]) (the dimension is the position)
    [task_first, task_first + len(tasks))     one token per task
    bos_token = task_first + len(tasks)       begins every prompt
    end_token = bos_token + 1                 ends every action block

    prompt (Lp = obs_dim + 2):   BOS, task, obs_0, ..., obs_{D-1}
    output (block = chunk*act_dim + 1):  a_0[0..A-1], a_1[0..A-1], ..., a_{k-1}[0..A-1], END

Actions are time-major: the block holds the ``chunk`` future actions one after another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from jacobix import assets
from jacobix.core.checkpoints import read_json
from jacobix.models.llama import Llama, load_llama
from jacobix.robot.codec import ActionCodec, ArrayLike, ObservationCodec


@dataclass(frozen=True)
class PolicyFormat:
    """How a task and an observation become a prompt and an action chunk becomes tokens.

    Args:
        tasks: task names, in token order.
        obs_low, obs_high: per-dimension observation ranges (the :class:`ObservationCodec`).
        obs_bins: bins per observation dimension.
        act_dim: action dimensions.
        chunk: future actions per block, executed open-loop.
        action_bins, action_low, action_high: the :class:`ActionCodec`.
    """

    tasks: tuple[str, ...]
    obs_low: tuple[float, ...]
    obs_high: tuple[float, ...]
    obs_bins: int = 64
    act_dim: int = 4
    chunk: int = 4
    action_bins: int = 256
    action_low: float = -1.0
    action_high: float = 1.0
    action_codec: ActionCodec = field(init=False, repr=False, compare=False)
    obs_codec: ObservationCodec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"PolicyFormat.tasks must be distinct and non-empty, got {self.tasks}")
        for name in ("act_dim", "chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"PolicyFormat.{name} must be >= 1, got {getattr(self, name)}")
        object.__setattr__(self, "action_codec", ActionCodec(self.action_bins, self.action_low, self.action_high))
        object.__setattr__(self, "obs_codec", ObservationCodec(self.obs_low, self.obs_high, self.obs_bins))
        object.__setattr__(self, "obs_low", self.obs_codec.low)
        object.__setattr__(self, "obs_high", self.obs_codec.high)

    # --- the vocabulary ---
    @property
    def obs_dim(self) -> int:
        return self.obs_codec.dim

    @property
    def action_tokens(self) -> tuple[int, int]:
        """(first id, count) of the action tokens: (0, action_bins)."""
        return 0, self.action_bins

    @property
    def obs_first(self) -> int:
        return self.action_bins

    @property
    def task_first(self) -> int:
        return self.obs_first + self.obs_bins

    @property
    def bos_token(self) -> int:
        return self.task_first + len(self.tasks)

    @property
    def end_token(self) -> int:
        return self.bos_token + 1

    @property
    def vocab_size(self) -> int:
        return self.end_token + 1

    @property
    def prompt_length(self) -> int:
        """Lp = obs_dim + 2 (BOS, task, observation)."""
        return self.obs_dim + 2

    @property
    def block(self) -> int:
        """Output tokens per decision: chunk * act_dim action tokens + END."""
        return self.chunk * self.act_dim + 1

    # --- encoding ---
    def task_token(self, task: str) -> int:
        """The token of ``task``; ValueError listing the tasks when unknown."""
        try:
            return self.task_first + self.tasks.index(task)
        except ValueError:
            raise ValueError(f"unknown task {task!r}; this policy knows: {', '.join(self.tasks)}") from None

    def prompts(self, tasks: Sequence[str], observations: ArrayLike) -> Tensor:
        """Prompts (B, Lp) for B tasks and observations (B, obs_dim)."""
        bins = self.obs_codec.encode(observations)  # (B, D)
        if bins.dim() != 2 or bins.shape[0] != len(tasks):
            raise ValueError(f"observations must be (B, {self.obs_dim}) with B = len(tasks) = {len(tasks)}, got {tuple(bins.shape)}")
        task_ids = torch.tensor([self.task_token(t) for t in tasks], dtype=torch.long)  # (B,)
        obs_ids = self.obs_first + bins  # (B, D): bins over each dimension's own range
        bos = torch.full((len(tasks), 1), self.bos_token, dtype=torch.long)
        return torch.cat((bos, task_ids[:, None], obs_ids), dim=1)  # (B, Lp)

    def prompt(self, task: str, observation: ArrayLike) -> Tensor:
        """The prompt (Lp,) for one task and observation (obs_dim,)."""
        obs = torch.as_tensor(np.asarray(observation, dtype=np.float32))
        if obs.shape != (self.obs_dim,):
            raise ValueError(f"observation must have shape ({self.obs_dim},), got {tuple(obs.shape)}")
        return self.prompts([task], obs[None])[0]

    def target(self, actions: ArrayLike) -> Tensor:
        """Output tokens (..., block) of actions (..., chunk, act_dim) in the action range, ending with END."""
        bins = self.action_codec.encode(actions)  # (..., k, A)
        if bins.dim() < 2 or bins.shape[-2:] != (self.chunk, self.act_dim):
            raise ValueError(f"actions must have shape (..., {self.chunk}, {self.act_dim}), got {tuple(bins.shape)}")
        flat = bins.flatten(-2)  # (..., k*A)
        end = torch.full((*flat.shape[:-1], 1), self.end_token, dtype=torch.long)
        return torch.cat((flat, end), dim=-1)  # (..., block)

    def actions(self, tokens: Tensor) -> Tensor:
        """Actions (..., chunk, act_dim) of output tokens (..., block) or (..., block - 1).

        The END slot is ignored. A token that is not an action token (END or another id, which
        only a lossy decoder can leave in an action slot) decodes to the action 0.0, the middle
        of the range; :meth:`non_actions` marks such slots and :meth:`invalid` counts them.
        """
        missing = self.non_actions(tokens)  # (..., k, A)
        slots = torch.as_tensor(tokens)[..., : self.block - 1].unflatten(-1, (self.chunk, self.act_dim))  # (..., k, A)
        values = self.action_codec.decode(torch.where(missing, 0, slots))  # (..., k, A)
        return torch.where(missing, torch.zeros_like(values), values)

    def non_actions(self, tokens: Tensor) -> Tensor:
        """(..., chunk, act_dim) True where an action slot of tokens (..., block) or (..., block - 1)
        holds a non-action token."""
        tokens = torch.as_tensor(tokens)
        if tokens.shape[-1] not in (self.block, self.block - 1):
            raise ValueError(f"tokens must have {self.block} (or {self.block - 1}) entries in the last dimension, got {tuple(tokens.shape)}")
        slots = tokens[..., : self.block - 1]  # (..., k*A)
        return ((slots < 0) | (slots >= self.action_bins)).unflatten(-1, (self.chunk, self.act_dim))

    def invalid(self, tokens: Tensor) -> Tensor:
        """(...) number of action slots holding a non-action token (decoded as 0.0 by :meth:`actions`)."""
        return self.non_actions(tokens).flatten(-2).sum(-1)

    # --- serialisation ---
    def to_dict(self) -> dict:
        """A JSON-able dict (stored under "policy" in a checkpoint's config.json)."""
        return {"tasks": list(self.tasks), "obs_low": list(self.obs_low), "obs_high": list(self.obs_high),
                "obs_bins": self.obs_bins, "act_dim": self.act_dim, "chunk": self.chunk,
                "action_bins": self.action_bins, "action_low": self.action_low, "action_high": self.action_high}

    @classmethod
    def from_dict(cls, data: dict) -> "PolicyFormat":
        """The format :meth:`to_dict` wrote."""
        return cls(tasks=tuple(data["tasks"]), obs_low=tuple(data["obs_low"]), obs_high=tuple(data["obs_high"]),
                   obs_bins=int(data["obs_bins"]), act_dim=int(data["act_dim"]), chunk=int(data["chunk"]),
                   action_bins=int(data["action_bins"]), action_low=float(data["action_low"]),
                   action_high=float(data["action_high"]))


def load_policy(name_or_path: str | Path) -> tuple[Llama, PolicyFormat]:
    """Load a bundled policy by name (``pointmass-policy``, ``metaworld-mt10-policy``) or a checkpoint folder.

    Returns:
        the model (eval mode) and its :class:`PolicyFormat` (config.json's "policy").
    """
    directory = assets.locate(name_or_path, kind="policy")
    if not (directory / "config.json").exists():
        known = ", ".join(sorted(assets.names("policy")))
        hint = assets.rebuild_hint(name_or_path, kind="policy")
        raise FileNotFoundError(f"no policy {str(name_or_path)!r}: not a bundled name ({known}) nor a checkpoint folder{hint}")
    model, meta = load_llama(directory)
    if "policy" not in meta:
        raise ValueError(f"{directory}/config.json has no 'policy' entry: not a robot policy checkpoint")
    try:
        fmt = PolicyFormat.from_dict(meta["policy"])
    except KeyError as error:
        raise ValueError(f"{directory}/config.json: key 'policy.{error.args[0]}' is missing") from None
    except (TypeError, ValueError) as error:
        raise ValueError(f"{directory}/config.json: key 'policy': {error}") from None
    if fmt.vocab_size != model.config.vocab_size:
        raise ValueError(f"{directory}: the policy format needs {fmt.vocab_size} tokens, the model has {model.config.vocab_size}")
    return model, fmt


def policy_metadata(directory: str | Path) -> dict:
    """The whole config.json of a policy checkpoint (format, training record, measured success)."""
    directory = assets.locate(directory, kind="policy")
    return read_json(directory / "config.json")
