"""Channel names for sources whose data carry none (Cyton packets, OpenBCI/BrainFlow files).

Defaults follow the **OpenBCI Ultracortex Mark IV** default electrode layout (10-20
positions; the temporal-parietal sites in their 10-10 names, T5/T6 = P7/P8,
T3/T4 = T7/T8):

- Cyton, 8 channels (``ultracortex-8``): ``Fp1 Fp2 C3 C4 P7 P8 O1 O2`` on channels 1-8.
- Cyton+Daisy, 16 channels (``ultracortex-16``): ``Fp1 Fp2 F3 F4 F7 F8 C3 C4 T7 T8 P3 P4
  P7 P8 O1 O2`` on channels 1-16.

These are also the channel sets the evaluation and the default model use.

A montage option is either a preset name (``ultracortex-8``, ``ultracortex-16``,
``default``) or the channel names in order, comma-separated
(``cyton:/dev/ttyUSB0?montage=Fp1,Fp2,C3,C4,P7,P8,O1,O2``) or as a sequence. Names are
matched to a model's channels by :func:`nacf_core.channels.canonical_name` (``T3`` is
``T7``, ``FP1`` is ``Fp1``), so a montage that names one electrode twice, in one spelling
or two, is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

from nacf_core.channels import describe_repeated, repeated_channels

__all__ = ["ULTRACORTEX_8", "ULTRACORTEX_16", "PRESETS", "default_montage", "resolve_montage"]

ULTRACORTEX_8: tuple[str, ...] = ("Fp1", "Fp2", "C3", "C4", "P7", "P8", "O1", "O2")
ULTRACORTEX_16: tuple[str, ...] = (
    "Fp1", "Fp2", "F3", "F4", "F7", "F8", "C3", "C4",
    "T7", "T8", "P3", "P4", "P7", "P8", "O1", "O2",
)
PRESETS: dict[str, tuple[str, ...]] = {
    "ultracortex-8": ULTRACORTEX_8,
    "ultracortex-16": ULTRACORTEX_16,
}


def default_montage(n_channels: int) -> list[str]:
    """The Ultracortex default names for 8 or 16 channels.

    Raises
    ------
    ValueError
        ``n_channels`` is neither 8 nor 16.
    """
    if n_channels == 8:
        return list(ULTRACORTEX_8)
    if n_channels == 16:
        return list(ULTRACORTEX_16)
    raise ValueError(
        f"Invalid value for the 'n_channels' parameter. Allowed values are 8, 16 (the "
        f"Cyton and Cyton+Daisy default montages), but got {n_channels!r} instead."
    )


def resolve_montage(montage: Sequence[str] | str | None, n_channels: int) -> list[str]:
    """Channel names for ``n_channels`` channels from a montage option.

    Parameters
    ----------
    montage : str, sequence of str or None
        None or ``"default"``: :func:`default_montage`; a preset name from
        :data:`PRESETS`; or the names in order (comma-separated string or sequence).
    n_channels : int

    Returns
    -------
    list of str, length n_channels

    Raises
    ------
    ValueError
        Wrong number of names, an empty name, a name given twice (also as two names of
        one electrode: ``T3`` and ``T7``), or no default for that channel count.
    """
    if montage is None or (isinstance(montage, str) and montage.strip().lower() == "default"):
        return default_montage(n_channels)
    preset = None
    if isinstance(montage, str):
        key = montage.strip().lower()
        if key in PRESETS:
            preset, montage = key, PRESETS[key]
        else:
            montage = [m.strip() for m in montage.split(",")]
    try:
        names = [str(m).strip() for m in montage]
    except TypeError:
        raise TypeError(
            "'montage' must be a preset name, a comma-separated string or a sequence of "
            f"channel names, got {type(montage).__name__} instead."
        ) from None
    if len(names) != n_channels:
        head = (f"'montage' must name every channel in order: expected {n_channels} names, "
                f"got {len(names)}")
        if preset is not None:
            fit = [k for k, v in PRESETS.items() if len(v) == n_channels]
            raise ValueError(
                f"{head}: the preset {preset!r} names {len(names)} channels; this source has "
                f"{n_channels}" + (f" (its preset: {', '.join(fit)})." if fit else ".")
            )
        if names == [""]:
            raise ValueError(f"'montage' is empty: expected the names of the {n_channels} "
                             f"channels in order, separated by commas (Fp1,Fp2,...), or a "
                             f"preset (default, {', '.join(PRESETS)}).")
        if len(names) == 1:  # a mistyped preset, or names not separated by commas
            raise ValueError(
                f"{head} ({names[0]!r}), which is no preset (presets: default, "
                f"{', '.join(PRESETS)}); name the channels in order, separated by commas "
                f"(Fp1,Fp2,...)."
            )
        raise ValueError(f"{head} ({', '.join(names)}).")
    if any(not n for n in names):
        raise ValueError(f"'montage' has an empty channel name: {names}.")
    repeated = repeated_channels(names)
    if repeated:
        raise ValueError(
            f"'montage' names a channel twice: {describe_repeated(names, repeated)}.")
    return names
