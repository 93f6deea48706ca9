"""The 64-byte aligned allocation helper."""

from __future__ import annotations

import numpy as np
import pytest

from nacf_core.kernels._aligned import (
    ALIGNMENT,
    aligned_copy,
    empty_aligned,
    is_aligned,
    zeros_aligned,
)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8, np.complex128])
@pytest.mark.parametrize("shape", [(1,), 7, (3, 5), (4, 2, 9), (0,), (0, 3)])
def test_empty_aligned(shape, dtype):
    for _ in range(20):  # many allocations: NumPy's own would land off a 64-byte line
        a = empty_aligned(shape, dtype)
        expected_shape = (shape,) if isinstance(shape, int) else shape
        assert a.shape == expected_shape and a.dtype == dtype
        assert a.flags.c_contiguous and a.flags.writeable
        if a.size:  # an empty array has no data to align
            assert a.ctypes.data % ALIGNMENT == 0
            assert is_aligned(a)
        a[...] = 1  # the whole buffer is usable
        assert np.all(a == 1)


def test_numpy_alone_is_not_always_aligned():
    """Why the helper exists: a plain allocation is only guaranteed 16 bytes."""
    offsets = {np.empty(3, np.float64)[1:].ctypes.data % 64 for _ in range(50)}
    assert offsets != {0}


@pytest.mark.parametrize("alignment", [16, 32, 64, 128, 4096])
def test_other_alignments(alignment):
    a = zeros_aligned((5, 3), np.float32, alignment)
    assert a.ctypes.data % alignment == 0 and not a.any()


def test_buffer_stays_alive():
    a = empty_aligned(1000, np.float64)
    a[:] = np.arange(1000)
    del_ref = a.base
    assert del_ref is not None
    b = a[10:20]
    del a
    np.testing.assert_array_equal(b, np.arange(10, 20))


def test_aligned_copy_converts():
    x = np.arange(12, dtype=np.int64).reshape(3, 4)[:, ::2]  # non-contiguous
    c = aligned_copy(x, np.float32)
    assert c.dtype == np.float32 and c.flags.c_contiguous and is_aligned(c)
    np.testing.assert_array_equal(c, x)


def test_is_aligned_detects_offsets():
    a = empty_aligned(64, np.uint8)
    assert is_aligned(a) and not is_aligned(a[1:])
    assert is_aligned(a[1:], 1)


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (48, ValueError), (-64, ValueError),
                                      (2.0, TypeError), (True, TypeError)])
def test_bad_alignment_named(bad, exc):
    with pytest.raises(exc, match="'alignment'"):
        empty_aligned(4, np.float64, bad)


def test_negative_shape_named():
    with pytest.raises(ValueError, match="'shape'"):
        empty_aligned((2, -1), np.float64)


def test_kernel_scratch_is_aligned_and_reused():
    from nacf_core.kernels import _filter_common

    a = _filter_common.scratch(100, np.float64)
    assert is_aligned(a) and a.shape[0] >= 100
    assert _filter_common.scratch(50, np.float64) is a  # reused, not reallocated
    big = _filter_common.scratch(10**5, np.float32)
    assert is_aligned(big) and big.dtype == np.float32
    from nacf_core.kernels._aligned import _aligned_unchecked

    e = _aligned_unchecked((3, 5), np.dtype(np.float32))
    assert is_aligned(e) and e.shape == (3, 5)


def test_kernel_scratch_is_per_thread():
    import threading

    from nacf_core.kernels import _filter_common

    main = _filter_common.scratch(10, np.float64)
    other = []
    t = threading.Thread(target=lambda: other.append(_filter_common.scratch(10, np.float64)))
    t.start()
    t.join()
    assert other[0] is not main


@pytest.mark.parametrize("shape", [(2.7, 3), 2.5, "3", ("4",), (True, 2), None])
def test_a_shape_that_is_not_integers_is_refused_not_truncated(shape):
    """``empty_aligned((2.7, 3))`` gave a (2, 3) array and ``empty_aligned("3")`` a (3,)
    one (``int()`` of each entry), where ``numpy.empty`` refuses both: a float, a string
    or a bool is now a TypeError naming 'shape'."""
    with pytest.raises(TypeError, match="'shape'"):
        empty_aligned(shape)


def test_a_dtype_of_references_is_refused_by_name():
    """Object arrays cannot live in a byte buffer: NumPy's 'Cannot change data-type for
    array of references' named no parameter."""
    with pytest.raises(TypeError, match="'dtype'"):
        empty_aligned((2,), dtype=object)
