"""Run a snippet of Python in a child process whose files may not grow past a size: a
full disk, for the tests of writes that must leave nothing half-written."""

from __future__ import annotations

import subprocess
import sys


def run_with_file_size_limit(setup: str, body: str, limit_bytes: int, *args: str
                             ) -> subprocess.CompletedProcess:
    """Run ``setup``, then ``body`` (Python source; ``sys`` is imported, ``sys.argv[1:]``
    are ``args``) with ``RLIMIT_FSIZE`` at ``limit_bytes`` and SIGXFSZ ignored, so a
    write past it fails with ``OSError`` (EFBIG) as a full disk would. ``setup`` runs
    before the limit (imports: their caches may be written)."""
    code = ("import resource, signal, sys\n" + setup + "\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({int(limit_bytes)}, "
            "resource.RLIM_INFINITY))\n" + body)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, timeout=60)
