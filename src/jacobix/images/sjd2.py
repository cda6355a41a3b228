"""SJD2 (Speculative Jacobi-Denoising, arXiv 2510.08994) for the image model.

The proposer works on any token embedding and lives in :mod:`jacobix.tokens.proposers.denoising`
(re-exported here); the ``sjd2`` method is registered in :mod:`jacobix.tokens.methods`; the
fine-tuned model's noisy-input embedding is read with the checkpoint
(:func:`jacobix.images.denoise.load_noise_embedding`, ``load_image_model("fmnist-ar-sjd2").noise``).
"""

from __future__ import annotations

from jacobix.tokens.proposers.denoising import SJD2Config, SJD2Proposer, sjd2_proposer

__all__ = ["SJD2Config", "SJD2Proposer", "sjd2_proposer"]
