"""Models that implement jacobix's ``forward(tokens, positions, cache)`` protocol."""

from jacobix.models.llama import Llama, LlamaConfig, load_llama, save_llama

__all__ = ["Llama", "LlamaConfig", "load_llama", "save_llama"]
