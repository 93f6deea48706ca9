"""Default montages and the montage option."""

from __future__ import annotations

import pytest

from nacf_core.hardware.montages import (
    ULTRACORTEX_8,
    ULTRACORTEX_16,
    default_montage,
    resolve_montage,
)


def test_defaults_are_the_ultracortex_layout():
    assert default_montage(8) == ["Fp1", "Fp2", "C3", "C4", "P7", "P8", "O1", "O2"]
    assert default_montage(16) == ["Fp1", "Fp2", "F3", "F4", "F7", "F8", "C3", "C4",
                                   "T7", "T8", "P3", "P4", "P7", "P8", "O1", "O2"]
    assert set(ULTRACORTEX_8) <= set(ULTRACORTEX_16)
    with pytest.raises(ValueError, match="Allowed values are 8, 16"):
        default_montage(4)


@pytest.mark.parametrize("value, n, expect", [
    (None, 8, list(ULTRACORTEX_8)),
    ("default", 16, list(ULTRACORTEX_16)),
    ("ultracortex-8", 8, list(ULTRACORTEX_8)),
    ("Ultracortex-16", 16, list(ULTRACORTEX_16)),
    ("a, b ,c", 3, ["a", "b", "c"]),
    (("x", "y"), 2, ["x", "y"]),
])
def test_resolve(value, n, expect):
    assert resolve_montage(value, n) == expect


@pytest.mark.parametrize("value, n, message", [
    ("Fp1,Fp2", 8, "expected 8 names, got 2"),
    ("ultracortex-16", 8, "expected 8 names, got 16"),
    ("a,,c", 3, "empty channel name"),
    ("a,b,a", 3, "names a channel twice: a"),
    # one electrode under its old and new name, or spelt two ways: the pipeline read the
    # first and dropped the other without a word
    ("Fp1,T3,C3,T7", 4, r"names a channel twice: T7 \(written 'T3' and 'T7'\)"),
    ("Fp1,FP1.,O1", 3, r"names a channel twice: Fp1 \(written 'Fp1' and 'FP1.'\)"),
])
def test_resolve_errors(value, n, message):
    with pytest.raises(ValueError, match=message):
        resolve_montage(value, n)
    with pytest.raises(TypeError, match="montage"):
        resolve_montage(3.5, 1)


@pytest.mark.parametrize("value, message", [
    # a preset's name mistyped was taken for one channel's name
    ("ultracortex8", r"expected 8 names, got 1 \('ultracortex8'\), which is no preset "
                     r"\(presets: default, ultracortex-8, ultracortex-16\).*comma"),
    # names separated otherwise than by commas
    ("Fp1 Fp2 C3 C4 P7 P8 O1 O2", r"got 1 \('Fp1 Fp2 C3 C4 P7 P8 O1 O2'\), which is no "
                                  r"preset.*separated by commas"),
    ("", r"'montage' is empty: expected the names of the 8 channels in order, separated "
         r"by commas \(Fp1,Fp2,...\), or a preset \(default, ultracortex-8"),
    # a preset for another channel count
    ("Ultracortex-16", r"the preset 'ultracortex-16' names 16 channels; this source has 8"),
])
def test_a_montage_that_is_no_preset_or_a_preset_of_another_size_says_so(value, message):
    with pytest.raises(ValueError, match=message):
        resolve_montage(value, 8)
