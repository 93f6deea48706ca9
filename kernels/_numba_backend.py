"""The Numba backend (``@njit(cache=True)`` through :mod:`._numba`, compiled on first call)."""

from ._nb_filter import bandpass_sos, notch_sos, sosfilt, steady_state_zi
from ._nb_quality import detect_artifacts, quality
from ._nb_match import cosine_scores, top_k

NAME = "numba"
__all__ = ["NAME", "sosfilt", "steady_state_zi", "bandpass_sos", "notch_sos",
           "detect_artifacts", "quality", "cosine_scores", "top_k"]
