"""Canonical EEG channel names, matched the way EDF files from different systems write them.

Recordings name the same electrode in many ways: EEGMMIDB pads labels with dots
(``Fp1.``, ``Oz..``), clinical EDF exports upper-case them (``FP1``) or add a type and a
reference (``EEG Fp1``, ``EEG Fp1-REF``, ``EEG FP1-LE``).  :func:`canonical_name` maps
every such label to the 10-05 spelling of the electrode (``Fp1``, ``FCz``, ``AF7``,
``PO10``) and returns ``None`` for anything that is not a scalp EEG electrode: ECG, EOG,
EMG, accelerometer and auxiliary channels, references and mastoids (``A1``, ``M2``,
``REF``), annotation and status channels, and unlabelled channels (``EXG Channel 0``).
A channel that is not EEG is never used as EEG.

The old 10-20 temporal names are aliases of their 10-10 names (Acharya et al. 2016,
ACNS guideline 2): ``T3`` → ``T7``, ``T4`` → ``T8``, ``T5`` → ``P7``, ``T6`` → ``P8``.

Two labels that name one electrode (``T3`` and ``T7``, ``Fp1`` and ``FP1``) are never
both mapped to it: :func:`pick` refuses them when the electrode is wanted, and a montage
or a stream's labels that do so are refused (:func:`repeated_channels` finds them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from nacf_core.errors import InvalidArgument

__all__ = ["STANDARD_NAMES", "canonical_name", "canonical_names", "describe_repeated", "pick",
           "repeated_channels", "MONTAGE_8", "MONTAGE_16"]

# Electrode names of the 10-05 system (Oostenveld & Praamstra 2001, as MNE's
# ``standard_1005`` montage spells them), without mastoid/ear references.
STANDARD_NAMES: tuple[str, ...] = tuple("""
    Fp1 Fpz Fp2 AF9 AF7 AF5 AF3 AF1 AFz AF2 AF4 AF6 AF8 AF10 F9 F7 F5 F3 F1 Fz F2 F4 F6 F8
    F10 FT9 FT7 FC5 FC3 FC1 FCz FC2 FC4 FC6 FT8 FT10 T9 T7 C5 C3 C1 Cz C2 C4 C6 T8 T10 TP9
    TP7 CP5 CP3 CP1 CPz CP2 CP4 CP6 TP8 TP10 P9 P7 P5 P3 P1 Pz P2 P4 P6 P8 P10 PO9 PO7 PO5
    PO3 PO1 POz PO2 PO4 PO6 PO8 PO10 O1 Oz O2 I1 Iz I2 AFp9h AFp7h AFp5h AFp3h AFp1h AFp2h
    AFp4h AFp6h AFp8h AFp10h AFF9h AFF7h AFF5h AFF3h AFF1h AFF2h AFF4h AFF6h AFF8h AFF10h
    FFT9h FFT7h FFC5h FFC3h FFC1h FFC2h FFC4h FFC6h FFT8h FFT10h FTT9h FTT7h FCC5h FCC3h
    FCC1h FCC2h FCC4h FCC6h FTT8h FTT10h TTP9h TTP7h CCP5h CCP3h CCP1h CCP2h CCP4h CCP6h
    TTP8h TTP10h TPP9h TPP7h CPP5h CPP3h CPP1h CPP2h CPP4h CPP6h TPP8h TPP10h PPO9h PPO7h
    PPO5h PPO3h PPO1h PPO2h PPO4h PPO6h PPO8h PPO10h POO9h POO7h POO5h POO3h POO1h POO2h
    POO4h POO6h POO8h POO10h OI1h OI2h Fp1h Fp2h AF9h AF7h AF5h AF3h AF1h AF2h AF4h AF6h
    AF8h AF10h F9h F7h F5h F3h F1h F2h F4h F6h F8h F10h FT9h FT7h FC5h FC3h FC1h FC2h FC4h
    FC6h FT8h FT10h T9h T7h C5h C3h C1h C2h C4h C6h T8h T10h TP9h TP7h CP5h CP3h CP1h CP2h
    CP4h CP6h TP8h TP10h P9h P7h P5h P3h P1h P2h P4h P6h P8h P10h PO9h PO7h PO5h PO3h PO1h
    PO2h PO4h PO6h PO8h PO10h O1h O2h I1h I2h AFp9 AFp7 AFp5 AFp3 AFp1 AFpz AFp2 AFp4 AFp6
    AFp8 AFp10 AFF9 AFF7 AFF5 AFF3 AFF1 AFFz AFF2 AFF4 AFF6 AFF8 AFF10 FFT9 FFT7 FFC5 FFC3
    FFC1 FFCz FFC2 FFC4 FFC6 FFT8 FFT10 FTT9 FTT7 FCC5 FCC3 FCC1 FCCz FCC2 FCC4 FCC6 FTT8
    FTT10 TTP9 TTP7 CCP5 CCP3 CCP1 CCPz CCP2 CCP4 CCP6 TTP8 TTP10 TPP9 TPP7 CPP5 CPP3 CPP1
    CPPz CPP2 CPP4 CPP6 TPP8 TPP10 PPO9 PPO7 PPO5 PPO3 PPO1 PPOz PPO2 PPO4 PPO6 PPO8 PPO10
    POO9 POO7 POO5 POO3 POO1 POOz POO2 POO4 POO6 POO8 POO10 OI1 OIz OI2
""".split())

#: The 8-channel Cyton montage of the evaluation protocol.
MONTAGE_8: tuple[str, ...] = ("Fp1", "Fp2", "C3", "C4", "P7", "P8", "O1", "O2")
#: The 16-channel montage of the evaluation protocol.
MONTAGE_16: tuple[str, ...] = (
    "Fp1", "Fp2", "F3", "F4", "F7", "F8", "C3", "C4", "T7", "T8", "P3", "P4", "P7", "P8",
    "O1", "O2",
)

_LOOKUP: dict[str, str] = {n.upper(): n for n in STANDARD_NAMES}
_LOOKUP.update({"T3": "T7", "T4": "T8", "T5": "P7", "T6": "P8"})

# A leading type word: EEG is kept, every other type means "not EEG".
_TYPE_PREFIX = re.compile(
    r"^(EEG|ECG|EKG|EOG|EMG|RESP|ACC|ACCEL|AUX|MISC|POL|SAO2|TEMP|STIM)[\s_:-]+", re.IGNORECASE)
# A trailing reference: -REF, -LE, -AR, -A1, -A2, -M1, -M2, -AVG, -CZ (bipolar to Cz).
_REF_SUFFIX = re.compile(r"[-/](REF|LE|RE|AR|AVG|A1|A2|M1|M2|A1A2|M1M2|CZ)$", re.IGNORECASE)


def canonical_name(label: str) -> str | None:
    """Return the 10-05 name of an EEG channel label, or ``None`` if it is not EEG.

    Parameters
    ----------
    label : str
        The channel label as the file or device writes it.

    Returns
    -------
    name : str or None
        ``"Fp1"`` for ``"Fp1."``, ``"FP1"``, ``"EEG Fp1"``, ``"EEG Fp1-REF"``; ``None`` for
        ``"ECG"``, ``"EOG Fp1"``, ``"A1"``, ``"Accel X"``, ``"EDF Annotations"``...

    Examples
    --------
    >>> canonical_name("Fcz.")
    'FCz'
    >>> canonical_name("EEG T3-LE")
    'T7'
    >>> canonical_name("EOG left") is None
    True
    """
    if not isinstance(label, str):
        raise TypeError(f"channel label must be a str, got {type(label).__name__} instead.")
    s = label.strip().strip(".").strip()
    m = _TYPE_PREFIX.match(s)
    if m:
        if m.group(1).upper() != "EEG":
            return None
        s = s[m.end():]
    s = _REF_SUFFIX.sub("", s.strip()).strip(".").strip()
    return _LOOKUP.get(s.upper())


def canonical_names(ch_names: Sequence[str]) -> list[str | None]:
    """:func:`canonical_name` of every label."""
    return [canonical_name(n) for n in ch_names]


def repeated_channels(ch_names: Sequence[str]) -> dict[str, list[int]]:
    """The channels that name one channel more than once.

    Returns
    -------
    dict
        ``{name: [indices]}``, in the order of first occurrence, for every EEG electrode
        (by :func:`canonical_name`: ``T3`` and ``T7``, ``Fp1`` and ``EEG FP1-REF``) and
        every other label (as written, without surrounding blanks) that two or more of
        ``ch_names`` name.
    """
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(ch_names):
        # a label that is not EEG is never an electrode's canonical name: no clash
        groups.setdefault(canonical_name(label) or str(label).strip(), []).append(i)
    return {name: idx for name, idx in groups.items() if len(idx) > 1}


def describe_repeated(ch_names: Sequence[str], repeated: dict[str, list[int]]) -> str:
    """``repeated`` (from :func:`repeated_channels`) for a message: ``Fp1`` for a label
    written twice the same way, ``T7 (written 'T3' and 'T7')`` otherwise."""
    parts = []
    for name, idx in repeated.items():
        labels = [ch_names[i] for i in idx]
        if len(set(labels)) == 1:
            parts.append(name)
        else:
            written = ", ".join(map(repr, labels[:-1])) + f" and {labels[-1]!r}"
            parts.append(f"{name} (written {written})")
    return "; ".join(parts)


def pick(ch_names: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """Indices in ``ch_names`` of the EEG channels ``wanted``, in the order of ``wanted``.

    Both sides are compared by :func:`canonical_name`, so ``pick(["EEG FP1-REF", "EEG
    T3-LE"], ["T7", "Fp1"])`` is ``[1, 0]``.

    Raises
    ------
    InvalidArgument
        If a wanted name is not an EEG electrode name, if ``ch_names`` lacks some of the
        wanted channels (the message names them and lists what came), or if two of
        ``ch_names`` name one wanted electrode (``T3`` and ``T7``, ``Fp1`` and ``FP1``:
        which one the model should read is not known).
    """
    if isinstance(ch_names, str) or isinstance(wanted, str):
        raise TypeError("'ch_names' and 'wanted' must be sequences of str, not a single str.")
    have: dict[str, int] = {}
    twice: dict[str, list[int]] = {}
    for i, label in enumerate(ch_names):
        name = canonical_name(label)
        if name is None:
            continue
        if name in have:
            twice.setdefault(name, [have[name]]).append(i)
        else:
            have[name] = i
    want = []
    for w in wanted:
        name = canonical_name(w)
        if name is None:
            raise InvalidArgument(
                f"Invalid channel name {w!r} in 'wanted': expected an EEG electrode name "
                "of the 10-05 system such as 'Fp1', 'Cz' or 'O2'."
            )
        want.append(name)
    missing = [w for w, name in zip(wanted, want) if name not in have]
    if missing:
        raise InvalidArgument(
            f"The signal lacks {len(missing)} of the {len(want)} channels the model needs: "
            f"missing {', '.join(missing)}; the signal has "
            f"{', '.join(map(str, ch_names)) or 'no channels'}."
        )
    clash = {name: twice[name] for name in dict.fromkeys(want) if name in twice}
    if clash:
        raise InvalidArgument(
            f"The signal names the model's channel {describe_repeated(ch_names, clash)}: "
            "one electrode under two labels (its old and new 10-20 name, or one name "
            "written two ways), and which of them to read is not known. Send one channel "
            "per electrode (drop or rename the other)."
        )
    return [have[name] for name in want]
