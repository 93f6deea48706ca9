"""Shape checks of the compiled backends' functions (Cython and Numba alike).

The backends leave value checks to the public layer (:mod:`nacf_core.dsp`,
:mod:`nacf_core.artifacts`, :mod:`nacf_core.matching`), but their loops run without
bounds checks, so arrays whose shapes do not fit together would be read or written past
their ends (NaN or garbage results, or a crash).  These O(1) checks run once per call,
before any kernel, and raise ``ValueError`` naming what does not fit.
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_sosfilt", "check_epochs", "check_reason", "check_match"]


def _ndim(name: str, a, ndim: int, what: str) -> None:
    if np.ndim(a) != ndim:
        raise ValueError(f"{name!r} must be {ndim}-D {what}, got shape {np.shape(a)}.")


def check_sosfilt(sos, x, axis, zi) -> None:
    """``sos`` (n_sections >= 1, 6), 2-D ``x``, ``zi`` of SciPy's shape for ``axis``."""
    _ndim("sos", sos, 2, "(n_sections, 6)")
    if sos.shape[0] < 1 or sos.shape[1] != 6:
        raise ValueError(f"'sos' must be (n_sections >= 1, 6), got {sos.shape}.")
    _ndim("x", x, 2, "(n_channels, n_times) or (n_times, n_channels)")
    if zi is None:
        return
    if axis in (0, -2):
        want = (sos.shape[0], 2, x.shape[1])
    else:
        want = (sos.shape[0], x.shape[0], 2)
    if np.shape(zi) != want:
        raise ValueError(f"'zi' must have shape {want} for x of shape {x.shape} and axis "
                         f"{axis}, got {np.shape(zi)}.")


def check_epochs(epochs) -> None:
    """3-D (n_epochs, n_channels, n_times)."""
    _ndim("epochs", epochs, 3, "(n_epochs, n_channels, n_times)")


def check_reason(epochs, reason) -> None:
    """``reason`` (n_epochs, n_channels) of ``epochs``."""
    check_epochs(epochs)
    if np.shape(reason) != epochs.shape[:2]:
        raise ValueError(f"'reason' must have shape (n_epochs, n_channels) = "
                         f"{epochs.shape[:2]}, got {np.shape(reason)}.")


def check_match(probes, templates, k=None) -> None:
    """2-D probes and templates of one embedding dimension; ``0 <= k <= n_templates``."""
    _ndim("probes", probes, 2, "(n_probes, d)")
    _ndim("templates", templates, 2, "(n_templates, d)")
    if probes.shape[1] != templates.shape[1]:
        raise ValueError(f"'probes' and 'templates' must have the same embedding dimension, "
                         f"got {probes.shape} and {templates.shape}.")
    if k is not None and not 0 <= k <= templates.shape[0]:
        raise ValueError(f"'k' must be in [0, n_templates] = [0, {templates.shape[0]}], "
                         f"got {k}.")
