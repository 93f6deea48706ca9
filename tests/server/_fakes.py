"""Test scaffolding only: a small stand-in for ``nacf_core.pipeline`` while the real
pipeline has not landed (never shipped in the package).  It follows the documented
contract (``docs/CONTRACTS.md``: ``Pipeline.windows/enroll/score``,
``Template.to_bytes/from_bytes``, ``SequentialTest.update``) with a deliberately
simple embedding: the centred log-variance profile over channels of each window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nacf_core.errors import FailedPrecondition, InvalidArgument


@dataclass
class FakeModel:
    version: str = "fake-00000001"
    threshold: float = 0.6
    window_s: float = 4.0
    sfreq: float = 160.0
    n_channels: int = 16
    ch_names: tuple = ("Fp1", "Fp2", "F3", "F4", "F7", "F8", "C3", "C4", "Cz", "T7", "T8",
                       "P3", "P4", "Pz", "O1", "O2")


@dataclass
class FakeWindows:
    embeddings: np.ndarray
    quality: np.ndarray
    accepted: np.ndarray
    reasons: list
    seconds: float

    def select(self, index) -> "FakeWindows":
        idx = np.arange(len(self.accepted))[index]
        return FakeWindows(self.embeddings[idx], self.quality[idx], self.accepted[idx],
                           [self.reasons[i] for i in idx], self.seconds)


class FakeTemplate:
    def __init__(self, mean: np.ndarray) -> None:
        self.mean = mean.astype(np.float32)

    def to_bytes(self) -> bytes:
        return b"FAKE" + self.mean.tobytes()

    @classmethod
    def from_bytes(cls, blob: bytes) -> "FakeTemplate":
        if not blob.startswith(b"FAKE"):
            raise InvalidArgument("not a fake template")
        return cls(np.frombuffer(blob[4:], dtype=np.float32).copy())


class FakePipeline:
    def __init__(self, model: FakeModel | None = None) -> None:
        self.model = model or FakeModel()

    def windows(self, samples, sfreq, ch_names, hop_s=None) -> FakeWindows:
        if not 125 <= sfreq <= 1000:
            raise InvalidArgument(f"sfreq must be in [125, 1000] Hz, got {sfreq:g}.")
        if len(ch_names) < self.model.n_channels:
            raise InvalidArgument(f"need {self.model.n_channels} channels, got {len(ch_names)}.")
        x = np.asarray(samples, dtype=np.float64)[:, : self.model.n_channels]
        n = int(round(self.model.window_s * sfreq))
        hop = n if hop_s is None else int(round(hop_s * sfreq))
        if x.shape[0] < n:
            raise InvalidArgument(f"signal too short: {x.shape[0] / sfreq:.2f} s, need "
                                  f"{self.model.window_s:g} s.")
        starts = range(0, x.shape[0] - n + 1, hop)
        embs, acc, qual, reasons = [], [], [], []
        for s in starts:
            w = x[s:s + n]
            w = w - w.mean(axis=0)
            v = np.log(w.var(axis=0) + 1e-6)
            e = v - v.mean()
            norm = np.linalg.norm(e)
            e = e / norm if norm > 0 else e
            ok = bool(np.all(w.std(axis=0) > 0.5) and np.ptp(w) < 2000)
            embs.append(e)
            acc.append(ok)
            qual.append(0.9 if ok else 0.1)
            reasons.append("" if ok else "flat or railed channel")
        return FakeWindows(np.asarray(embs, np.float32), np.asarray(qual), np.asarray(acc),
                           reasons, x.shape[0] / sfreq)

    template_cls = FakeTemplate

    @property
    def sequential_cls(self):
        return FakeSequential

    def enroll(self, blocks) -> FakeTemplate:
        windows_list = [self.windows(*b) for b in blocks]
        good = [w.embeddings[w.accepted] for w in windows_list]
        e = np.concatenate(good, axis=0) if good else np.zeros((0, 1))
        if e.shape[0] < 2:
            raise FailedPrecondition(f"enrollment needs at least 2 good epochs, got {e.shape[0]}.")
        m = e.mean(axis=0)
        t = FakeTemplate(m / np.linalg.norm(m))
        t.n_epochs, t.quality = int(e.shape[0]), 0.9
        return t

    def score(self, windows, template) -> np.ndarray:
        return windows.embeddings.astype(np.float64) @ template.mean.astype(np.float64)

    def decide(self, windows, template) -> FakeDecision:
        acc = np.asarray(windows.accepted, bool)
        thr = self.model.threshold
        q = float(np.mean(windows.quality)) if len(acc) else 0.0
        if not acc.any():
            return FakeDecision(False, 0.0, thr, q, ["no window passed the quality gate"], 0)
        m = windows.embeddings[acc].astype(np.float64).mean(axis=0)
        m /= np.linalg.norm(m) or 1.0
        score = float(m @ template.mean)
        reasons = [] if score >= thr else [f"score {score:.3f} below threshold {thr:.3f}"]
        return FakeDecision(score >= thr, score, thr, q, reasons, int(acc.sum()))


@dataclass
class FakeDecision:
    accepted: bool
    score: float
    threshold: float
    quality: float
    reasons: list
    windows_used: int


class FakeSequential:
    def __init__(self, model, max_seconds: float = 20.0) -> None:
        self.thr = model.threshold
        self.scores: list[float] = []
        self.window_s = model.window_s

    def update(self, score: float):
        self.scores.append(score)
        m = float(np.mean(self.scores))
        if len(self.scores) >= 2 and m >= self.thr + 0.1:
            return "accept"
        if len(self.scores) >= 2 and m < self.thr - 0.2:
            return "reject"
        return None

    @property
    def seconds(self) -> float:
        return len(self.scores) * self.window_s
