"""Class-conditional image-token generation on jacobix's engine (bundled Fashion-MNIST model).

Typical use::

    from jacobix import Decoding
    from jacobix.images import ImageSampling, generate_images, load_image_model
    model = load_image_model()
    out = generate_images(model, [0, 7, 9], ImageSampling(decoding=Decoding(method="sjd-coupled", init="prior-above")))
    out.images  # (3, 28, 28) floats in [0, 1]
"""

from jacobix.images.proposers import IMAGE_INITS, CodeRandomInit, GridTableInit
from jacobix.images.model import CodesOnly, ImageModel, ImageVocab, load_image_model
from jacobix.images.sample import ImageSamples, ImageSampling, generate_images
from jacobix.images.sjd2 import SJD2Config, SJD2Proposer
from jacobix.images.vq import VQConfig, VQTokenizer, load_vq

__all__ = [
    "IMAGE_INITS",
    "CodeRandomInit",
    "CodesOnly",
    "GridTableInit",
    "ImageModel",
    "ImageSamples",
    "ImageSampling",
    "ImageVocab",
    "SJD2Config",
    "SJD2Proposer",
    "VQConfig",
    "VQTokenizer",
    "generate_images",
    "load_image_model",
    "load_vq",
]
