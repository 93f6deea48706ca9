"""Presentation-attack detection on the EEGMMIDB dev data: genuine rejection rate and
attack detection rates (the figures in the README, section "Presentation-attack
detection").

usage: python benches/pad_dev_rates.py [DATA_DIR] [--channels 8|16]
       (default ../shared/data/eegmmidb, 16 channels; 8 = Fp1 Fp2 C3 C4 P7 P8 O1 O2)

Protocol: 16 channels (Fp1 Fp2 F3 F4 F7 F8 C3 C4 T7 T8 P3 P4 P7 P8 O1 O2) picked by
name, 160 Hz; the detector band-passes 1-40 Hz (4th-order Butterworth, zero phase).
Each subject enrolls on R03 (its fingerprint is the history); every non-overlapping
4-s window of R07, then of R04, is a genuine probe, in time order, and each accepted
probe joins the history (bounded to 64, as the store keeps it). Attacks per subject:
a piece of R03 rescaled per channel (x0.3-3), offset (+-200 uV) and with 5 % noise;
the same resampled to 250 Hz; an earlier probe of R07/R04 replayed shifted by up to 1 s
(tweaked the same way); the enrollment piece and an earlier probe played backwards
(time-reversed); white noise (independent, and with a common component);
a sinusoid of 3-30 Hz; a real R04 segment of 0.5-1.9 s looped (5 % noise).
"""

from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

import numpy as np
from nacf_core.hardware.files import read_recording
from scipy.signal import resample_poly
from scipy.stats import beta

from nacf_core.channels import pick
from nacf_core.pad import PresentationAttackDetector

CHANNELS = {
    16: "Fp1 Fp2 F3 F4 F7 F8 C3 C4 T7 T8 P3 P4 P7 P8 O1 O2".split(),
    8: "Fp1 Fp2 C3 C4 P7 P8 O1 O2".split(),
}


class _Block:
    def __init__(self, x, sfreq, ch_names):
        self.samples, self.sfreq, self.ch_names = x, sfreq, ch_names


def main(data: Path, n_channels: int = 16) -> int:
    ch = CHANNELS[n_channels]
    det = PresentationAttackDetector(ch)
    rng = np.random.default_rng(0)
    rng_rev = np.random.default_rng(1)  # the reversed replays' (the other draws as before)
    genuine, attacks = [], collections.defaultdict(list)

    def tweak(seg, rng=rng):
        g = rng.uniform(0.3, 3, size=seg.shape[1])
        return (seg * g + rng.uniform(-200, 200, size=seg.shape[1])
                + rng.normal(0, 0.05, size=seg.shape) * seg.std(0))

    def attack(name, x, sf, hist):
        v = det.analyse(x, sf, ch, hist)
        attacks[name].append((v.attack, v.reason, v.scores))

    t0 = time.perf_counter()
    subjects = sorted(p.name for p in data.iterdir() if p.is_dir())
    for s in subjects:
        runs = {}
        for r in ("R03", "R04", "R07"):
            rec = read_recording(data / s / f"{s}{r}.edf")
            runs[r], sf = rec.data[:, pick(rec.ch_names, ch)], rec.sfreq
        w = int(4 * sf)
        x03 = runs["R03"]
        enrolled = [("enroll", fp) for fp in det.enroll_fingerprints(None, [_Block(x03, sf, ch)])]
        for r in ("R07", "R04"):
            x, hist = runs[r], list(enrolled)
            for k in range(x.shape[0] // w):
                v = det.analyse(x[k * w:(k + 1) * w], sf, ch, hist)
                genuine.append((s, r, k, v.attack, v.reason, v.scores))
                if v.fingerprint is not None:
                    hist = enrolled + (hist[len(enrolled):] + [("probe", v.fingerprint)])[-64:]
            k = int(rng.integers(0, x.shape[0] // w - 1))
            sh = int(rng.integers(0, int(sf)))
            attack("replay of an earlier probe", tweak(x[k * w + sh:(k + 1) * w + sh]), sf, hist)
            attack("replay of an earlier probe, time-reversed",
                   tweak(x[k * w:(k + 1) * w][::-1], rng_rev), sf, hist)
        st = int(rng.integers(0, x03.shape[0] - w))
        attack("replay of enrollment", tweak(x03[st:st + w]), sf, enrolled)
        attack("replay of enrollment, resampled to 250 Hz",
               tweak(resample_poly(x03[st:st + w], 25, 16, axis=0)), 250.0, enrolled)
        attack("replay of enrollment, time-reversed", tweak(x03[st:st + w][::-1], rng_rev), sf,
               enrolled)
        common = rng.normal(0, 30, size=(w, 1)) * (len(attacks["white noise"]) % 2)
        attack("white noise", rng.normal(0, 30, size=(w, len(ch))) + common, sf, enrolled)
        t = np.arange(w) / sf
        phase = rng.uniform(0, 6.3, len(ch))
        sin = 20 * np.sin(2 * np.pi * rng.uniform(3, 30) * t[:, None] + phase)
        attack("sinusoid", sin + rng.normal(0, 1, size=sin.shape), sf, enrolled)
        p = int(rng.uniform(0.5, 1.9) * sf)
        st = int(rng.integers(0, runs["R04"].shape[0] - p))
        loop = np.tile(runs["R04"][st:st + p], (w // p + 1, 1))[:w]
        attack("looped segment", tweak(loop), sf, enrolled)
    elapsed = time.perf_counter() - t0

    n = len(genuine)
    rej = [g for g in genuine if g[3]]
    upper = beta.ppf(0.975, len(rej) + 1, n - len(rej))  # Clopper-Pearson
    print(f"{len(ch)} channels; subjects: {len(subjects)}; genuine probes: {n}; "
          f"rejected: {len(rej)} ({100 * len(rej) / n:.2f} %; "
          f"95 % CI upper bound {100 * upper:.2f} %)")
    for g in rej:
        print("   rejected:", g[:5])
    for key, thr in (("replay", det.replay_threshold), ("flatness", det.max_flatness),
                     ("slope", det.max_slope), ("periodicity", det.max_periodicity)):
        v = np.array([g[5][key] for g in genuine if key in g[5]])
        print(f"genuine {key:12s} max {v.max():7.3f}  99.9th pct {np.percentile(v, 99.9):7.3f}"
              f"  (threshold {thr})")
    print("| attack | detected | reasons |")
    print("|---|---|---|")
    for name, rows in attacks.items():
        ok = sum(a for a, _, _ in rows)
        reasons = collections.Counter(r for _, r, _ in rows)
        key = ("replay" if name.startswith("replay") else
               "flatness" if name == "white noise" else "periodicity")
        lo = min(sc.get(key, np.nan) for _, _, sc in rows)
        print(f"| {name} | {ok}/{len(rows)} | {dict(reasons)}, min {key} {lo:.3f} |")
    print(f"({elapsed:.0f} s, {1000 * elapsed / (n + sum(map(len, attacks.values()))):.1f} ms "
          f"per probe including file reading)")
    return 0


if __name__ == "__main__":
    import argparse

    root = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default=root.parent / "shared" / "data" / "eegmmidb",
                    type=Path)
    ap.add_argument("--channels", type=int, choices=sorted(CHANNELS), default=16)
    a = ap.parse_args()
    sys.exit(main(a.data, a.channels))
