"""Token decoding on the engine: proposers, the verifier, width policies and ``generate``."""
