"""The one registry of decoding methods: what ``Decoding(method=...)`` accepts.

A method is a name, whether it samples, and the proposer it drafts with by default. Every
built-in is registered here, so the list never depends on which modules were imported; a
method whose proposer lives in a higher layer (SJD2's denoising drafts need a fine-tuned model)
is registered with a factory that says how to build it. :func:`register_method` adds yours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from jacobix.tokens.proposers.base import Proposer
from jacobix.tokens.proposers.basic import DraftInit, JacobiProposer
from jacobix.tokens.proposers.coupled import ContinuationProposer, CoupledProposer


@dataclass(frozen=True)
class Method:
    """A named decoding method.

    Attributes:
        name: what ``Decoding(method=...)`` takes.
        sampled: True samples (needs temperature > 0), False is greedy, None follows the temperature.
        sequential: one token per pass (the reference decoder); ignores the window.
        proposer: builds the default proposer from the draft rule for fresh slots.
        summary: one line for ``--help`` and error messages.
    """

    name: str
    sampled: bool | None
    sequential: bool = False
    proposer: Callable[[DraftInit], Proposer] = JacobiProposer
    summary: str = ""


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> None:
    """Make ``Decoding(method=method.name)`` available."""
    if not isinstance(method, Method):
        raise ValueError(f"register_method takes a jacobix.tokens.methods.Method, got {type(method).__name__}")
    METHODS[method.name] = method


def get_method(name: str) -> Method:
    """The registered method called ``name``; a clear error listing the known ones otherwise."""
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"unknown method {name!r}; use one of {', '.join(repr(m) for m in METHODS)} "
                         "or register one with jacobix.tokens.methods.register_method")
    return METHODS[name]


def _denoising_needs_a_model(init: DraftInit) -> Proposer:
    raise ValueError("method='sjd2' needs proposer=SJD2Proposer(noise, model.embed, SJD2Config(...)) built from a model "
                     "fine-tuned for SJD2; for images use ImageSampling(decoding=Decoding(method='sjd2')) with "
                     "load_image_model('fmnist-ar-sjd2')")


for _method in (
    Method("ar", None, sequential=True, summary="sequential decoding, one token per pass (the reference)"),
    Method("jacobi", False, summary="greedy Jacobi decoding: the same tokens as greedy ar in fewer passes"),
    Method("sjd", True, summary="Speculative Jacobi Decoding: samples exactly as sampling ar does"),
    Method("sjd-coupled", True, proposer=CoupledProposer,
           summary="SJD whose redrafts reuse one noise per position: converges faster, still exact"),
    Method("sjd-pac", True, proposer=ContinuationProposer,
           summary="SJD whose redrafts keep the old draft unless the target moved (SJD-PAC's continuation; "
                   "add its draft tree with Decoding.tree); exact"),
    Method("sjd2", True, proposer=_denoising_needs_a_model,
           summary="SJD2: Jacobi-denoising drafts on a model fine-tuned for it (images)"),
):
    register_method(_method)


__all__ = ["METHODS", "Method", "get_method", "register_method"]
