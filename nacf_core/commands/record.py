"""``nacf record``: record any source to a CSV file (timestamp + channels, microvolts)."""

from __future__ import annotations

import argparse
import os
import sys
import time
import unicodedata

from nacf_core.commands._signals import terminations_interrupt

__all__ = ["register", "run", "record"]

_MAX_SECONDS = 1e9

_EPILOG = """\
SOURCE is one of:
  cyton:PORT[?montage=Fp1,Fp2,...]     OpenBCI Cyton, 8 channels, 250 Hz
  cyton-daisy:PORT                     OpenBCI Cyton+Daisy, 16 channels, 125 Hz
  lsl:NAME[?type=EEG&units=uV]         a Lab Streaming Layer stream (units: the voltage
                                       unit of every channel, instead of the stream's)
  file:PATH[?speed=N&units=uV]         a recording replayed as a live source (units: EDF/BDF,
                                       the voltage unit of every signal, instead of the header's)
The CSV header is 'timestamp' followed by the channel names; values are microvolts;
dropped samples are rows with empty channel fields. Exactly round(seconds * sfreq)
rows are written (SECONDS giving none is refused). OUT appears only when the recording
is complete: a failed or interrupted recording (Ctrl-C, SIGTERM, SIGHUP unless ignored, a
full disk) leaves no file, and an earlier OUT stays as it was.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "record", help="record a source (Cyton, LSL, file) to CSV",
        description="Record SOURCE to a CSV file.", epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--source", required=True, help="SOURCE (see below)")
    p.add_argument("--seconds", type=float, required=True, help="seconds of signal to record")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--montage", default=None,
                   help="channel names in order, comma-separated, or a preset "
                        "(ultracortex-8, ultracortex-16)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="give up after this many seconds without a sample (default 10)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nacf_core.errors import NacfError

    # SIGTERM, SIGHUP (the terminal or SSH session closed; left alone when ignored: nohup
    # nacf record): unwind like Ctrl-C, so the partial file goes
    with terminations_interrupt():
        try:
            n, counters = record(args.source, args.seconds, args.out, montage=args.montage,
                                 timeout=args.timeout)
        except (ValueError, TypeError, OSError, NacfError, TimeoutError) as exc:
            print(f"nacf record: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"nacf record: interrupted; {args.out!r} was not written (a recording is "
                  f"kept only when complete).", file=sys.stderr)
            return 130
    print(f"wrote {n} samples to {args.out} ({counters})")
    return 0


def record(source: str, seconds: float, out: str, montage=None, timeout: float = 10.0):
    """Record ``seconds`` of ``source`` to the CSV file ``out``.

    The rows go to a hidden file beside ``out`` that replaces ``out`` once every row
    is written; on any error or interruption it is removed, and ``out`` is untouched.

    Returns
    -------
    n_rows : int
    counters : dict
        The source's counters at the end.
    """
    from nacf_core._validation import check_finite_positive
    from nacf_core.commands._args import check_output_path
    from nacf_core.config import CompleteOrNothing
    from nacf_core.hardware.sources import open_source, parse_source

    seconds = check_finite_positive("seconds", seconds)
    if seconds > _MAX_SECONDS:  # seconds * sfreq rows must stay a countable number
        raise ValueError(
            f"'seconds' must be at most {_MAX_SECONDS:g} (about 31 years), got {seconds!r}."
        )
    timeout = check_finite_positive("timeout", timeout)
    check_output_path("--out", out)  # before the source is opened, not once it is read
    spec = parse_source(source)
    if spec.kind == "file" and os.path.realpath(out) == os.path.realpath(spec.target):
        # the recording would replace its own source, the rest of it lost
        raise ValueError(f"--out {out!r} is the recording the source {source!r} reads: "
                         "write it elsewhere.")
    src = open_source(source, montage=montage)
    written = 0
    # bytes, UTF-8 whatever the locale: the reader reads UTF-8 (a name such as 'Ö1' from
    # an EDF or LSL label could not be written under an ASCII locale, nor read back
    # from a Latin-1 one); a name from argv under such a locale keeps its own bytes
    with src, CompleteOrNothing(out, what="--out", binary=True) as fh:
        need = int(round(seconds * src.sfreq))
        if need == 0:  # a file of no row, said as done, is no recording
            raise ValueError(f"'seconds' {seconds:g} holds no sample at {src.sfreq:g} Hz "
                             f"(round(seconds * rate) = 0): ask for at least "
                             f"{1 / src.sfreq:g} s (one sample).")
        fh.write(_csv_header(src.ch_names).encode("utf-8", "surrogateescape"))
        last_data = time.monotonic()
        while written < need:
            chunk = src.read_chunk(0.5)
            if chunk is None:
                raise TimeoutError(
                    f"the source {source!r} ended after {written} of {need} samples."
                )
            if chunk.n_times == 0:
                if time.monotonic() - last_data > timeout:
                    raise TimeoutError(
                        f"no samples from {source!r} for {timeout:g} s "
                        f"({written} of {need} written)."
                    )
                continue
            last_data = time.monotonic()
            take = min(chunk.n_times, need - written)
            _write_rows(fh, chunk.timestamps[:take], chunk.samples[:take])
            written += take
        counters = src.counters.as_dict()
    return written, counters


def _csv_header(ch_names: list[str]) -> str:
    """``timestamp,<names>``; a name must be one field (the reader splits at ',')."""
    for name in ch_names:
        if "," in name or any(unicodedata.category(c) == "Cc" for c in name):
            raise ValueError(
                f"the source's channel name {name!r} cannot be a CSV header field (it holds "
                f"a comma or a control character); name the channels with "
                f"--montage NAME,NAME,..."
            )
    return ",".join(["timestamp", *ch_names]) + "\n"


def _write_rows(fh, timestamps, samples) -> None:
    import numpy as np

    # float32 values in their shortest round-tripping form (what nacf read, exactly)
    lines = []
    for t, row in zip(timestamps, np.asarray(samples, dtype=np.float32)):
        vals = ["" if not np.isfinite(v) else np.format_float_positional(v, trim="-")
                for v in row]
        lines.append(f"{t:.6f}," + ",".join(vals))
    fh.write(("\n".join(lines) + "\n").encode("ascii"))
