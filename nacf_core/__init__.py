"""nacf: an EEG biometric authentication core.

Subpackages
-----------
nacf_core.kernels
    The hot loops (Cython and Numba) behind one API, plus a SciPy/NumPy reference.
nacf_core.hardware
    OpenBCI Cyton codec and serial reader, LSL, file playback, the simulated headset.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("nacf")
except _metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
