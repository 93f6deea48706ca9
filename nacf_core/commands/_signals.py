"""Signals in the commands: Ctrl-C and SIGTERM held back while a step must not be cut
short (a call the server acts on whatever becomes of it, a server stopping)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

__all__ = ["interrupts_held"]


@contextlib.contextmanager
def interrupts_held(note: str, again: bool = False) -> Iterator[list[int]]:
    """SIGINT and SIGTERM held back until the block ends (the main thread's only): the
    signals that came are in the list, ``note`` is said at the first; with ``again``, a
    second one raises ``KeyboardInterrupt`` where the block is."""
    import signal
    import threading

    held: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield held
        return

    def hold(signum, frame):
        if not held:
            print(note, file=sys.stderr, flush=True)
        held.append(signum)
        if again and len(held) > 1:
            raise KeyboardInterrupt

    old = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield held
    finally:
        for s, h in old.items():
            signal.signal(s, h)
