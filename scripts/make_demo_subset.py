"""Write the demo recordings the package ships (``nacf_core/data/demo/``).

EEGMMIDB (PhysioNet EEG Motor Movement/Imagery Dataset v1.0.0, ODC-By 1.0) subjects
S021-S024, runs R03 and R07, the first 60 s of each, 16 channels (the Cyton+Daisy
Ultracortex montage: Fp1 Fp2 F3 F4 F7 F8 C3 C4 T7 T8 P3 P4 P7 P8 O1 O2) at the original
160 Hz, float32 microvolts, in the nacf ``.npz`` format. S001-S020 train the default
model, so the demo subjects are disjoint from them.

Usage::

    python scripts/make_demo_subset.py [--data ../shared/data/eegmmidb] [--out nacf_core/data/demo]
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SUBJECTS = ("S021", "S022", "S023", "S024")
RUNS = ("R03", "R07")
SECONDS = 60.0
CHANNELS = ("Fp1", "Fp2", "F3", "F4", "F7", "F8", "C3", "C4",
            "T7", "T8", "P3", "P4", "P7", "P8", "O1", "O2")

ATTRIBUTION = """\
# Demo recordings: attribution

The `.npz` files here are excerpts of the **PhysioNet EEG Motor Movement/Imagery
Dataset v1.0.0** (EEGMMIDB), made by `scripts/make_demo_subset.py`: subjects
{subjects}, runs R03 and R07 (opening and closing the left or right fist), the first
{seconds:g} s of each, 16 channels ({channels}) at the original 160 Hz, float32
microvolts. Nothing else was changed (no filtering, no re-referencing).

Keys: `data` float32 `(n_times, n_channels)` µV, `sfreq`, `ch_names`.

License: Open Data Commons Attribution License v1.0 (ODC-By 1.0),
https://opendatacommons.org/licenses/by/1-0/. Source:
https://physionet.org/content/eegmmidb/1.0.0/

Please cite:

- Schalk G., McFarland D.J., Hinterberger T., Birbaumer N., Wolpaw J.R. "BCI2000: A
  General-Purpose Brain-Computer Interface (BCI) System". IEEE Transactions on
  Biomedical Engineering 51(6):1034-1043, 2004.
- Goldberger A.L., Amaral L.A.N., Glass L., Hausdorff J.M., Ivanov P.Ch., Mark R.G.,
  Mietus J.E., Moody G.B., Peng C.-K., Stanley H.E. "PhysioBank, PhysioToolkit, and
  PhysioNet: Components of a New Research Resource for Complex Physiologic Signals".
  Circulation 101(23):e215-e220, 2000.

Files (with the SHA-256 of the source EDF, as in PhysioNet's `SHA256SUMS`):

{files}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "eegmmidb"))
    ap.add_argument("--out", default=str(ROOT / "nacf_core" / "data" / "demo"))
    args = ap.parse_args(argv)
    from nacf_core.channels import canonical_name
    from nacf_core.hardware.files import read_recording, write_npz

    data_dir, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for subject in SUBJECTS:
        for run in RUNS:
            src = data_dir / subject / f"{subject}{run}.edf"
            rec = read_recording(src, stop_s=SECONDS)
            canon = [canonical_name(n) for n in rec.ch_names]
            missing = [c for c in CHANNELS if c not in canon]
            if missing:
                raise SystemExit(f"{src}: channels {missing} not found in {rec.ch_names}")
            idx = [canon.index(c) for c in CHANNELS]
            data = rec.data[:, idx].astype(np.float32)
            path = write_npz(out / f"{subject}{run}.npz", data, rec.sfreq, CHANNELS)
            lines.append(f"- `{path.name}` from `{subject}/{src.name}` (sha256 {_sha(src)}): "
                         f"{data.shape[0]} samples")
            print(f"{path}: {data.shape} at {rec.sfreq:g} Hz, {path.stat().st_size} bytes")
    (out / "ATTRIBUTION.md").write_text(ATTRIBUTION.format(
        subjects=", ".join(SUBJECTS), seconds=SECONDS, channels=" ".join(CHANNELS),
        files="\n".join(lines)))
    return 0


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


if __name__ == "__main__":
    raise SystemExit(main())
