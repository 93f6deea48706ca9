# cython: language_level=3
# The Cython body of the IIR filter kernel (cascaded second-order sections).
#
# setup.py compiles this file once per instruction-set variant (baseline x86-64,
# AVX2+FMA, AVX-512) as ``nacf_core.kernels._cy_sosfilt_<variant>``;
# ``kernels/_cy_filter.py`` imports the best one the CPU runs (``_cpu.load_variant``).
#
# Algorithm.  Channels are independent and the recursion is serial only in time, so
# the kernel walks time one sample at a time and, for each section, runs a loop over a
# block of channels that the C compiler vectorises (16 float32 / 8 float64 lanes with
# AVX-512).  A block's state (``zbuf``, shape (n_sections, 2, block)) and its current
# row (``row``) are 64-byte aligned scratch buffers that stay in L1 while time
# advances.  For ``axis=-1`` the row is gathered from ``block`` channel rows, each
# read sequentially.  Each section is SciPy's transposed direct form II:
#
#     y  = b0 * x + z0
#     z0 = b1 * x - a1 * y + z1
#     z1 = b2 * x - a2 * y
#
# in the working dtype (float32 state and arithmetic for float32 input, as SciPy).
# Multiply-adds are not contracted into FMAs (see the pragma below), so every variant
# gives results bit-identical to SciPy's.  The loops run without the GIL and start no
# threads.

cimport cython
from cython cimport floating
from libc.string cimport memcpy

import numpy as np

# No multiply-add contraction: every ISA variant then rounds exactly as SciPy's loop
# does (bit-identical results); the loop is bound by loads and stores, not by FMAs.
cdef extern from *:
    """
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC optimize ("fp-contract=off")
    #elif defined(__clang__)
    #pragma clang fp contract(off)
    #endif
    """


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef void _sosfilt(const floating* sos, Py_ssize_t n_sections,
                   const floating* x, floating* y,
                   Py_ssize_t n_times, Py_ssize_t n_channels, bint time_major,
                   floating* z, floating* zbuf, floating* row,
                   Py_ssize_t block) noexcept nogil:
    cdef Py_ssize_t c0, g, s, k, t, c
    cdef Py_ssize_t t_stride = n_channels if time_major else 1
    cdef Py_ssize_t c_stride = 1 if time_major else n_times
    cdef const floating* src
    cdef floating* dst
    cdef floating* z0
    cdef floating* z1
    cdef floating b0, b1, b2, a1, a2, xc, yc
    c0 = 0
    while c0 < n_channels:
        g = min(block, n_channels - c0)
        for s in range(n_sections):
            for k in range(2):
                memcpy(&zbuf[(2 * s + k) * block], &z[(2 * s + k) * n_channels + c0],
                       g * sizeof(floating))
        for t in range(n_times):
            src = x + t * t_stride + c0 * c_stride
            if time_major:
                for c in range(g):
                    row[c] = src[c]
            else:
                for c in range(g):
                    row[c] = src[c * c_stride]
            for s in range(n_sections):
                b0 = sos[6 * s]
                b1 = sos[6 * s + 1]
                b2 = sos[6 * s + 2]
                a1 = sos[6 * s + 4]
                a2 = sos[6 * s + 5]
                z0 = zbuf + 2 * s * block
                z1 = z0 + block
                for c in range(g):
                    xc = row[c]
                    yc = b0 * xc + z0[c]
                    z0[c] = b1 * xc - a1 * yc + z1[c]
                    z1[c] = b2 * xc - a2 * yc
                    row[c] = yc
            dst = y + t * t_stride + c0 * c_stride
            if time_major:
                for c in range(g):
                    dst[c] = row[c]
            else:
                for c in range(g):
                    dst[c * c_stride] = row[c]
        for s in range(n_sections):
            for k in range(2):
                memcpy(&z[(2 * s + k) * n_channels + c0], &zbuf[(2 * s + k) * block],
                       g * sizeof(floating))
        c0 += block


def sosfilt_f32(const float[:, ::1] sos, const float[:, ::1] x, float[:, ::1] y,
                float[:, :, ::1] z, float[:, :, ::1] zbuf, float[::1] row, bint time_major):
    """float32 kernel: filter ``x`` into ``y`` carrying state ``z`` (n_sections, 2, n_channels).

    ``zbuf`` (n_sections, 2, block) and ``row`` (block,) are aligned scratch.  No checks.
    """
    cdef Py_ssize_t n_times = x.shape[0] if time_major else x.shape[1]
    cdef Py_ssize_t n_channels = z.shape[2]
    if x.shape[0] == 0 or x.shape[1] == 0:
        return
    with nogil:
        _sosfilt(&sos[0, 0], sos.shape[0], &x[0, 0], &y[0, 0], n_times, n_channels,
                 time_major, &z[0, 0, 0], &zbuf[0, 0, 0], &row[0], row.shape[0])


def sosfilt_f64(const double[:, ::1] sos, const double[:, ::1] x, double[:, ::1] y,
                double[:, :, ::1] z, double[:, :, ::1] zbuf, double[::1] row, bint time_major):
    """float64 kernel: as :func:`sosfilt_f32`."""
    cdef Py_ssize_t n_times = x.shape[0] if time_major else x.shape[1]
    cdef Py_ssize_t n_channels = z.shape[2]
    if x.shape[0] == 0 or x.shape[1] == 0:
        return
    with nogil:
        _sosfilt(&sos[0, 0], sos.shape[0], &x[0, 0], &y[0, 0], n_times, n_channels,
                 time_major, &z[0, 0, 0], &zbuf[0, 0, 0], &row[0], row.shape[0])
