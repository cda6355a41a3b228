"""The one place the Hugging Face integration imports ``transformers`` from (it is optional)."""

from __future__ import annotations

from types import ModuleType

INSTALL_HINT = "pip install 'jacobix[hf]'  (transformers, gguf, accelerate)"


def require_transformers() -> ModuleType:
    """The ``transformers`` module, or an ImportError that says how to install it."""
    try:
        import transformers
    except ImportError as error:
        raise ImportError(f"jacobix's Hugging Face adapter needs transformers: {INSTALL_HINT}") from error
    return transformers


__all__ = ["INSTALL_HINT", "require_transformers"]
