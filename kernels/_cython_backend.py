"""The Cython backend (ahead-of-time compiled, the default)."""

from ._cy_filter import bandpass_sos, notch_sos, sosfilt, steady_state_zi
from ._cy_quality import detect_artifacts, quality
from ._cy_match import cosine_scores, top_k

NAME = "cython"
__all__ = ["NAME", "sosfilt", "steady_state_zi", "bandpass_sos", "notch_sos",
           "detect_artifacts", "quality", "cosine_scores", "top_k"]
