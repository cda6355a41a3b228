"""The training recipes: one module per ``jacobix train`` target, registered here by name.

Each recipe hands :func:`jacobix.train.loop.fit` a model, a loss and a batch source, and saves the
checkpoint the library loads. Heavy optional dependencies (transformers, Meta-World) are imported
inside the functions that need them, so importing the recipes stays fast.

``RECIPES`` imports every recipe module on first use (not when the package is imported), so that
``python -m jacobix.train.recipes.NAME`` (what torchrun starts) runs its module only once.
"""

from __future__ import annotations

from jacobix.train.recipe import Recipe


def _recipes() -> dict[str, Recipe]:
    """Target name -> recipe, in the order ``jacobix train --help`` lists them."""
    from jacobix.train.recipes import (arith, ceed, classifier, cllm, forcing, image_ar, pccot, policy, shakespeare,
                                       sjd2, tarflow, vq)

    return {recipe.name: recipe for recipe in (
        shakespeare.RECIPE, arith.RECIPE, cllm.RECIPE, forcing.RECIPE, vq.RECIPE, image_ar.RECIPE, sjd2.RECIPE, classifier.RECIPE, tarflow.FASHION,
        tarflow.DIGITS, pccot.RECIPE, policy.RECIPE, ceed.RECIPE)}


def __getattr__(name: str):
    if name == "RECIPES":  # dict[str, Recipe]: built once, on first use
        globals()["RECIPES"] = _recipes()
        return globals()["RECIPES"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RECIPES", "Recipe"]
