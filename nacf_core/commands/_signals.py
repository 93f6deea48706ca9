"""Signals in the commands: SIGTERM (and SIGHUP) taken as Ctrl-C, so a command unwinds and
cleans up; Ctrl-C and SIGTERM held back while a step must not be cut short (a call the
server acts on whatever becomes of it, a server stopping)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

__all__ = ["interrupts_held", "terminations_interrupt"]


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


@contextlib.contextmanager
def terminations_interrupt(*, hup: bool = True, once: bool = False) -> Iterator[None]:
    """Until the block ends, SIGTERM raises ``KeyboardInterrupt`` in the main thread (the
    main thread's only), so the command unwinds as on Ctrl-C (its files, ports and server
    go); so does SIGHUP, its terminal closed, with ``hup`` and unless it is ignored
    (``nohup``). ``once``: the first such signal ignores the others, which must not cut
    the clean-up it started short."""
    import signal
    import threading

    old: dict[int, object] = {}

    def term(signum, frame):
        if once:
            for s in old:
                signal.signal(s, signal.SIG_IGN)
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        sighup = getattr(signal, "SIGHUP", None)
        if hup and sighup is not None and signal.getsignal(sighup) == signal.SIG_DFL:
            old[sighup] = signal.SIG_DFL
        old[signal.SIGTERM] = signal.getsignal(signal.SIGTERM)
        for s in old:
            signal.signal(s, term)
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
