"""The SciPy/NumPy reference backend: the oracle both compiled backends are
property-tested against, and the baseline of the benchmarks. Never the hot path.
"""

from ._ref_filter import bandpass_sos, notch_sos, sosfilt, steady_state_zi
from ._ref_quality import detect_artifacts, quality
from ._ref_match import cosine_scores, top_k

NAME = "reference"
__all__ = ["NAME", "sosfilt", "steady_state_zi", "bandpass_sos", "notch_sos",
           "detect_artifacts", "quality", "cosine_scores", "top_k"]
