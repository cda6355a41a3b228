"""Scripts that reproduce jacobix's bundled checkpoints (``jacobix train ...``)."""
