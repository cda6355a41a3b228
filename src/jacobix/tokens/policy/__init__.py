"""How many drafts a pass feeds: a fixed width, or an adaptive one with measured pass costs."""

from jacobix.tokens.policy.costs import PassCosts
from jacobix.tokens.policy.width import AdaptiveConfig, AdaptiveWidth, FixedWidth, WidthPolicy

__all__ = ["AdaptiveConfig", "AdaptiveWidth", "FixedWidth", "PassCosts", "WidthPolicy"]
