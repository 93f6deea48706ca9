# cython: language_level=3
# The Cython body of the artifact detector and the quality score.
#
# setup.py compiles this file once per instruction-set variant (baseline x86-64,
# AVX2+FMA, AVX-512) as ``nacf_core.kernels._cy_quality_<variant>``;
# ``kernels/_cy_quality.py`` imports the best one the CPU runs.
#
# Each (epoch, channel) row is contiguous in time.  Pass 1 gathers the sum, min, max,
# rail count, largest step (detector) or repeat count (quality); pass 2, over the same
# row still in L1, the variance around the mean and (quality) two windowed DFT bins at
# 50 and 60 Hz from precomputed tables (``_quality_params.line_tables``).  float64
# accumulation for both input dtypes; two partial sums per statistic keep the
# add-latency chains short.  Non-finite input makes the pass-1 sum non-finite, which
# sends the row to the NON_FINITE branch without a per-sample test.  No GIL, no threads.

cimport cython
from cython cimport floating
from libc.math cimport INFINITY, fabs, isfinite, sqrt


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef inline bint _all_finite(const floating* x, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if not isfinite(x[i]):
            return False
    return True


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef signed char _detect_row(const floating* x, Py_ssize_t n, double rail_uv,
                             double min_railed, double flat_var, double p2p_uv,
                             double jump_uv) noexcept nogil:
    cdef Py_ssize_t i, n_railed = 0
    cdef double v, w, s0 = 0.0, s1 = 0.0, lo = INFINITY, hi = -INFINITY
    cdef double jump = 0.0, mean, var, d0, d1
    if n == 0:
        return 3 if 0.0 < flat_var else 0
    for i in range(n):
        v = x[i]
        s0 += v
        if v < lo:
            lo = v
        if v > hi:
            hi = v
        if fabs(v) >= rail_uv:
            n_railed += 1
    for i in range(1, n):
        w = fabs(<double>x[i] - <double>x[i - 1])
        if w > jump:
            jump = w
    if not (isfinite(s0) and isfinite(lo) and isfinite(hi)):
        if not _all_finite(x, n):
            return 1  # NON_FINITE
    if n_railed > 0 and n_railed >= min_railed:
        return 2  # RAILED
    mean = s0 / n
    s0 = 0.0
    i = 0
    while i + 1 < n:
        d0 = x[i] - mean
        d1 = x[i + 1] - mean
        s0 += d0 * d0
        s1 += d1 * d1
        i += 2
    if i < n:
        d0 = x[i] - mean
        s0 += d0 * d0
    # a constant row has variance 0 exactly: its summed mean need not be its value (far
    # from zero, 1e20 * 500 is not exact), which left a variance of millions
    var = (s0 + s1) / n if hi > lo else 0.0
    if var < flat_var:
        return 3  # FLAT
    if hi - lo > p2p_uv:
        return 4  # PEAK_TO_PEAK
    if jump > jump_uv:
        return 5  # JUMP
    return 0


@cython.boundscheck(False)
@cython.wraparound(False)
def detect_into(const floating[:, :, ::1] x, signed char[:, ::1] out, double rail_uv,
                double rail_fraction, double flat_uv, double p2p_uv, double jump_uv):
    """Reason code per (epoch, channel) into ``out``; see nacf_core.artifacts.

    ``out`` must be (n_epochs, n_channels) (``ValueError`` otherwise)."""
    cdef Py_ssize_t n_epochs = x.shape[0], n_channels = x.shape[1], n_times = x.shape[2]
    cdef Py_ssize_t e, c
    if not (out.shape[0] == n_epochs and out.shape[1] == n_channels):
        raise ValueError(
            f"detect_into: 'out' must be (n_epochs, n_channels) = ({n_epochs}, {n_channels}), "
            f"got ({out.shape[0]}, {out.shape[1]}).")
    cdef double min_railed = rail_fraction * n_times
    cdef double flat_var = flat_uv * flat_uv
    with nogil:
        for e in range(n_epochs):
            for c in range(n_channels):
                out[e, c] = _detect_row(&x[e, c, 0] if n_times else <const floating*>NULL,
                                        n_times, rail_uv, min_railed, flat_var, p2p_uv,
                                        jump_uv)


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef double _quality_row(const floating* x, Py_ssize_t n, const double* tables,
                         Py_ssize_t n_freqs, double norm, double flat_rms,
                         double good_rms, double good_p2p, double max_p2p) noexcept nogil:
    cdef Py_ssize_t i, f, repeats = 0
    cdef double v, s0 = 0.0, lo = INFINITY, hi = -INFINITY, mean, dv
    cdef double var = 0.0, rms, line, line_var = 0.0, repeat_frac, q_flat, q_range
    cdef double re0 = 0.0, im0 = 0.0, re1 = 0.0, im1 = 0.0
    cdef const double* c0 = tables
    cdef const double* s0t = tables + n
    cdef const double* c1 = tables + 2 * n
    cdef const double* s1t = tables + 3 * n
    if n == 0:
        return 0.0
    for i in range(n):
        v = x[i]
        s0 += v
        if v < lo:
            lo = v
        if v > hi:
            hi = v
    for i in range(1, n):
        if x[i] == x[i - 1]:
            repeats += 1
    if not (isfinite(s0) and isfinite(lo) and isfinite(hi)):
        if not _all_finite(x, n):
            return 0.0
    mean = s0 / n
    if n_freqs >= 2:
        for i in range(n):
            dv = x[i] - mean
            var += dv * dv
            re0 += dv * c0[i]
            im0 += dv * s0t[i]
            re1 += dv * c1[i]
            im1 += dv * s1t[i]
    elif n_freqs == 1:
        for i in range(n):
            dv = x[i] - mean
            var += dv * dv
            re0 += dv * c0[i]
            im0 += dv * s0t[i]
    else:
        for i in range(n):
            dv = x[i] - mean
            var += dv * dv
    var /= n
    line_var = norm * (re0 * re0 + im0 * im0 + re1 * re1 + im1 * im1)
    rms = sqrt(var)
    line = (line_var / var if line_var < var else 1.0) if var > 0 else 0.0
    repeat_frac = repeats / <double>(n - 1) if n > 1 else 0.0
    q_flat = min(1.0, max(0.0, (rms - flat_rms) / (good_rms - flat_rms))) * (1.0 - repeat_frac)
    q_range = min(1.0, max(0.0, (max_p2p - (hi - lo)) / (max_p2p - good_p2p)))
    return (1.0 - line) * q_flat * q_range


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
def quality_into(const floating[:, :, ::1] x, const signed char[:, ::1] reason,
                 const double[:, ::1] tables, double norm, double flat_rms, double good_rms,
                 double good_p2p, double max_p2p, double[:, ::1] per_channel,
                 double[::1] per_epoch):
    """Quality per (epoch, channel) and per epoch; see nacf_core.artifacts.quality.

    ``reason`` and ``per_channel`` must be (n_epochs, n_channels), ``per_epoch``
    (n_epochs,) and ``tables`` (2 * n_freqs, n_times) as ``line_tables`` makes them
    (``ValueError`` otherwise)."""
    cdef Py_ssize_t n_epochs = x.shape[0], n_channels = x.shape[1], n_times = x.shape[2]
    cdef Py_ssize_t n_freqs = tables.shape[0] // 2, e, c
    cdef const double* tab
    cdef double q, total
    if not (reason.shape[0] == n_epochs and reason.shape[1] == n_channels):
        raise ValueError(
            f"quality_into: 'reason' must be (n_epochs, n_channels) = ({n_epochs}, "
            f"{n_channels}), got ({reason.shape[0]}, {reason.shape[1]}).")
    if not (per_channel.shape[0] == n_epochs and per_channel.shape[1] == n_channels):
        raise ValueError(
            f"quality_into: 'per_channel' must be (n_epochs, n_channels) = ({n_epochs}, "
            f"{n_channels}), got ({per_channel.shape[0]}, {per_channel.shape[1]}).")
    if not (per_epoch.shape[0] == n_epochs):
        raise ValueError(
            f"quality_into: 'per_epoch' must be (n_epochs,) = ({n_epochs},), got "
            f"({per_epoch.shape[0]},).")
    if not (tables.shape[0] % 2 == 0 and (tables.shape[0] == 0 or tables.shape[1] == n_times)):
        raise ValueError(
            f"quality_into: 'tables' must be (2 * n_freqs, n_times) = (2 * n_freqs, "
            f"{n_times}), got ({tables.shape[0]}, {tables.shape[1]}).")
    tab = &tables[0, 0] if tables.shape[0] and n_times else NULL
    with nogil:
        for e in range(n_epochs):
            total = 0.0
            for c in range(n_channels):
                q = 0.0
                if reason[e, c] == 0 and n_times > 0:
                    q = _quality_row(&x[e, c, 0], n_times, tab, n_freqs, norm, flat_rms,
                                     good_rms, good_p2p, max_p2p)
                per_channel[e, c] = q
                total += q
            per_epoch[e] = total / n_channels if n_channels > 0 else 0.0
