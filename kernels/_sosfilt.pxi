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
from libc.stdlib cimport free, malloc
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


# Time-major input with few channels (EEG: 8-64): the loop above is bound by latency,
# not throughput: at 16 float64 lanes (two AVX-512 vectors) each section of each time
# step waits for the previous section's output and for its own state to come back from
# memory (~30 cycles a step).  The wavefront kernel below keeps every section's state
# and coefficients in vector registers and runs section s at time t - s, so the
# sections of one iteration are independent and the core overlaps them; lane blocks are
# exactly two vectors wide (compile-time constant).  Same operations per section in the
# same order, so results stay bit-identical.  Cascades longer than four sections (the
# registers' capacity) run as successive four-section passes over the output, which is
# the same arithmetic.  GCC/Clang vector extensions; elsewhere the loop above runs.
cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC optimize ("fp-contract=off")
    #elif defined(__clang__)
    #pragma clang fp contract(off)
    #endif
    #include <string.h>
    #if defined(__AVX512F__)
    #define NACF_VB 64
    #elif defined(__AVX__)
    #define NACF_VB 32
    #else
    #define NACF_VB 16
    #endif
    #define NACF_WAVE_LANES_F64 (2 * NACF_VB / 8)
    #define NACF_WAVE_LANES_F32 (2 * NACF_VB / 4)
    typedef double nacf_vd __attribute__((vector_size(NACF_VB)));
    typedef float nacf_vf __attribute__((vector_size(NACF_VB)));

    /* one section k at its current time on each of the block's NV vectors: input in[]
       (k = 0) or the previous section's output o[k-1] from the previous iteration;
       output into o[k] */
    #define NACF_STEP(k) do { int v_; for (v_ = 0; v_ < NV; v_++) { \\
        V x_ = (k) ? o[(k) ? (k) - 1 : 0][v_] : in[v_]; \\
        V y_ = b0[k] * x_ + z0[k][v_]; \\
        z0[k][v_] = b1[k] * x_ - a1[k] * y_ + z1[k][v_]; \\
        z1[k][v_] = b2[k] * x_ - a2[k] * y_; \\
        o[k][v_] = y_; } } while (0)
    #define NACF_CSTEP(k) do { if (i >= (k) && i - (k) < n) NACF_STEP(k); } while (0)

    /* nacf_wave<S>_<NVP>_<SUF>: S sections over a block of NVP vectors of lanes; the
       state z is (S, 2, NVP * VL); STEPS / CSTEPS run every section, last first
       (unconditionally / only those whose time lies in the signal) */
    #define NACF_WAVE_FN(T, VT, SUF, S, NVP, STEPS, CSTEPS) \\
    static void nacf_wave##S##_##NVP##_##SUF(const T* sos, const T* x, T* y, Py_ssize_t n, \\
                                             Py_ssize_t stride, T* z) { \\
        typedef VT V; \\
        enum { VL = NACF_VB / (int)sizeof(T), NV = NVP, W = NVP * VL }; \\
        V b0[S], b1[S], b2[S], a1[S], a2[S], z0[S][NV], z1[S][NV], o[S][NV]; \\
        const V zero = {0}; \\
        Py_ssize_t i; int k, v; \\
        for (k = 0; k < S; k++) { \\
            b0[k] = zero + sos[6 * k]; b1[k] = zero + sos[6 * k + 1]; \\
            b2[k] = zero + sos[6 * k + 2]; a1[k] = zero + sos[6 * k + 4]; \\
            a2[k] = zero + sos[6 * k + 5]; \\
            for (v = 0; v < NV; v++) { \\
                memcpy(&z0[k][v], z + 2 * k * W + v * VL, sizeof(V)); \\
                memcpy(&z1[k][v], z + (2 * k + 1) * W + v * VL, sizeof(V)); \\
                o[k][v] = zero; \\
            } \\
        } \\
        for (i = 0; i < n + S - 1; i++) { \\
            V in[NV]; \\
            for (v = 0; v < NV; v++) { \\
                in[v] = zero; \\
                if (i < n) memcpy(&in[v], x + i * stride + v * VL, sizeof(V)); \\
            } \\
            if (i >= S - 1 && i < n) { STEPS; } else { CSTEPS; } \\
            if (i >= S - 1) { \\
                for (v = 0; v < NV; v++) \\
                    memcpy(y + (i - S + 1) * stride + v * VL, &o[S - 1][v], sizeof(V)); \\
            } \\
        } \\
        for (k = 0; k < S; k++) { \\
            for (v = 0; v < NV; v++) { \\
                memcpy(z + 2 * k * W + v * VL, &z0[k][v], sizeof(V)); \\
                memcpy(z + (2 * k + 1) * W + v * VL, &z1[k][v], sizeof(V)); \\
            } \\
        } \\
    }

    #define NACF_S1 NACF_STEP(0)
    #define NACF_S2 NACF_STEP(1); NACF_STEP(0)
    #define NACF_S3 NACF_STEP(2); NACF_STEP(1); NACF_STEP(0)
    #define NACF_S4 NACF_STEP(3); NACF_STEP(2); NACF_STEP(1); NACF_STEP(0)
    #define NACF_C1 NACF_CSTEP(0)
    #define NACF_C2 NACF_CSTEP(1); NACF_CSTEP(0)
    #define NACF_C3 NACF_CSTEP(2); NACF_CSTEP(1); NACF_CSTEP(0)
    #define NACF_C4 NACF_CSTEP(3); NACF_CSTEP(2); NACF_CSTEP(1); NACF_CSTEP(0)
    #define NACF_WAVE_FNS(T, VT, SUF, NVP) \\
        NACF_WAVE_FN(T, VT, SUF, 1, NVP, NACF_S1, NACF_C1) \\
        NACF_WAVE_FN(T, VT, SUF, 2, NVP, NACF_S2, NACF_C2) \\
        NACF_WAVE_FN(T, VT, SUF, 3, NVP, NACF_S3, NACF_C3) \\
        NACF_WAVE_FN(T, VT, SUF, 4, NVP, NACF_S4, NACF_C4)
    NACF_WAVE_FNS(double, nacf_vd, f64, 1)
    NACF_WAVE_FNS(double, nacf_vd, f64, 2)
    NACF_WAVE_FNS(float, nacf_vf, f32, 1)
    NACF_WAVE_FNS(float, nacf_vf, f32, 2)

    /* the whole cascade over one block of exactly nv (1 or 2) vectors of lanes: rows
       of x and y are ``stride`` elements apart (y may be x; a negative stride walks
       backwards); z is the block's state (S, 2, nv * VL) */
    #define NACF_WAVE_CALL(SUF, NVP) do { \\
        if (m == 1) nacf_wave1_##NVP##_##SUF(c, src, y, n, stride, zs); \\
        else if (m == 2) nacf_wave2_##NVP##_##SUF(c, src, y, n, stride, zs); \\
        else if (m == 3) nacf_wave3_##NVP##_##SUF(c, src, y, n, stride, zs); \\
        else nacf_wave4_##NVP##_##SUF(c, src, y, n, stride, zs); } while (0)
    #define NACF_WAVE_DISPATCH(T, SUF) \\
    static void nacf_wave_##SUF(const T* sos, Py_ssize_t n_sections, const T* x, T* y, \\
                                Py_ssize_t n, Py_ssize_t stride, T* z, int nv) { \\
        const int W = nv * (NACF_VB / (int)sizeof(T)); \\
        Py_ssize_t s0 = 0; \\
        const T* src = x; \\
        while (s0 < n_sections) { \\
            Py_ssize_t m = n_sections - s0 < 4 ? n_sections - s0 : 4; \\
            const T* c = sos + 6 * s0; T* zs = z + 2 * s0 * W; \\
            if (nv == 2) NACF_WAVE_CALL(SUF, 2); else NACF_WAVE_CALL(SUF, 1); \\
            src = y; s0 += m; \\
        } \\
    }
    NACF_WAVE_DISPATCH(double, f64)
    NACF_WAVE_DISPATCH(float, f32)
    #define NACF_HAVE_WAVE 1
    #else
    #define NACF_HAVE_WAVE 0
    #define NACF_WAVE_LANES_F64 0
    #define NACF_WAVE_LANES_F32 0
    static void nacf_wave_f64(const double* sos, Py_ssize_t n_sections, const double* x,
                              double* y, Py_ssize_t n, Py_ssize_t stride, double* z,
                              int nv) {}
    static void nacf_wave_f32(const float* sos, Py_ssize_t n_sections, const float* x,
                              float* y, Py_ssize_t n, Py_ssize_t stride, float* z,
                              int nv) {}
    #endif
    """
    int NACF_HAVE_WAVE
    int NACF_WAVE_LANES_F64
    int NACF_WAVE_LANES_F32
    void nacf_wave_f64(const double* sos, Py_ssize_t n_sections, const double* x,
                       double* y, Py_ssize_t n, Py_ssize_t stride, double* z,
                       int nv) noexcept nogil
    void nacf_wave_f32(const float* sos, Py_ssize_t n_sections, const float* x,
                       float* y, Py_ssize_t n, Py_ssize_t stride, float* z,
                       int nv) noexcept nogil


DEF LANES = 16  # channel blocks are padded to a multiple of this many lanes
DEF LINE = 64   # bytes per cache line
DEF AHEAD = 4   # rows / tiles to prefetch ahead
DEF TILE = 16   # samples per transposed tile (channel-major input); _filter_common.TIME_TILE
DEF WAVE_CHUNK_BYTES = 131072  # bytes of rows per time chunk of the wavefront path
DEF WAVE_MIN_CHUNK = 64  # rows per chunk at the least


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


cdef inline Py_ssize_t _wave_lanes(const floating* sos) noexcept nogil:
    """Lanes of a full wavefront block (two vectors) in this dtype (``sos`` only picks
    the type)."""
    if floating is double:
        return NACF_WAVE_LANES_F64
    return NACF_WAVE_LANES_F32


cdef inline Py_ssize_t _wave_width(Py_ssize_t W, Py_ssize_t g) noexcept nogil:
    """Lanes the block holding ``g`` channels runs with: two vectors (``W``), or one
    when the channels fit in one."""
    return W if 2 * g > W else W // 2


cdef inline void _wave(const floating* sos, Py_ssize_t n_sections, const floating* x,
                       floating* y, Py_ssize_t n, Py_ssize_t stride, floating* z,
                       Py_ssize_t W, Py_ssize_t wb) noexcept nogil:
    """The wavefront kernel of this dtype on one block of ``wb`` lanes (``W`` or
    ``W // 2``)."""
    cdef int nv = 2 if wb == W else 1
    if floating is double:
        nacf_wave_f64(sos, n_sections, x, y, n, stride, z, nv)
    else:
        nacf_wave_f32(sos, n_sections, x, y, n, stride, z, nv)


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef int _wave_time_major(const floating* sos, Py_ssize_t n_sections, const floating* x,
                          floating* y, Py_ssize_t n_times, Py_ssize_t n_channels,
                          floating* z) noexcept nogil:
    """Time-major filtering with the wavefront kernel in lane blocks of ``W`` (two
    vectors): full blocks read ``x`` and write ``y`` in place of the rows; the last,
    partial block (one vector wide when it fits in one) goes through a zero-padded
    copy.  Time runs in chunks of about WAVE_CHUNK_BYTES of rows, every block through
    one chunk before the next, so a long many-channel signal is read from memory once,
    not once per block (each block keeps its state in ``zl`` between chunks).  Returns
    -1 (nothing done) if scratch memory cannot be had."""
    cdef Py_ssize_t W = _wave_lanes(sos), nb, b, c0, g, wb, s, k, c, t, i, t0, m, chunk
    cdef floating* zl
    cdef floating* zb
    cdef floating* xs = NULL
    nb = (n_channels + W - 1) // W
    chunk = n_times
    if nb > 1:
        chunk = max(WAVE_MIN_CHUNK, WAVE_CHUNK_BYTES // (n_channels * <Py_ssize_t> sizeof(floating)))
    zl = <floating*> malloc(nb * n_sections * 2 * W * sizeof(floating))
    if zl == NULL:
        return -1
    if n_channels % W:
        xs = <floating*> malloc(min(chunk, n_times) * W * sizeof(floating))
        if xs == NULL:
            free(zl)
            return -1
    for b in range(nb):  # state in (block b: (n_sections, 2, wb)), zeros in padded lanes
        c0 = b * W
        g = min(W, n_channels - c0)
        wb = _wave_width(W, g)
        zb = zl + b * n_sections * 2 * W
        for s in range(n_sections):
            for k in range(2):
                i = (2 * s + k) * n_channels + c0
                for c in range(wb):
                    zb[(2 * s + k) * wb + c] = z[i + c] if c < g else 0
    t0 = 0
    while t0 < n_times:
        m = min(chunk, n_times - t0)
        for b in range(nb):
            c0 = b * W
            g = min(W, n_channels - c0)
            wb = _wave_width(W, g)
            zb = zl + b * n_sections * 2 * W
            if g == W:
                _wave(sos, n_sections, x + t0 * n_channels + c0, y + t0 * n_channels + c0,
                      m, n_channels, zb, W, W)
            else:
                for t in range(m):
                    for c in range(wb):
                        xs[t * wb + c] = x[(t0 + t) * n_channels + c0 + c] if c < g else 0
                _wave(sos, n_sections, xs, xs, m, wb, zb, W, wb)
                for t in range(m):
                    for c in range(g):
                        y[(t0 + t) * n_channels + c0 + c] = xs[t * wb + c]
        t0 += m
    for b in range(nb):  # state out
        c0 = b * W
        g = min(W, n_channels - c0)
        wb = _wave_width(W, g)
        zb = zl + b * n_sections * 2 * W
        for s in range(n_sections):
            for k in range(2):
                i = (2 * s + k) * n_channels + c0
                for c in range(g):
                    z[i + c] = zb[(2 * s + k) * wb + c]
    free(xs)
    free(zl)
    return 0


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef int _wave_filtfilt_cm(const double* sos, Py_ssize_t n_sections, const double* zi,
                           const double* x, double* out, Py_ssize_t n_channels,
                           Py_ssize_t n, Py_ssize_t padlen) noexcept nogil:
    """:func:`sosfiltfilt_f64`: per lane block, the odd extension of its channels goes
    time-major into scratch ``xs`` (n + 2 padlen, wb), the wavefront kernel filters it
    forward from the first row and backward (negative row stride) from the last, and
    the middle goes back channel-major into ``out``; lane blocks as in
    :func:`_wave_time_major`.  Returns -1 (nothing done) if scratch memory cannot be
    had."""
    cdef Py_ssize_t W = NACF_WAVE_LANES_F64, N = n + 2 * padlen, c0 = 0, g, wb, j, c, t, t0
    cdef double* dst
    cdef double x0, xl
    cdef double* zl = <double*> malloc(n_sections * 2 * W * sizeof(double))
    cdef double* xs = <double*> malloc(N * W * sizeof(double))
    cdef double* row
    cdef const double* src
    if zl == NULL or xs == NULL:
        free(zl)
        free(xs)
        return -1
    while c0 < n_channels:
        g = min(W, n_channels - c0)
        wb = _wave_width(W, g)
        for t in range(N):  # zeros in the padded lanes
            for c in range(g, wb):
                xs[t * wb + c] = 0
        for c in range(g):  # the odd extension at both ends
            src = x + (c0 + c) * n
            x0 = src[0]
            xl = src[n - 1]
            for j in range(padlen):
                xs[j * wb + c] = 2 * x0 - src[padlen - j]
                xs[(padlen + n + j) * wb + c] = 2 * xl - src[n - 2 - j]
        # the signal itself, transposed in tiles of 8 samples (one cache line of each
        # channel read, eight rows written)
        t0 = 0
        while t0 + 8 <= n:
            row = xs + (padlen + t0) * wb
            for c in range(g):
                src = x + (c0 + c) * n + t0
                for j in range(8):
                    row[j * wb + c] = src[j]
            t0 += 8
        for c in range(g):
            for t in range(t0, n):
                xs[(padlen + t) * wb + c] = x[(c0 + c) * n + t]
        for j in range(2):  # forward from the first row, backward from the last
            row = xs if j == 0 else xs + (N - 1) * wb
            for c in range(n_sections * 2):
                for t in range(wb):
                    zl[c * wb + t] = zi[c] * row[t]
            _wave(sos, n_sections, row, row, N, wb if j == 0 else -wb, zl, W, wb)
        for c in range(g):  # back channel-major, eight samples per cache line written
            dst = out + (c0 + c) * n
            row = xs + padlen * wb + c
            t0 = 0
            while t0 + 8 <= n:
                for j in range(8):
                    dst[t0 + j] = row[(t0 + j) * wb]
                t0 += 8
            for t in range(t0, n):
                dst[t] = row[t * wb]
        c0 += W
    free(xs)
    free(zl)
    return 0


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
    if (time_major and NACF_HAVE_WAVE
            and _wave_time_major(sos, n_sections, x, y, n_times, n_channels, z) == 0):
        return
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


cdef int _check_sosfilt(Py_ssize_t* sos, Py_ssize_t* x, Py_ssize_t* y, Py_ssize_t* z,
                        Py_ssize_t* zbuf, Py_ssize_t* tile, bint time_major) except -1:
    """The shapes :func:`sosfilt_f32` / :func:`sosfilt_f64` index by (``ValueError``
    otherwise): every one of them fits the others before the unchecked loops run."""
    cdef Py_ssize_t n_channels = x[1] if time_major else x[0]
    cdef Py_ssize_t n_tile = 1 if time_major else TILE
    if not (sos[0] >= 1 and sos[1] == 6):
        raise ValueError(
            f"sosfilt: 'sos' must be (n_sections >= 1, 6), got ({sos[0]}, {sos[1]}).")
    if not (y[0] == x[0] and y[1] == x[1]):
        raise ValueError(
            f"sosfilt: 'y' must have the shape of 'x' ({x[0]}, {x[1]}), got ({y[0]}, {y[1]}).")
    if not (z[0] == sos[0] and z[1] == 2 and z[2] == n_channels):
        raise ValueError(
            f"sosfilt: the state 'z' must be (n_sections, 2, n_channels) = ({sos[0]}, 2, "
            f"{n_channels}), got ({z[0]}, {z[1]}, {z[2]}).")
    if not (tile[1] >= LANES and tile[1] % LANES == 0 and tile[0] >= n_tile):
        raise ValueError(
            f"sosfilt: the scratch 'tile' must be (n_tile >= {n_tile}, block) with block a "
            f"multiple of {LANES}, got ({tile[0]}, {tile[1]}).")
    if not (zbuf[0] == sos[0] and zbuf[1] == 2 and zbuf[2] == tile[1]):
        raise ValueError(
            f"sosfilt: the scratch 'zbuf' must be (n_sections, 2, block) = ({sos[0]}, 2, "
            f"{tile[1]}), got ({zbuf[0]}, {zbuf[1]}, {zbuf[2]}).")
    return 0


def sosfilt_f32(const float[:, ::1] sos, const float[:, ::1] x, float[:, ::1] y,
                float[:, :, ::1] z, float[:, :, ::1] zbuf, float[:, ::1] tile,
                bint time_major):
    """float32 kernel: filter ``x`` into ``y`` carrying state ``z`` (n_sections, 2, n_channels).

    ``zbuf`` (n_sections, 2, block) and ``tile`` (n_tile, block) are 64-byte aligned
    scratch with ``block % 16 == 0``, ``n_tile`` 1 for time-major ``x`` and 16 for
    channel-major.  Only the shapes are checked (``ValueError``): the values are the
    public layer's business, see ``nacf_core.dsp``.
    """
    _check_sosfilt(sos.shape, x.shape, y.shape, z.shape, zbuf.shape, tile.shape, time_major)
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
    _check_sosfilt(sos.shape, x.shape, y.shape, z.shape, zbuf.shape, tile.shape, time_major)
    cdef Py_ssize_t n_times = x.shape[0] if time_major else x.shape[1]
    cdef Py_ssize_t n_channels = z.shape[2]
    if x.shape[0] == 0 or x.shape[1] == 0:
        return
    with nogil:
        _sosfilt(&sos[0, 0], sos.shape[0], &x[0, 0], &y[0, 0], n_times, n_channels,
                 time_major, &z[0, 0, 0], &zbuf[0, 0, 0], &tile[0, 0],
                 tile.shape[1], tile.shape[0])


def sosfiltfilt_f64(const double[:, ::1] sos, const double[:, ::1] zi,
                    const double[:, ::1] x, Py_ssize_t padlen, double[:, ::1] out):
    """Zero-phase filter the channel-major ``x`` (n_channels, n_times) into ``out``:
    ``scipy.signal.sosfiltfilt(sos, x, axis=-1)`` with odd extension by ``padlen``
    (0 < padlen < n_times) bit for bit — the extension, laid time-major a lane block at a
    time, then a forward and a backward pass of the wavefront kernel, each started from
    the step-response state ``zi`` (n_sections, 2) times the block's first / last row.
    Returns False, with ``out`` untouched, where this build has no wavefront kernel (or
    no scratch memory): the caller then uses another path.  Only the shapes and
    ``padlen`` are checked (``ValueError``)."""
    cdef int rc
    if not (sos.shape[0] >= 1 and sos.shape[1] == 6):
        raise ValueError(
            f"sosfiltfilt_f64: 'sos' must be (n_sections >= 1, 6), got "
            f"({sos.shape[0]}, {sos.shape[1]}).")
    if not (zi.shape[0] == sos.shape[0] and zi.shape[1] == 2):
        raise ValueError(
            f"sosfiltfilt_f64: 'zi' must be (n_sections, 2) = ({sos.shape[0]}, 2), got "
            f"({zi.shape[0]}, {zi.shape[1]}).")
    if not (out.shape[0] == x.shape[0] and out.shape[1] == x.shape[1]):
        raise ValueError(
            f"sosfiltfilt_f64: 'out' must have the shape of 'x' ({x.shape[0]}, {x.shape[1]}), "
            f"got ({out.shape[0]}, {out.shape[1]}).")
    if not (x.shape[0] == 0 or x.shape[1] == 0 or 0 < padlen < x.shape[1]):
        raise ValueError(
            f"sosfiltfilt_f64: 'padlen' must be in [1, n_times) = [1, {x.shape[1]}), got "
            f"{padlen}.")
    if not NACF_HAVE_WAVE:
        return False
    if x.shape[0] == 0 or x.shape[1] == 0:
        return True
    with nogil:
        rc = _wave_filtfilt_cm(&sos[0, 0], sos.shape[0], &zi[0, 0], &x[0, 0], &out[0, 0],
                               x.shape[0], x.shape[1], padlen)
    return rc == 0
