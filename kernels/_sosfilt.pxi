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
# row are 64-byte aligned scratch buffers that stay in L1 while time advances; rows
# of time-major input are prefetched a few samples ahead.  Channel-major input
# (``axis=-1``) is transposed TILE samples (one cache line) per channel at a time into
# a tile, filtered there and transposed back.  Each section is SciPy's transposed
# direct form II:
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
from libc.string cimport memset

# No multiply-add contraction: every ISA variant then rounds exactly as SciPy's loop
# does (bit-identical results).  Contraction measured no faster here (on Zen 4 the
# FMA and multiply share ports; the loop also waits on loads and stores).
cdef extern from *:
    """
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC optimize ("fp-contract=off")
    #elif defined(__clang__)
    #pragma clang fp contract(off)
    #endif
    """


cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define NACF_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 3)
    #else
    #define NACF_PREFETCH(p) ((void)0)
    #endif
    """
    void NACF_PREFETCH(const void* p) noexcept nogil

DEF LANES = 16  # channel blocks are padded to a multiple of this many lanes
DEF LINE = 64   # bytes per cache line
DEF AHEAD = 4   # rows / tiles to prefetch ahead
DEF TILE = 16   # samples per transposed tile (channel-major input); _filter_common.TIME_TILE


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef inline void _sections(floating* row, const floating* sos, Py_ssize_t n_sections,
                           floating* zbuf, Py_ssize_t gp) noexcept nogil:
    """Run one time step of every section over ``row[:gp]`` in place.

    ``zbuf`` is (n_sections, 2, gp): section ``s`` reads and writes its two state
    rows; the loop over channels is what the compiler vectorises.
    """
    cdef Py_ssize_t s, c
    cdef floating* z0
    cdef floating* z1
    cdef floating b0, b1, b2, a1, a2, xc, yc
    for s in range(n_sections):
        b0 = sos[6 * s]
        b1 = sos[6 * s + 1]
        b2 = sos[6 * s + 2]
        a1 = sos[6 * s + 4]
        a2 = sos[6 * s + 5]
        z0 = zbuf + 2 * s * gp
        z1 = z0 + gp
        for c in range(gp):
            xc = row[c]
            yc = b0 * xc + z0[c]
            z0[c] = b1 * xc - a1 * yc + z1[c]
            z1[c] = b2 * xc - a2 * yc
            row[c] = yc


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef void _state(floating* z, Py_ssize_t n_channels, Py_ssize_t c0, Py_ssize_t g,
                 floating* zbuf, Py_ssize_t n_sections, Py_ssize_t gp,
                 bint load) noexcept nogil:
    """Copy the state of channels ``c0:c0+g`` between ``z`` (n_sections, 2, n_channels)
    and ``zbuf`` (n_sections, 2, gp); loading zeroes the padding."""
    cdef Py_ssize_t s, k, c, i
    for s in range(n_sections):
        for k in range(2):
            for c in range(gp):
                i = (2 * s + k) * gp + c
                if load:
                    zbuf[i] = z[(2 * s + k) * n_channels + c0 + c] if c < g else 0
                elif c < g:
                    z[(2 * s + k) * n_channels + c0 + c] = zbuf[i]


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef void _sosfilt(const floating* sos, Py_ssize_t n_sections,
                   const floating* x, floating* y,
                   Py_ssize_t n_times, Py_ssize_t n_channels, bint time_major,
                   floating* z, floating* zbuf, floating* tile,
                   Py_ssize_t block, Py_ssize_t n_tile) noexcept nogil:
    """Filter all channels, ``block`` at a time; ``z`` is (n_sections, 2, n_channels).

    Scratch (64-byte aligned): ``zbuf`` (n_sections * 2 * block) and ``tile``
    (TILE, block) or (1, block), block % LANES == 0.  Time-major input is filtered
    row by row through ``tile[0]``; channel-major input is transposed TILE samples at a
    time into ``tile`` (one cache line per channel), filtered there, and transposed
    back.  Lanes past the last channel of a block compute on zeros and are dropped.
    """
    cdef Py_ssize_t c0 = 0, g, gp, t, t0, tt, c, j
    cdef const floating* src
    cdef floating* dst
    cdef floating* row
    while c0 < n_channels:
        g = min(block, n_channels - c0)
        gp = (g + LANES - 1) // LANES * LANES
        _state(z, n_channels, c0, g, zbuf, n_sections, gp, True)
        for j in range(n_tile):
            memset(&tile[j * block + g], 0, (block - g) * sizeof(floating))
        if time_major:
            row = tile
            for t in range(n_times):
                src = x + t * n_channels + c0
                if t + AHEAD < n_times:  # rows are n_channels apart: fetch ahead
                    c = 0
                    while c < g:
                        NACF_PREFETCH(src + AHEAD * n_channels + c)
                        c += LINE // sizeof(floating)
                for c in range(g):
                    row[c] = src[c]
                _sections(row, sos, n_sections, zbuf, gp)
                dst = y + t * n_channels + c0
                for c in range(g):
                    dst[c] = row[c]
        else:
            t0 = 0
            while t0 < n_times:
                tt = min(TILE, n_times - t0)
                if tt == TILE:  # constant trip count: unrolled, no loop overhead
                    for c in range(g):
                        src = x + (c0 + c) * n_times + t0
                        NACF_PREFETCH(src + AHEAD * TILE)
                        for j in range(TILE):
                            tile[j * block + c] = src[j]
                else:
                    for c in range(g):
                        src = x + (c0 + c) * n_times + t0
                        for j in range(tt):
                            tile[j * block + c] = src[j]
                for j in range(tt):
                    _sections(tile + j * block, sos, n_sections, zbuf, gp)
                if tt == TILE:
                    for c in range(g):
                        dst = y + (c0 + c) * n_times + t0
                        for j in range(TILE):
                            dst[j] = tile[j * block + c]
                else:
                    for c in range(g):
                        dst = y + (c0 + c) * n_times + t0
                        for j in range(tt):
                            dst[j] = tile[j * block + c]
                t0 += TILE
        _state(z, n_channels, c0, g, zbuf, n_sections, gp, False)
        c0 += block


def sosfilt_f32(const float[:, ::1] sos, const float[:, ::1] x, float[:, ::1] y,
                float[:, :, ::1] z, float[:, :, ::1] zbuf, float[:, ::1] tile,
                bint time_major):
    """float32 kernel: filter ``x`` into ``y`` carrying state ``z`` (n_sections, 2, n_channels).

    ``zbuf`` (n_sections, 2, block) and ``tile`` (n_tile, block) are 64-byte aligned
    scratch with ``block % 16 == 0``.  No checks: see ``nacf_core.dsp``.
    """
    cdef Py_ssize_t n_times = x.shape[0] if time_major else x.shape[1]
    cdef Py_ssize_t n_channels = z.shape[2]
    if x.shape[0] == 0 or x.shape[1] == 0:
        return
    with nogil:
        _sosfilt(&sos[0, 0], sos.shape[0], &x[0, 0], &y[0, 0], n_times, n_channels,
                 time_major, &z[0, 0, 0], &zbuf[0, 0, 0], &tile[0, 0],
                 tile.shape[1], tile.shape[0])


def sosfilt_f64(const double[:, ::1] sos, const double[:, ::1] x, double[:, ::1] y,
                double[:, :, ::1] z, double[:, :, ::1] zbuf, double[:, ::1] tile,
                bint time_major):
    """float64 kernel: as :func:`sosfilt_f32`."""
    cdef Py_ssize_t n_times = x.shape[0] if time_major else x.shape[1]
    cdef Py_ssize_t n_channels = z.shape[2]
    if x.shape[0] == 0 or x.shape[1] == 0:
        return
    with nogil:
        _sosfilt(&sos[0, 0], sos.shape[0], &x[0, 0], &y[0, 0], n_times, n_channels,
                 time_major, &z[0, 0, 0], &zbuf[0, 0, 0], &tile[0, 0],
                 tile.shape[1], tile.shape[0])
