"""A dependency-free progress bar on stderr for long CLI commands."""

from __future__ import annotations

import sys
import time

__all__ = ["ProgressBar"]


class ProgressBar:
    """``bar(done, total, stage)`` redraws one line on stderr (nothing if disabled)."""

    def __init__(self, label: str, enabled: bool = True, width: int = 30, stream=None):
        self.label = label
        self.enabled = enabled
        self.width = width
        self.stream = stream or sys.stderr
        self.t0 = time.monotonic()
        self._last = ""

    def __call__(self, done: int, total: int, stage: str = "") -> None:
        if not self.enabled:
            return
        frac = 0.0 if total <= 0 else min(1.0, done / total)
        n = int(round(frac * self.width))
        line = (f"\r{self.label} [{'#' * n}{'.' * (self.width - n)}] {frac * 100:5.1f}% "
                f"{time.monotonic() - self.t0:6.1f}s {stage}")
        pad = " " * max(0, len(self._last) - len(line))
        self.stream.write(line + pad)
        self.stream.flush()
        self._last = line

    def close(self) -> None:
        if self.enabled and self._last:
            self.stream.write("\n")
            self.stream.flush()
