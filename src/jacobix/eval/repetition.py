"""How repetitive a generated text is: the measure a looping student cannot hide from."""

from __future__ import annotations

from collections.abc import Sequence


def repeat_ngram_rate(tokens: Sequence[int], n: int = 4) -> float:
    """Share of the text's ``n``-grams that already occurred earlier in it (0: none repeats).

    Example: ``a b c a b c`` has 2-grams ab bc ca ab bc: the last two repeat, so the rate is 2/5.
    A text shorter than ``n + 1`` tokens has rate 0.
    """
    if n < 1:
        raise ValueError(f"repeat_ngram_rate needs n >= 1, got {n}")
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    seen: set[tuple[int, ...]] = set()
    repeated = 0
    for gram in grams:
        repeated += gram in seen
        seen.add(gram)
    return repeated / len(grams) if grams else 0.0


__all__ = ["repeat_ngram_rate"]
