"""How many tokens a pass feeds: a fixed width, or an adaptive one with measured pass costs."""

from jacobix.tokens.width.costs import CostBook, PassCosts
from jacobix.tokens.width.policy import AdaptiveConfig, AdaptiveWidth, FixedWidth, WidthPolicy

__all__ = ["AdaptiveConfig", "AdaptiveWidth", "CostBook", "FixedWidth", "PassCosts", "WidthPolicy"]
