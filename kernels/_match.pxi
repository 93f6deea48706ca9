# cython: language_level=3
# The Cython body of the matching kernels (cosine scores and running top-k).
#
# setup.py compiles this file once per instruction-set variant (baseline x86-64,
# AVX2+FMA, AVX-512) as ``nacf_core.kernels._cy_match_<variant>``;
# ``kernels/_cy_match.py`` imports the best one the CPU runs (``_cpu.load_variant``).
#
# top_k never builds the (n_probes, n_templates) score matrix.  Templates are read
# once, in blocks of rows; each block's scores go to a small buffer that stays in L1/L2
# and are scanned at once into a running top-k per probe:
#
# * few probes (< gemm_min_probes): a SIMD dot-product loop (AVX-512 / AVX2+FMA / SSE2
#   intrinsics, one template row at a time, front to back) streams the templates at
#   memory bandwidth;
# * a batch: one BLAS sgemm (scipy.linalg.cython_blas, float32) per block of rows,
#   giving a (rows, probes) block scanned row by row against every probe's threshold.
#
# The scan compares 16 (8, 4) scores at a time with the current k-th best(s) and drops
# to the heap only for the rare score that beats it.  The heap's root is the worst
# kept entry; templates arrive in index order, so once a heap is full only
# ``score > root`` enters and equal scores keep the lower index.  NaN scores count as
# -inf.  Everything runs without the GIL; no threads are started here (BLAS uses its
# own pool: the service runs one BLAS thread per process).

cimport cython
from libc.math cimport INFINITY
from libc.stdint cimport int64_t
from scipy.linalg.cython_blas cimport sgemm


import numpy as np

cdef extern from *:
    """
    #include <stddef.h>
    #if defined(__AVX512F__) || defined(__AVX2__) || defined(__SSE2__)
    #include <immintrin.h>
    #endif

    /* out[r] = dot(q, t + r*d) for r < n_rows, float32 accumulation. */
    static void nacf_dot_rows(const float *q, const float *t, Py_ssize_t n_rows,
                              Py_ssize_t d, float *out)
    {
        Py_ssize_t r = 0, j;
    /* One row at a time, read front to back: interleaving rows (4 at once) halved
       the streaming bandwidth on this machine (the prefetcher loses the stream). */
    #if defined(__AVX512F__)
        const Py_ssize_t dv = d - d % 16;
        const __mmask16 tail = (__mmask16)((1u << (d % 16)) - 1u);
        for (; r < n_rows; r++) {
            const float *t0 = t + r * d;
            __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
            j = 0;
            for (; j + 32 <= dv; j += 32) {
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(t0 + j), _mm512_loadu_ps(q + j), a0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(t0 + j + 16),
                                     _mm512_loadu_ps(q + j + 16), a1);
            }
            if (j < dv)
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(t0 + j), _mm512_loadu_ps(q + j), a0);
            if (tail)
                a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, t0 + dv),
                                     _mm512_maskz_loadu_ps(tail, q + dv), a1);
            out[r] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        }
    #elif defined(__AVX2__) && defined(__FMA__)
        const Py_ssize_t dv = d - d % 8;
        for (; r < n_rows; r++) {
            const float *t0 = t + r * d;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            j = 0;
            for (; j + 16 <= dv; j += 16) {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(t0 + j), _mm256_loadu_ps(q + j), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(t0 + j + 8),
                                     _mm256_loadu_ps(q + j + 8), a1);
            }
            if (j < dv)
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(t0 + j), _mm256_loadu_ps(q + j), a0);
            a0 = _mm256_add_ps(a0, a1);
            __m128 s = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
            s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            float acc = _mm_cvtss_f32(s);
            for (j = dv; j < d; j++) acc += t0[j] * q[j];
            out[r] = acc;
        }
    #elif defined(__SSE2__)
        const Py_ssize_t dv = d - d % 4;
        for (; r < n_rows; r++) {
            const float *t0 = t + r * d;
            __m128 a0 = _mm_setzero_ps(), a1 = _mm_setzero_ps();
            j = 0;
            for (; j + 8 <= dv; j += 8) {
                a0 = _mm_add_ps(a0, _mm_mul_ps(_mm_loadu_ps(t0 + j), _mm_loadu_ps(q + j)));
                a1 = _mm_add_ps(a1, _mm_mul_ps(_mm_loadu_ps(t0 + j + 4),
                                               _mm_loadu_ps(q + j + 4)));
            }
            for (; j < dv; j += 4)
                a0 = _mm_add_ps(a0, _mm_mul_ps(_mm_loadu_ps(t0 + j), _mm_loadu_ps(q + j)));
            __m128 s = _mm_add_ps(a0, a1);
            s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            float acc = _mm_cvtss_f32(s);
            for (j = dv; j < d; j++) acc += t0[j] * q[j];
            out[r] = acc;
        }
    #else
        for (; r < n_rows; r++) {
            const float *t0 = t + r * d;
            float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (j = 0; j + 4 <= d; j += 4) {
                acc[0] += t0[j] * q[j]; acc[1] += t0[j + 1] * q[j + 1];
                acc[2] += t0[j + 2] * q[j + 2]; acc[3] += t0[j + 3] * q[j + 3];
            }
            float a = (acc[0] + acc[1]) + (acc[2] + acc[3]);
            for (; j < d; j++) a += t0[j] * q[j];
            out[r] = a;
        }
    #endif
    }

    /* The first j >= start with s[j] > thr (NaN never is), or n. */
    static Py_ssize_t nacf_scan_gt(const float *s, Py_ssize_t start, Py_ssize_t n, float thr)
    {
        Py_ssize_t j = start;
    #if defined(__AVX512F__)
        const __m512 tv = _mm512_set1_ps(thr);
        for (; j + 16 <= n; j += 16) {
            __mmask16 m = _mm512_cmp_ps_mask(_mm512_loadu_ps(s + j), tv, _CMP_GT_OQ);
            if (m) return j + __builtin_ctz((unsigned)m);
        }
    #elif defined(__AVX2__)
        const __m256 tv = _mm256_set1_ps(thr);
        for (; j + 8 <= n; j += 8) {
            int m = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(s + j), tv, _CMP_GT_OQ));
            if (m) return j + __builtin_ctz((unsigned)m);
        }
    #elif defined(__SSE2__)
        const __m128 tv = _mm_set1_ps(thr);
        for (; j + 4 <= n; j += 4) {
            int m = _mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(s + j), tv));
            if (m) return j + __builtin_ctz((unsigned)m);
        }
    #endif
        for (; j < n; j++)
            if (s[j] > thr) return j;
        return n;
    }

    /* The first flat index f >= start of a row-major (n_rows, P) block with
       s[f] > thr[f % P] (NaN never is), or n_rows * P. */
    static Py_ssize_t nacf_scan_rows_gt(const float *s, Py_ssize_t start, Py_ssize_t n_rows,
                                        Py_ssize_t P, const float *thr)
    {
        Py_ssize_t r = start / P, p = start % P;
        for (; r < n_rows; r++, p = 0) {
            const float *row = s + r * P;
    #if defined(__AVX512F__)
            for (; p + 16 <= P; p += 16) {
                __mmask16 m = _mm512_cmp_ps_mask(_mm512_loadu_ps(row + p),
                                                 _mm512_loadu_ps(thr + p), _CMP_GT_OQ);
                if (m) return r * P + p + __builtin_ctz((unsigned)m);
            }
    #elif defined(__AVX2__)
            for (; p + 8 <= P; p += 8) {
                int m = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(row + p),
                                                         _mm256_loadu_ps(thr + p), _CMP_GT_OQ));
                if (m) return r * P + p + __builtin_ctz((unsigned)m);
            }
    #elif defined(__SSE2__)
            for (; p + 4 <= P; p += 4) {
                int m = _mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(row + p), _mm_loadu_ps(thr + p)));
                if (m) return r * P + p + __builtin_ctz((unsigned)m);
            }
    #endif
            for (; p < P; p++)
                if (row[p] > thr[p]) return r * P + p;
        }
        return n_rows * P;
    }
    """
    Py_ssize_t nacf_scan_rows_gt(const float* s, Py_ssize_t start, Py_ssize_t n_rows,
                                 Py_ssize_t P, const float* thr) noexcept nogil
    void nacf_dot_rows(const float* q, const float* t, Py_ssize_t n_rows, Py_ssize_t d,
                       float* out) noexcept nogil
    Py_ssize_t nacf_scan_gt(const float* s, Py_ssize_t start, Py_ssize_t n,
                            float thr) noexcept nogil


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void _heap_push(float* hs, int64_t* hi, Py_ssize_t n, float s,
                            int64_t idx) noexcept nogil:
    """Add (s, idx) to a heap of n < k entries; idx is the largest index so far."""
    cdef Py_ssize_t pos = n, parent
    while pos > 0:
        parent = (pos - 1) // 2
        if s <= hs[parent]:  # the new entry is worse (equal score, larger index)
            hs[pos] = hs[parent]
            hi[pos] = hi[parent]
            pos = parent
        else:
            break
    hs[pos] = s
    hi[pos] = idx


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void _heap_replace_root(float* hs, int64_t* hi, Py_ssize_t k, float s,
                                    int64_t idx) noexcept nogil:
    """Replace the worst entry (the root) by a better (s, idx) and restore the heap."""
    cdef Py_ssize_t pos = 0, child, right
    while True:
        child = 2 * pos + 1
        if child >= k:
            break
        right = child + 1
        if right < k and (hs[right] < hs[child] or
                          (hs[right] == hs[child] and hi[right] > hi[child])):
            child = right
        if hs[child] < s or (hs[child] == s and hi[child] > idx):
            hs[pos] = hs[child]
            hi[pos] = hi[child]
            pos = child
        else:
            break
    hs[pos] = s
    hi[pos] = idx


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void _heap_sort(float* hs, int64_t* hi, Py_ssize_t n) noexcept nogil:
    """Sort a heap of n entries in place, best first (pop the worst to the end)."""
    cdef float s
    cdef int64_t idx
    while n > 1:
        s = hs[0]
        idx = hi[0]
        _heap_replace_root(hs, hi, n - 1, hs[n - 1], hi[n - 1])
        hs[n - 1] = s
        hi[n - 1] = idx
        n -= 1


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline Py_ssize_t _scan(const float* scores, Py_ssize_t nb, int64_t base,
                             float* hs, int64_t* hi, Py_ssize_t n,
                             Py_ssize_t k) noexcept nogil:
    """Merge one block's scores (template rows base..base+nb) into a heap of n entries."""
    cdef Py_ssize_t j = 0
    cdef float s
    while n < k and j < nb:
        s = scores[j]
        if s != s:
            s = -INFINITY
        _heap_push(hs, hi, n, s, base + j)
        n += 1
        j += 1
    while True:
        j = nacf_scan_gt(scores, j, nb, hs[0])
        if j >= nb:
            break
        _heap_replace_root(hs, hi, k, scores[j], base + j)
        j += 1
    return n


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _sgemm_block(const float* probes, Py_ssize_t n_probes, const float* rows,
                       Py_ssize_t n_rows, Py_ssize_t d, float* out,
                       Py_ssize_t ldc) noexcept nogil:
    """out[p * ldc + r] = dot(probes[p], rows[r]): column-major out^T = rows . probes^T."""
    cdef char transa = b'T'
    cdef char transb = b'N'
    cdef int m = <int>n_rows
    cdef int n = <int>n_probes
    cdef int kk = <int>d
    cdef int lda = <int>d
    cdef int ldb = <int>d
    cdef int ldc_ = <int>ldc
    cdef float alpha = 1.0
    cdef float beta = 0.0
    sgemm(&transa, &transb, &m, &n, &kk, &alpha, <float*>rows, &lda, <float*>probes, &ldb,
          &beta, out, &ldc_)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _sgemm_block_rows_major(const float* probes, Py_ssize_t n_probes, const float* rows,
                                  Py_ssize_t n_rows, Py_ssize_t d, float* out) noexcept nogil:
    """out[r * n_probes + p] = dot(probes[p], rows[r]): column-major out^T = probes . rows^T.

    This shape (m = n_probes small, n = n_rows) ran about 25 % faster in OpenBLAS than
    the transposed one on 1 024-row blocks.
    """
    cdef char transa = b'T'
    cdef char transb = b'N'
    cdef int m = <int>n_probes
    cdef int n = <int>n_rows
    cdef int kk = <int>d
    cdef int lda = <int>d
    cdef int ldb = <int>d
    cdef int ldc = <int>n_probes
    cdef float alpha = 1.0
    cdef float beta = 0.0
    sgemm(&transa, &transb, &m, &n, &kk, &alpha, <float*>probes, &lda, <float*>rows, &ldb,
          &beta, out, &ldc)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _scan_rows(const float* scores, Py_ssize_t nb, Py_ssize_t n_probes, int64_t base,
                     float[:, ::1] heap_s, int64_t[:, ::1] heap_i, Py_ssize_t[::1] sizes,
                     float* thr, Py_ssize_t k) noexcept nogil:
    """Merge a (nb, n_probes) row-major score block (template rows base..) into the heaps.

    Every heap holds min(rows seen, k) entries: the first k template rows go in
    unconditionally, after that only a score above its probe's threshold ``thr[p]``
    (the heap's root) does.
    """
    cdef Py_ssize_t r = 0, p, f, total = nb * n_probes
    cdef float s
    while r < nb and sizes[0] < k:
        for p in range(n_probes):
            s = scores[r * n_probes + p]
            if s != s:
                s = -INFINITY
            _heap_push(&heap_s[p, 0], &heap_i[p, 0], sizes[p], s, base + r)
            sizes[p] += 1
            thr[p] = heap_s[p, 0]
        r += 1
    f = r * n_probes
    while True:
        f = nacf_scan_rows_gt(scores, f, nb, n_probes, thr)
        if f >= total:
            break
        r = f // n_probes
        p = f - r * n_probes
        _heap_replace_root(&heap_s[p, 0], &heap_i[p, 0], k, scores[f], base + r)
        thr[p] = heap_s[p, 0]
        f += 1


cdef int _check_pair(str fn, Py_ssize_t* probes, Py_ssize_t* templates) except -1:
    """Probes and templates of one embedding dimension d >= 1 (``ValueError``)."""
    if not (probes[1] == templates[1]):
        raise ValueError(
            f"{fn}: 'probes' and 'templates' must have the same embedding dimension, got "
            f"({probes[0]}, {probes[1]}) and ({templates[0]}, {templates[1]}).")
    if not (probes[1] >= 1 or probes[0] == 0 or templates[0] == 0):
        raise ValueError(
            f"{fn}: the embedding dimension must be >= 1, got 0.")
    return 0


@cython.boundscheck(False)
@cython.wraparound(False)
def cosine_scores_into(const float[:, ::1] probes, const float[:, ::1] templates,
                       float[:, ::1] out, Py_ssize_t gemm_min_probes):
    """out[p, j] = dot(probes[p], templates[j]) (float32 accumulation)."""
    cdef Py_ssize_t n_probes = probes.shape[0], n_templates = templates.shape[0]
    cdef Py_ssize_t d = probes.shape[1], p, start, nb
    cdef Py_ssize_t chunk = 1 << 24  # keep every BLAS int argument < 2**31
    _check_pair("cosine_scores_into", probes.shape, templates.shape)
    if not (out.shape[0] == n_probes and out.shape[1] == n_templates):
        raise ValueError(
            f"cosine_scores_into: 'out' must be (n_probes, n_templates) = ({n_probes}, "
            f"{n_templates}), got ({out.shape[0]}, {out.shape[1]}).")
    if n_probes == 0 or n_templates == 0:
        return
    with nogil:
        if n_probes < gemm_min_probes:
            for p in range(n_probes):
                nacf_dot_rows(&probes[p, 0], &templates[0, 0], n_templates, d, &out[p, 0])
        else:
            start = 0
            while start < n_templates:
                nb = min(chunk, n_templates - start)
                _sgemm_block(&probes[0, 0], n_probes, &templates[start, 0], nb, d,
                             &out[0, start], n_templates)
                start += nb


@cython.boundscheck(False)
@cython.wraparound(False)
def top_k_into(const float[:, ::1] probes, const float[:, ::1] templates,
               float[:, ::1] heap_s, int64_t[:, ::1] heap_i, float[::1] scratch,
               Py_ssize_t block_rows, Py_ssize_t gemm_min_probes):
    """Running top-k of every probe over all templates, sorted best first.

    ``scratch`` holds at least ``block_rows`` scores per probe (``n_probes *
    block_rows`` for the sgemm path, ``block_rows`` for the dot-product path).
    """
    cdef Py_ssize_t n_probes = probes.shape[0], n_templates = templates.shape[0]
    cdef Py_ssize_t d = probes.shape[1], k = heap_s.shape[1]
    cdef Py_ssize_t p, start, nb
    cdef Py_ssize_t[::1] sizes
    cdef float[::1] thr
    _check_pair("top_k_into", probes.shape, templates.shape)
    if not (heap_s.shape[0] == n_probes and heap_i.shape[0] == n_probes
            and heap_i.shape[1] == k and 0 <= k <= n_templates):
        raise ValueError(
            f"top_k_into: 'heap_s' and 'heap_i' must both be (n_probes, k) with k <= "
            f"n_templates ({n_templates}), n_probes = {n_probes}, got ({heap_s.shape[0]}, "
            f"{heap_s.shape[1]}) and ({heap_i.shape[0]}, {heap_i.shape[1]}).")
    if not (block_rows >= 1):
        raise ValueError(
            f"top_k_into: 'block_rows' must be >= 1, got {block_rows}.")
    nb = min(block_rows, n_templates) * (n_probes if n_probes >= gemm_min_probes else 1)
    if not (scratch.shape[0] >= nb):
        raise ValueError(
            f"top_k_into: 'scratch' must hold a block's scores, {nb} floats, got "
            f"{scratch.shape[0]}.")
    if n_probes == 0 or k == 0:
        return
    sizes = np.zeros(n_probes, dtype=np.intp)
    thr = np.full(n_probes, np.inf, dtype=np.float32)
    with nogil:
        start = 0
        while start < n_templates:
            nb = min(block_rows, n_templates - start)
            if n_probes < gemm_min_probes:
                for p in range(n_probes):
                    nacf_dot_rows(&probes[p, 0], &templates[start, 0], nb, d, &scratch[0])
                    sizes[p] = _scan(&scratch[0], nb, start, &heap_s[p, 0], &heap_i[p, 0],
                                     sizes[p], k)
            else:
                _sgemm_block_rows_major(&probes[0, 0], n_probes, &templates[start, 0], nb,
                                        d, &scratch[0])
                _scan_rows(&scratch[0], nb, n_probes, start, heap_s, heap_i, sizes,
                           &thr[0], k)
            start += nb
        for p in range(n_probes):
            _heap_sort(&heap_s[p, 0], &heap_i[p, 0], sizes[p])
