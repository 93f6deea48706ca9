import pytest

from nacf_core.channels import MONTAGE_8, MONTAGE_16, STANDARD_NAMES, canonical_name, pick
from nacf_core.errors import InvalidArgument


@pytest.mark.parametrize("label", ["Fp1", "Fp1.", "FP1", "fp1", "EEG Fp1", "EEG Fp1-REF",
                                   "EEG FP1-LE", " Fp1 ", "EEG:Fp1", "EEG_FP1-A1"])
def test_spellings_of_fp1(label):
    assert canonical_name(label) == "Fp1"


@pytest.mark.parametrize("label, name", [("Fcz.", "FCz"), ("Oz..", "Oz"), ("Cpz.", "CPz"),
                                         ("T10.", "T10"), ("Af7.", "AF7"), ("Po10", "PO10"),
                                         ("EEG T3-LE", "T7"), ("T5", "P7"), ("T4", "T8"),
                                         ("T6", "P8"), ("Iz..", "Iz")])
def test_eegmmidb_and_legacy_names(label, name):
    assert canonical_name(label) == name


@pytest.mark.parametrize("label", ["ECG", "EKG", "ECG Fp1", "EOG Fp1", "EOG left", "EMG chin",
                                   "A1", "A2", "M1", "REF", "Accel X", "Accel Channel 0",
                                   "AUX 1", "EDF Annotations", "Status", "EXG Channel 0",
                                   "Sample Index", "", "Timestamp"])
def test_not_eeg(label):
    assert canonical_name(label) is None


def test_standard_names_are_their_own_canonical_names():
    for name in STANDARD_NAMES:
        assert canonical_name(name) == name
        assert canonical_name(name.upper() + ".") == name
    assert set(MONTAGE_16) >= set(MONTAGE_8)


def test_canonical_name_type():
    with pytest.raises(TypeError, match="str"):
        canonical_name(3)


def test_pick_order_and_spellings():
    names = ["EEG O1-REF", "ECG", "EEG FP1-REF", "EOG Fp2", "EEG T3-LE", "T5.."]
    assert pick(names, ["Fp1", "O1"]) == [2, 0]
    assert pick(names, ["FP1."]) == [2]
    assert pick(names, ["T7", "P7"]) == [4, 5]  # the old 10-20 names of T7, P7


@pytest.mark.parametrize("names, wanted, twice", [
    (["T3", "Fp1", "T7"], ["Fp1", "T7"], "T7 (written 'T3' and 'T7')"),
    (["EEG FP1-REF", "O1", "Fp1."], ["O1", "Fp1"], "Fp1 (written 'EEG FP1-REF' and 'Fp1.')"),
    (["Fp1", "FP1", "fp1", "O1"], ["Fp1", "O1"], "Fp1 (written 'Fp1', 'FP1' and 'fp1')"),
])
def test_pick_refuses_two_channels_for_one_wanted_electrode(names, wanted, twice):
    """A signal with T3 and T7 (one electrode's old and new name), or Fp1 spelt two ways,
    had the first taken and the other dropped without a word: which of the two the model
    read depended on the order the client sent them in."""
    with pytest.raises(InvalidArgument) as e:
        pick(names, wanted)
    msg = str(e.value)
    assert f"names the model's channel {twice}" in msg, msg
    assert "one channel per electrode" in msg, msg


def test_pick_ignores_an_electrode_named_twice_that_is_not_wanted():
    assert pick(["T3", "Fp1", "T7", "O1"], ["O1", "Fp1"]) == [3, 1]


def test_pick_missing_names_them():
    with pytest.raises(InvalidArgument) as e:
        pick(["Fp1", "EOG Fp2", "ECG"], ["Fp1", "Fp2", "O2"])
    msg = str(e.value)
    assert "missing Fp2, O2" in msg and "2 of the 3" in msg and "EOG Fp2" in msg


def test_pick_rejects_non_eeg_wanted_and_single_string():
    with pytest.raises(InvalidArgument, match="'ECG'"):
        pick(["Fp1"], ["ECG"])
    with pytest.raises(TypeError):
        pick("Fp1", ["Fp1"])
