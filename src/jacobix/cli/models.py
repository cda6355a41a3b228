"""The bundled models each command accepts, for ``--help`` and errors."""

from __future__ import annotations


def text_models() -> tuple[str, ...]:
    """Names ``jacobix.load_text_model`` accepts besides a checkpoint folder."""
    from jacobix.api import text_model_names

    return text_model_names()


__all__ = ["text_models"]
