"""The Numba kernel tests pass as plain Python too (``NUMBA_DISABLE_JIT=1``).

Every Numba kernel test carries the ``numba_kernels`` marker.  This test reruns them
in a subprocess with the JIT disabled and the small-shape hypothesis profile
(``NACF_HYPOTHESIS_PROFILE=small``: pure Python is slow), and fails if that run
fails or collects nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _marked_modules() -> list[str]:
    me = Path(__file__).name
    return sorted(str(p) for p in TESTS.rglob("test_*.py")
                  if p.name != me and "numba_kernels" in p.read_text(encoding="utf-8"))


def test_numba_kernel_tests_pass_without_jit():
    modules = _marked_modules()
    assert any(m.endswith("test_kernels_filter.py") for m in modules)
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1", "NACF_HYPOTHESIS_PROFILE": "small"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "numba_kernels", "-q", "-p", "no:cacheprovider",
         "-W", "ignore::RuntimeWarning", *modules],
        cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=240,
    )
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, f"NUMBA_DISABLE_JIT=1 run failed:\n{tail}"
    m = re.search(r"(\d+) passed", proc.stdout)
    assert m and int(m.group(1)) > 0, f"NUMBA_DISABLE_JIT=1 run collected nothing:\n{tail}"
    assert " skipped" not in proc.stdout.splitlines()[-1], tail
