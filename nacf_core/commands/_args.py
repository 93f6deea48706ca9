"""Argument types for the subcommands' parsers: a wrong value is an argparse error that
names the option and says what was expected (``nacf demo: error: argument
--keep-running: expected a finite number >= 0, got '-1'``), never a traceback; and what
the commands do when their output's reader goes away (``nacf ... | head -1``)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["address", "channel_list", "check_not_an_input", "check_output_path",
           "finite_float", "int_range", "metadata_value", "non_empty", "stdout_reader_gone",
           "stdout_to_devnull"]


def finite_float(lo: float | None = None, hi: float | None = None, *,
                 lo_open: bool = False, hi_open: bool = False) -> Callable[[str], float]:
    """A finite number in ``[lo, hi]`` (``(lo`` when ``lo_open``, ``hi)`` when ``hi_open``;
    None: unbounded)."""
    if lo is not None and hi is not None:
        want = (f"a finite number in {'(' if lo_open else '['}{_num(lo)}, {_num(hi)}"
                f"{')' if hi_open else ']'}")
    elif lo is not None:
        want = f"a finite number {'>' if lo_open else '>='} {_num(lo)}"
    elif hi is not None:
        want = f"a finite number {'<' if hi_open else '<='} {_num(hi)}"
    else:
        want = "a finite number"

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if (not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo))
                or (hi is not None and (v >= hi if hi_open else v > hi))):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return v

    parse.__name__ = "number"
    return parse


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def int_range(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An integer in ``[lo, hi]`` (``hi`` None: unbounded)."""
    want = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return v

    parse.__name__ = "integer"
    return parse


def non_empty(what: str) -> Callable[[str], str]:
    """A string that is not empty or blank; ``what`` says what it names (``"stream name"``)."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"expected a non-empty {what}, got {text!r}")
        return text

    parse.__name__ = what
    return parse


def channel_list(text: str) -> str:
    """Comma-separated channel names, none of them empty (the text as given: the command
    checks the names themselves before it reads a recording)."""
    want = "expected comma-separated channel names"
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{want}, got {text!r}")
    if any(not c.strip() for c in text.split(",")):
        raise argparse.ArgumentTypeError(f"{want}, got {text!r} (an empty name)")
    return text


channel_list.__name__ = "channel list"


def metadata_value(what: str, why: str) -> Callable[[str], str]:
    """A non-blank string of printable ASCII, what gRPC metadata carries; ``what`` says what
    it names (``"device id"``), ``why`` why it goes in metadata."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"expected a non-empty {what}, got {text!r}")
        if not all(" " <= c <= "~" for c in text):
            raise argparse.ArgumentTypeError(f"expected printable ASCII ({why}), got {text!r}")
        return text

    parse.__name__ = what
    return parse


def address(allow_empty: bool = False) -> Callable[[str], str]:
    """``HOST:PORT`` with a port in [0, 65535] (IPv6 as ``[::1]:PORT``; port 0: any free);
    ``''`` too when ``allow_empty`` (it turns the listener off)."""
    want = "HOST:PORT with a host and a port in [0, 65535]" + (" (or '')" if allow_empty
                                                               else "")

    def parse(text: str) -> str:
        from nacf_core.config import parse_address

        if allow_empty and text == "":
            return text
        try:
            parse_address("address", text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        return text

    parse.__name__ = "address"
    return parse


def check_output_path(option: str, path: str | None) -> None:
    """``ValueError`` naming ``option`` when ``path`` cannot be the file it writes: it is
    empty (``--json ''`` is no way to leave the option out), its directory is missing or
    not writable, the path is a directory, or no file can be made or written there
    (tried: ``/proc``, a read-only file) (``None``: the option was left out).
    Commands call it before their long work, not after it."""
    import os
    from pathlib import Path

    if path is None:
        return
    if not path:
        raise ValueError(f"{option} '' is an empty file name; expected a file to write.")
    p = Path(path)
    parent = p.parent
    if p.is_dir():
        raise ValueError(f"{option} {path!r} is a directory; expected a file to write.")
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path!r}: directory {str(parent)!r} does not exist or "
                         "is not writable.")
    # os.access answers yes to root everywhere (/proc, a read-only file): try it. A new
    # file is made and removed; an existing regular file is opened for writing without
    # truncating it (a FIFO or a device is left alone: opening one can block)
    try:
        if not os.path.lexists(p):  # (a dangling link is written through: left alone)
            with open(p, "xb"):
                pass
            os.unlink(p)
        elif p.is_file():
            with open(p, "r+b"):
                pass
    except OSError as e:
        raise ValueError(f"{option} {path!r} cannot be written: "
                         f"{e.strerror or e}.") from None


def check_not_an_input(option: str, path: str | None, manifest, rows) -> None:
    """``ValueError`` naming ``option`` when ``path`` is the manifest or one of its
    recordings (``rows``: :class:`nacf_core.evaluation.ManifestRow`), which writing the
    output would overwrite."""
    import os

    if not path:
        return
    real = os.path.realpath(path)
    if real == os.path.realpath(manifest):
        raise ValueError(f"{option} {path!r} is the manifest itself; write the output "
                         "elsewhere.")
    for r in rows:
        if real == os.path.realpath(r.path):
            raise ValueError(f"{option} {path!r} is the recording {r.recording!r} of subject "
                             f"{r.subject} in the manifest; write the output elsewhere.")


def stdout_reader_gone() -> bool:
    """Whether standard output is a pipe (or socket) whose reader has gone away (``nacf ...
    | head -1`` once ``head`` has its line), as ``poll`` reports it: an error on the
    descriptor, not a full pipe."""
    import select
    import sys

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # no descriptor (captured), no poll
        return False


def stdout_to_devnull() -> None:
    """Point standard output at /dev/null: what is still buffered for a reader that has
    gone away is dropped there, not raised again as BrokenPipeError when Python flushes
    it at exit (the recipe of Python's ``signal`` documentation, on SIGPIPE)."""
    import os
    import sys

    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
