"""The training recipes: one module per ``jacobix train`` target, registered here by name.

Each recipe hands :func:`jacobix.train.loop.fit` a model, a loss and a batch source, and saves the
checkpoint the library loads. Heavy optional dependencies (transformers, Meta-World) are imported
inside the functions that need them, so importing this package stays fast.
"""

from __future__ import annotations

from jacobix.train.recipe import Recipe
from jacobix.train.recipes import (ceed, classifier, cllm, image_ar, pccot, policy, shakespeare, sjd2, tarflow,
                                   vq)

RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in (
    shakespeare.RECIPE, cllm.RECIPE, vq.RECIPE, image_ar.RECIPE, sjd2.RECIPE, classifier.RECIPE, tarflow.FASHION,
    tarflow.DIGITS, pccot.RECIPE, policy.RECIPE, ceed.RECIPE)}
"""Target name -> recipe, in the order ``jacobix train --help`` lists them."""

__all__ = ["RECIPES", "Recipe"]
