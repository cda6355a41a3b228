"""The decoding spec: how windows are drafted, verified and sized, declared once.

:class:`Decoding` is the one object that says *how* to decode; :class:`~jacobix.core.sampling.
SamplingConfig` says what distribution to draw from; :class:`Guidance` adds classifier-free
guidance to a request. Every entry point (the Python API, ``jacobix generate``,
``generate-batch``, ``bench``, the Hugging Face adapter, the Ray backend) builds these objects
and hands them down unchanged; the command-line flags are derived from their fields.

Example::

    from jacobix import Decoding, SamplingConfig, generate
    spec = Decoding(method="sjd", window="auto", init="repeat")
    out = generate(model, prompt, spec, SamplingConfig(temperature=0.8), max_new_tokens=64)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from os import PathLike
from typing import Any, Literal

from jacobix.core.engine import SettledRule
from jacobix.core.sampling import SamplingConfig
from jacobix.core.tree import DraftTree
from jacobix.tokens.methods import Method, get_method
from jacobix.tokens.proposers.base import Proposer
from jacobix.tokens.proposers.basic import DraftInit
from jacobix.tokens.proposers.ngram import LookaheadConfig
from jacobix.tokens.width.calibration import Calibration
from jacobix.tokens.width.costs import CostBook
from jacobix.tokens.width.multiblock import MultiBlock
from jacobix.tokens.width.policy import WidthPolicy

TEXT_INITS = ("random", "repeat", "row-above", "context")
IMAGE_INITS = ("codes-random", "prior", "prior-above")  # resolved against an image model by jacobix.images
AUTO_MAX_WINDOW = 16


@dataclass(frozen=True, kw_only=True)
class LossyExit:
    """LOSSY early exit (CEED-VLA): commit a window before it has converged.

    Never a default; every token committed this way is counted in ``DecodeStats.lossy_per_pass``.

    Attributes:
        sweep_cap: commit a window (a block in block mode) as it stands after this many sweeps on it.
        settled: a rule ``(old, new) -> (B, D) bool`` such as
            :class:`~jacobix.core.acceptance.BinTolerance`; a window whose drafts all count as
            settled is committed as it stands.
    """

    sweep_cap: int | None = None
    settled: SettledRule | None = None

    def __post_init__(self) -> None:
        if self.sweep_cap is None and self.settled is None:
            raise ValueError("LossyExit needs sweep_cap or settled (or both); for exact decoding use lossy=None")
        if self.sweep_cap is not None and (isinstance(self.sweep_cap, bool) or not isinstance(self.sweep_cap, int)
                                           or self.sweep_cap < 1):
            raise ValueError(f"LossyExit.sweep_cap must be an int >= 1 or None, got {self.sweep_cap!r}")
        if self.settled is not None and not callable(self.settled):
            raise ValueError(f"LossyExit.settled must be a rule (old, new) -> bool per draft, e.g. BinTolerance, "
                             f"got {self.settled!r}")


@dataclass(frozen=True, kw_only=True)
class Decoding:
    """How a generation drafts, verifies and sizes its windows.

    Attributes:
        method: a registered method (:mod:`jacobix.tokens.methods`): "ar" (sequential reference),
            "jacobi" (greedy, equal to greedy "ar"), "sjd" (sampling, distributed exactly as
            sampling "ar"), "sjd-coupled" (SJD redrafting with one noise per position), "sjd2".
        window: tokens evaluated per pass (drafts + 1), or "auto": the width policy chooses 1 to 16
            per pass from measured pass costs and observed acceptance. Ignored by "ar".
        init: draft rule for fresh slots: "random", "repeat", "row-above", "context" (tokens drawn
            from the row's prompt and text, as consistency distillation trains), an image rule
            ("codes-random", "prior", "prior-above"; :mod:`jacobix.images`) or a DraftInit.
        row_length: tokens per row, for ``init="row-above"``.
        lookahead: draft from an n-gram pool of the prompt, output and Jacobi trajectory; True or a
            LookaheadConfig (``verify=K`` verifies K candidates per pass).
        block: CLLM's block mode: blocks of ``window`` tokens, each iterated to its fixed point.
        lossy: a :class:`LossyExit` (LOSSY early exit), or None (exact; the default).
        tree: a :class:`~jacobix.core.tree.DraftTree` (SJD-PAC's proactive drafting, sampling
            methods): at each of the first ``depth - 1`` drafts, ``branches - 1`` alternatives (drawn
            from the draft rule's law mixed with the draft's own, :mod:`jacobix.tokens.proposers.tree`)
            are verified in the same pass; a pass feeds ``window`` trunk tokens
            plus ``tree.extra_nodes`` (18 for 4 branches, depth 3). Lossless. None: a chain.
        multiblock: a :class:`~jacobix.tokens.width.multiblock.MultiBlock` (Jacobi Forcing's multiblock
            decoding, greedy): up to ``blocks`` blocks of ``block`` drafts in flight, a new one started
            once the newest is ``spawn_at`` percent settled; it sizes the window (leave ``window``
            as "auto"). Exact. None: the window is ``window``.
        proposer: your own :class:`~jacobix.tokens.proposers.base.Proposer` (``init`` is then unused).
        width_policy: your own width policy (default: every draft, or adaptive with ``window="auto"``).
        costs: the pass costs ``window="auto"`` plans with: a :class:`CostBook` (each Decoding has
            its own, so reusing a Decoding reuses its measurements and what the policy learnt), or
            a calibration (a :class:`~jacobix.tokens.width.calibration.Calibration` or the path of
            a file ``jacobix calibrate`` wrote; refused at generation time for another model or
            device). By default the cached calibration of the model and device is used if there
            is one, else passes are timed live.
    """

    method: str = "jacobi"
    window: int | Literal["auto"] = "auto"
    init: str | DraftInit = "random"
    row_length: int | None = None
    lookahead: bool | LookaheadConfig = False
    block: bool = False
    lossy: LossyExit | None = None
    tree: DraftTree | None = None
    multiblock: MultiBlock | None = None
    proposer: Proposer | None = None
    width_policy: WidthPolicy | None = None
    costs: CostBook = field(default_factory=CostBook, compare=False, repr=False)

    def __post_init__(self) -> None:
        get_method(self.method)
        if isinstance(self.costs, (str, PathLike, Calibration)):  # a calibration file or object: a book that uses it
            calibration = self.costs if isinstance(self.costs, Calibration) else Calibration.load(self.costs)
            object.__setattr__(self, "costs", CostBook(calibration))
        if self.window != "auto" and (isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1):
            raise ValueError(f"Decoding.window must be an int >= 1 (tokens per pass, drafts + 1) or 'auto', got {self.window!r}")
        if isinstance(self.init, str):
            if self.init not in TEXT_INITS + IMAGE_INITS:
                raise ValueError(f"unknown init {self.init!r} (Decoding.init); use one of {', '.join(TEXT_INITS + IMAGE_INITS)} "
                                 "or a DraftInit callable")
        elif not callable(self.init):
            raise ValueError(f"Decoding.init must be a draft rule's name or a DraftInit callable, got {self.init!r}")
        if self.row_length is not None and (isinstance(self.row_length, bool) or not isinstance(self.row_length, int)
                                            or self.row_length < 1):
            raise ValueError(f"Decoding.row_length must be an int >= 1 or None, got {self.row_length!r}")
        if not isinstance(self.lookahead, (bool, LookaheadConfig)):
            raise ValueError(f"Decoding.lookahead must be True, False or a LookaheadConfig, got {self.lookahead!r}")
        _check_types(self)
        if self.tree is not None and (self.spec.sampled is not True or self.method == "sjd2"):
            raise ValueError(f"Decoding.tree draws alternatives from each draft's law, so it needs a sampling method "
                             f"('sjd', 'sjd-coupled' or 'sjd-pac'), not method={self.method!r}")
        if self.tree is not None and (self.block or self.lookahead):
            raise ValueError("Decoding.tree grows from one chain of drafts; it does not combine with block or lookahead")
        if self.multiblock is not None:
            _check_multiblock(self)
        if self.block and self.window == "auto":
            raise ValueError("Decoding.block iterates blocks of `window` tokens; give a whole number, e.g. window=16")

    @property
    def spec(self) -> Method:
        """The registered :class:`~jacobix.tokens.methods.Method`."""
        return get_method(self.method)

    @property
    def adaptive(self) -> bool:
        """True when the adaptive width policy chooses the tokens per pass."""
        return self.window == "auto" and not self.spec.sequential and self.multiblock is None

    @property
    def max_window(self) -> int:
        """Most tokens a pass feeds: 1 for sequential methods, every block in flight plus one for
        multiblock, 16 for "auto"."""
        if self.spec.sequential:
            return 1
        if self.multiblock is not None:
            return self.multiblock.max_drafts + 1
        return AUTO_MAX_WINDOW if self.window == "auto" else int(self.window)

    @property
    def lossless(self) -> bool:
        """False when a LOSSY early exit is set."""
        return self.lossy is None

    def record(self) -> dict[str, Any]:
        """The spec as plain JSON values (nested specs as ``{"type": name, ...fields}``), for
        settings files; refuses objects a file cannot hold (your own proposer, policy or rule)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if not f.compare or value is None or isinstance(value, (str, int, float, bool)):
                if f.compare:
                    out[f.name] = value
            elif type(value).__name__ in _RECORDABLE and _plain(asdict(value)):
                out[f.name] = {"type": type(value).__name__, **asdict(value)}
            else:
                raise ValueError(f"Decoding.{f.name}={value!r} cannot be written to a settings record; "
                                 "use the built-in options by name")
        return out

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Decoding:
        """The spec that :meth:`record` wrote."""
        if not isinstance(record, dict):
            raise ValueError(f"a Decoding record is a JSON object, got {record!r}")
        values = {}
        for name, value in record.items():
            if isinstance(value, dict):
                kind = _RECORDABLE.get(value.get("type"))
                if kind is None:
                    raise ValueError(f"Decoding record: {name} has unknown type {value.get('type')!r}")
                value = kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items() if k != "type"})
            values[name] = value
        return cls(**values)

    def check(self, sampling: SamplingConfig) -> None:
        """The rules that tie decoding to sampling: greedy methods refuse a temperature, sampling ones need one."""
        if not isinstance(sampling, SamplingConfig):
            raise ValueError(f"sampling must be a jacobix SamplingConfig, got {type(sampling).__name__}")
        sampled = self.spec.sampled
        if sampled is False and not sampling.greedy:
            raise ValueError(f"method={self.method!r} is greedy; for sampling with temperature > 0 use method='sjd'")
        if sampled is True and sampling.greedy:
            raise ValueError(f"method={self.method!r} samples and needs temperature > 0; for greedy decoding use "
                             "method='jacobi'")


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_plain(v) for v in value.values())
    return value is None or isinstance(value, (str, int, float, bool))


def _check_multiblock(decoding: Decoding) -> None:
    if not isinstance(decoding.multiblock, MultiBlock):
        raise ValueError(f"Decoding.multiblock must be a MultiBlock(block=n, blocks=K, spawn_at=percent) or None, "
                         f"got {decoding.multiblock!r}")
    if decoding.spec.sampled is not False or decoding.spec.sequential:
        raise ValueError(f"Decoding.multiblock reads which drafts agree with the model's greedy predictions, so it needs "
                         f"method='jacobi', not method={decoding.method!r}")
    if decoding.window != "auto":
        raise ValueError(f"Decoding.multiblock sizes the window itself (up to block x blocks drafts); leave window at "
                         f"'auto' instead of window={decoding.window!r}")
    if decoding.block or decoding.tree is not None or decoding.width_policy is not None:
        raise ValueError("Decoding.multiblock is a width rule of its own: it does not combine with block, tree or width_policy")


def _check_types(decoding: Decoding) -> None:
    if not isinstance(decoding.block, bool):
        raise ValueError(f"Decoding.block must be True or False, got {decoding.block!r}")
    if decoding.tree is not None and not isinstance(decoding.tree, DraftTree):
        raise ValueError(f"Decoding.tree must be a DraftTree(branches=K, depth=D) or None, got {decoding.tree!r}")
    if decoding.lossy is not None and not isinstance(decoding.lossy, LossyExit):
        raise ValueError(f"Decoding.lossy must be a LossyExit or None, got {decoding.lossy!r}")
    if decoding.proposer is not None and not isinstance(decoding.proposer, Proposer):
        raise ValueError(f"Decoding.proposer must be a jacobix.tokens.proposers.Proposer, got {type(decoding.proposer).__name__}")
    policy = decoding.width_policy
    if policy is not None and not (callable(getattr(policy, "choose", None)) and callable(getattr(policy, "observe", None))):
        raise ValueError(f"Decoding.width_policy must have choose() and observe() (a WidthPolicy), got {type(policy).__name__}")
    if not isinstance(decoding.costs, CostBook):
        raise ValueError(f"Decoding.costs must be a jacobix CostBook, got {type(decoding.costs).__name__}")


@dataclass(frozen=True, kw_only=True)
class Guidance:
    """Classifier-free guidance of a request: ``logits = uncond + scale * (cond - uncond)``.

    Attributes:
        scale: guidance scale (finite); 1 reproduces the conditional model.
        negative_input_ids: the unconditional prompts, one per row (any form ``input_ids`` takes).
    """

    scale: float
    negative_input_ids: Any

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale):
            raise ValueError(f"Guidance.scale must be a finite number, got {self.scale!r}")
        if self.negative_input_ids is None:
            raise ValueError("Guidance needs negative_input_ids: the unconditional prompts, one per row")


_RECORDABLE = {"DraftTree": DraftTree, "LookaheadConfig": LookaheadConfig, "LossyExit": LossyExit, "MultiBlock": MultiBlock}

__all__ = ["AUTO_MAX_WINDOW", "Decoding", "Guidance", "IMAGE_INITS", "LossyExit", "TEXT_INITS"]
