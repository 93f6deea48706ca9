"""The ``nacf`` command line.

Each subcommand lives in its own module under ``nacf_core.commands`` with a
``register(subparsers)`` function that adds its parser and sets ``func`` (called
with the parsed namespace, returns the exit code).  Modules import heavy
dependencies inside ``func`` so that ``nacf --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from nacf_core import __version__

# The one table of subcommand modules, in the order ``--help`` lists them.
COMMAND_MODULES: list[str] = [
    "nacf_core.commands.serve",
    "nacf_core.commands.client",
    "nacf_core.commands.simulate",
    "nacf_core.commands.record",
    "nacf_core.commands.train",
    "nacf_core.commands.evaluate",
    "nacf_core.commands.demo",
    "nacf_core.commands.store",
    "nacf_core.commands.kernels",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nacf", description="nacf: EEG biometric authentication core."
    )
    parser.add_argument("--version", action="version", version=f"nacf {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level of the JSON-lines log on stderr (default: INFO)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _configure_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        from nacf_core.commands._args import stdout_reader_gone, stdout_to_devnull

        if not stdout_reader_gone():  # another pipe: an error of the command's own
            raise
        # the output's reader went away (`nacf kernels info | head -1`): nothing more can
        # be shown; the end of a program that SIGPIPE ends (Python ignores SIGPIPE)
        stdout_to_devnull()
        return 128 + signal.SIGPIPE


def _configure_logging(level: str) -> None:
    try:
        from nacf_core.logs import configure  # JSON lines, see nacf_core/logs.py
    except ImportError:
        logging.basicConfig(level=level)
    else:
        configure(level)


if __name__ == "__main__":
    status = main()
    # Under `python -m`, CPython (3.11, 3.12) exits by SIGINT (-2), whatever status is
    # asked for, once a KeyboardInterrupt has ended an exec() or eval() of a string, even
    # one caught and handled: Ctrl-C, or SIGTERM (which the commands turn into
    # KeyboardInterrupt), coming while a dataclass or a namedtuple is created (an import
    # under way) made `nacf demo` say "interrupted" and then die of SIGINT instead of exiting
    # 130. Every exec() of a string clears that flag first; the `nacf` script is not affected.
    exec("")
    sys.exit(status)
