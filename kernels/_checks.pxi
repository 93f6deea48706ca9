# cython: language_level=3
# Argument checks of the compiled kernels' entry points (included by every .pxi body).
#
# The loops run with bounds checking off, so an entry point checks once per call, in
# O(1), that its arguments' shapes fit together before it indexes anything: a state,
# an output or a scratch buffer of the wrong shape would otherwise be read or written
# past its end.  ``nacf_core.pad`` and anyone holding ``kernel_module()`` call these
# entry points directly, past the public layer's validation.


cdef inline int _need(bint ok, str what) except -1:
    """Raise ``ValueError(what)`` unless ``ok``."""
    if not ok:
        raise ValueError(what)
    return 0
