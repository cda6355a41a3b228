"""What follows a generation from outside: a progress bar and a streamer of committed tokens."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from jacobix.core.engine import FixedPointState


class Watchers:
    """A progress bar of passes and a transformers-style streamer (``put``, ``end``) of row 0.

    The streamer gets the prompt first, as transformers streams it, then every pass's committed tokens.
    """

    def __init__(self, progress: bool, method: str, streamer: Any, state: FixedPointState, prompt_length: Tensor) -> None:
        self.bar = _progress_bar(method) if progress else None
        self.streamer, self.state = streamer, state
        self.any = self.bar is not None or streamer is not None
        if streamer is not None:
            prompt = int(prompt_length[0])
            streamer.put(state.values[0, :prompt].cpu())
            self.sent = prompt
            self._stream()  # the first token comes from the prefill pass

    def after_sweep(self) -> None:
        if self.bar is not None:
            self.bar.update()
        if self.streamer is not None:
            self._stream()

    def _stream(self) -> None:
        length = int(self.state.length[0])
        if length > self.sent:
            self.streamer.put(self.state.values[0, self.sent : length].cpu())
            self.sent = length

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.streamer is not None:
            self.streamer.end()


def _progress_bar(method: str):
    from tqdm.auto import tqdm

    return tqdm(desc=f"jacobix {method}", unit="pass", leave=False, disable=None)  # None: off when not a terminal


__all__ = ["Watchers"]
