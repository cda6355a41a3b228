"""SJD2 (Speculative Jacobi-Denoising, arXiv 2510.08994) for the image model: the ``sjd2`` method.

The proposer works on any token embedding and lives in :mod:`jacobix.tokens.proposers.denoising`
(re-exported here); the fine-tuned model's noisy-input embedding is read with the checkpoint
(:func:`jacobix.images.denoise.load_noise_embedding`, ``load_image_model("fmnist-ar-sjd2").noise``).
"""

from __future__ import annotations

from jacobix.tokens.generate import Method, register_method
from jacobix.tokens.proposers.basic import DraftInit
from jacobix.tokens.proposers.denoising import SJD2Config, SJD2Proposer, sjd2_proposer


def _needs_proposer(init: DraftInit) -> SJD2Proposer:
    raise ValueError("method='sjd2' needs proposer=SJD2Proposer(noise, model.embed, SJD2Config(...)) built from a model "
                     "fine-tuned for SJD2; for images use ImageSampling(method='sjd2') with load_image_model('fmnist-ar-sjd2')")


register_method(Method("sjd2", True, proposer=_needs_proposer))

__all__ = ["SJD2Config", "SJD2Proposer", "sjd2_proposer"]
