"""Accuracy evaluation on a manifest of real recordings (``nacf evaluate``).

Protocol (``EVALUATION.md``):

- The manifest (CSV: ``subject,recording,role,path[,start_s,stop_s]``, paths relative to
  its folder) names enrollment and probe recordings; they must be different recordings.
- Open set: k-fold over subjects (default 4), repeated over ``splits`` random fold
  assignments.  For each fold a model is fitted and calibrated
  (:func:`nacf_core.training.fit_model_from_features`) on the other folds' subjects
  only; the fold's subjects are enrolled (:meth:`Pipeline.enroll` on their ``enroll``
  recordings) and probed with the product's code path (:meth:`Pipeline.windows`,
  :meth:`Pipeline.decide`, :class:`SequentialTest`).  With ``model=`` a fixed model is
  evaluated on every subject instead (no folds).
- Genuine comparisons: a subject's probes against its own template; impostor: against
  every other template of the fold (zero-effort impostors).
- ``single``: every 4-s window with a 2-s hop.  ``fused``: the product's fusion rule
  (:meth:`Pipeline.decide`) over 3 consecutive non-overlapping windows (12 s), in
  disjoint groups.  ``sequential``: :class:`SequentialTest` at the calibrated
  thresholds on consecutive non-overlapping windows, one test after the other along each
  probe recording, each started only where the probe holds its longest duration.
- A window the quality gate rejects scores ``-inf``: a false non-match for a genuine
  comparison, a correct reject for an impostor one; ``fta_rate`` is the fraction of
  probe windows the gate rejected.
- For each split the scores of all folds are pooled (one threshold for everyone, as in a
  deployment) and the rates computed; the report gives their mean over the splits and
  the range (``*_range``).  ``calibrated`` gives FMR and FNMR at the thresholds each fold's
  model calibrated on its own training subjects (not on the test scores), with a
  bootstrap CI over subjects.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nacf_core import calibration as cal
from nacf_core.config import CompleteOrNothing, read_text_file
from nacf_core.errors import InvalidArgument
from nacf_core.model import Model
from nacf_core.pipeline import Pipeline, Template, Windows
from nacf_core.sequential import SequentialTest
from nacf_core.training import (
    DEFAULTS,
    Block,
    BlockFeatures,
    block_features,
    block_label,
    fit_model_from_features,
    front_end_model,
    model_channels,
    naming,
)

__all__ = [
    "FUSED_WINDOWS",
    "MIN_TRAINING_SUBJECTS",
    "ManifestRow",
    "check_folds",
    "evaluate",
    "load_blocks",
    "plot_det",
    "read_manifest",
]

logger = logging.getLogger("nacf.evaluation")

#: Windows fused for the ``fused`` figures (3 × 4 s = 12 s).
FUSED_WINDOWS = 3


@dataclass(frozen=True)
class ManifestRow:
    subject: str
    recording: str
    role: str
    path: Path
    start_s: float | None = None
    stop_s: float | None = None


#: Largest manifest read (bytes): a few hundred thousand rows.
_MAX_MANIFEST_BYTES = 16 * 1024 * 1024


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """Parse a manifest; :class:`InvalidArgument` naming the line for anything wrong."""
    path = Path(path)
    text = read_text_file(path, "manifest", _MAX_MANIFEST_BYTES)
    try:
        return _parse_manifest(path, text)
    except csv.Error as exc:  # e.g. a field larger than the csv module's limit
        raise InvalidArgument(f"manifest {str(path)!r} is not valid CSV: {exc}.") from None


def _parse_manifest(path: Path, text: str) -> list[ManifestRow]:
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames:  # stripped like the values: 'subject, recording, role, path'
        reader.fieldnames = [f.strip() for f in reader.fieldnames]
    need = {"subject", "recording", "role", "path"}
    have = set(reader.fieldnames or [])
    if not need <= have:
        raise InvalidArgument(
            f"manifest {str(path)!r} must have the header subject,recording,role,path"
            f"[,start_s,stop_s]; it lacks {', '.join(sorted(need - have))}.")
    rows = []
    files: dict = {}  # what _check_file_use has seen
    for line, r in enumerate(reader, start=2):
        if None in r:  # the csv module files the fields past the header's under None
            raise InvalidArgument(
                f"manifest {str(path)!r} line {line} has {len(reader.fieldnames) + len(r[None])}"
                f" fields, but the header names {len(reader.fieldnames)} "
                f"({','.join(reader.fieldnames)}); quote a path that holds a comma, and name "
                "start_s,stop_s in the header to give a time range.")
        role = (r["role"] or "").strip()
        if role not in ("enroll", "probe"):
            raise InvalidArgument(
                f"manifest {str(path)!r} line {line}: role must be 'enroll' or 'probe', "
                f"got {role!r}.")
        rel = (r["path"] or "").strip()
        if not rel:
            raise InvalidArgument(f"manifest {str(path)!r} line {line}: empty path.")
        for key, what in (("subject", "name the person the recording is of"),
                          ("recording", "label it (e.g. the run or session)")):
            if not (r[key] or "").strip():  # unnamed rows would be pooled as one
                raise InvalidArgument(
                    f"manifest {str(path)!r} line {line}: the {key} is empty; {what}.")
        for key in ("subject", "recording", "path"):
            if any(ord(c) < 32 or ord(c) == 127 for c in r[key] or ""):
                raise InvalidArgument(f"manifest {str(path)!r} line {line}: {key} holds a "
                                      f"control character ({r[key]!r}).")

        def num(key, r=r, line=line):
            v = (r.get(key) or "").strip()
            if not v:
                return None
            try:
                x = float(v)
            except ValueError:
                x = math.nan
            if not (math.isfinite(x) and x >= 0):
                raise InvalidArgument(
                    f"manifest {str(path)!r} line {line}: {key} must be a number of seconds "
                    f">= 0, got {v!r}.")
            return x

        start_s, stop_s = num("start_s"), num("stop_s")
        if start_s is not None and stop_s is not None and not stop_s > start_s:
            raise InvalidArgument(f"manifest {str(path)!r} line {line}: stop_s ({stop_s:g}) "
                                  f"must be after start_s ({start_s:g}).")
        row = ManifestRow((r["subject"] or "").strip(), (r["recording"] or "").strip(),
                          role, (path.parent / rel), start_s, stop_s)
        _check_file_use(path, line, row, files)
        rows.append(row)
    if not rows:
        raise InvalidArgument(f"manifest {str(path)!r} has no rows.")
    for s in sorted({r.subject for r in rows}):
        mine = [r for r in rows if r.subject == s]
        enroll = {r.recording for r in mine if r.role == "enroll"}
        probe = {r.recording for r in mine if r.role == "probe"}
        if enroll & probe:
            raise InvalidArgument(
                f"manifest {str(path)!r}: subject {s} enrolls and probes on the same "
                f"recording(s) {', '.join(sorted(enroll & probe))}; use different recordings.")
    return rows


def _check_file_use(manifest: Path, line: int, row: ManifestRow, seen: dict) -> None:
    """A recording file belongs to one subject, is not both a subject's enrollment and its
    probe (whatever the labels and time ranges: the protocol never compares windows of
    one recording), and a row is not listed twice, nor a file in overlapping time ranges
    of one role (the comparisons of the windows they share would count twice). Files are
    compared by their real path."""
    where = f"manifest {str(manifest)!r} line {line}"
    file = os.path.realpath(row.path)
    key = (row.subject, row.role, file, row.start_s, row.stop_s)
    if key in seen:
        raise InvalidArgument(
            f"{where} repeats line {seen[key]} (subject {row.subject}, {row.role}, "
            f"{str(row.path)!r}): list each recording once.")
    seen[key] = line
    lo, hi = row.start_s or 0.0, math.inf if row.stop_s is None else row.stop_s
    for other_lo, other_hi, other_line in seen.setdefault(("ranges", key[:3]), []):
        if lo < other_hi and other_lo < hi:
            mine = _range(row.start_s, row.stop_s)
            raise InvalidArgument(
                f"{where}: subject {row.subject}'s {row.role} range {mine} of "
                f"{str(row.path)!r} overlaps line {other_line}'s "
                f"({_range(other_lo, other_hi)}): the windows they share would count "
                "twice; give disjoint ranges.")
    seen[("ranges", key[:3])].append((lo, hi, line))
    owner = seen.setdefault(("owner", file), row.subject)
    if owner != row.subject:
        raise InvalidArgument(
            f"{where}: file {str(row.path)!r} is listed for subjects {owner} and "
            f"{row.subject}; a recording is one person's.")
    other = "probe" if row.role == "enroll" else "enroll"
    if (row.subject, other, file) in seen:
        raise InvalidArgument(
            f"{where}: subject {row.subject} enrolls and probes on the same recording file "
            f"{str(row.path)!r}; use different recordings.")
    seen[(row.subject, row.role, file)] = line


def _range(start_s: float | None, stop_s: float | None) -> str:
    """``0-30 s``, ``30 s-end``, ``the whole file``."""
    start_s = start_s or 0.0
    if stop_s is None or stop_s == math.inf:
        return "the whole file" if not start_s else f"{start_s:g} s-end"
    return f"{start_s:g}-{stop_s:g} s"


def load_blocks(rows: Sequence[ManifestRow],
                progress: Callable[[], None] | None = None) -> list[Block]:
    """Read every recording of a manifest (``nacf_core.hardware.files.read_recording``)."""
    from nacf_core.hardware.files import read_recording

    blocks = []
    for r in rows:
        try:
            rec = read_recording(r.path, start_s=r.start_s, stop_s=r.stop_s)
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"cannot read {str(r.path)!r} (subject {r.subject}, "
                                  f"recording {r.recording}): {exc}") from exc
        blocks.append(Block(r.subject, r.role, rec.data, rec.sfreq, list(rec.ch_names),
                            r.recording))
        if progress:
            progress()
    return blocks


def _rates(gen: np.ndarray, imp: np.ndarray) -> dict[str, float]:
    return {
        "eer": cal.eer(gen, imp),
        "fnmr_at_fmr_0.01": cal.fnmr_at_fmr(gen, imp, 0.01),
        "fnmr_at_fmr_0.001": cal.fnmr_at_fmr(gen, imp, 0.001),
    }


class _SplitScores:
    """Scores of one split (all folds pooled)."""

    def __init__(self):
        self.single_g, self.single_i, self.single_gs = [], [], []
        self.fused_g, self.fused_i, self.fused_gs = [], [], []
        self.thr_single_g, self.thr_single_i = [], []  # decisions at calibrated thresholds
        self.thr_fused_g, self.thr_fused_i = [], []
        self.fta_rej = 0
        self.fta_tot = 0
        self.fused_seconds = []
        self.seq = {"g_acc": [], "i_acc": [], "g_sec": [], "i_sec": [], "gs": []}
        self.adapt_g, self.adapt_i = [], []


def _score_fold(pipe: Pipeline, test_blocks: Sequence[Block], out: _SplitScores,
                adapt: bool) -> None:
    m = pipe.model
    subjects = sorted({b.subject for b in test_blocks})
    templates: dict[str, Template] = {}
    for s in subjects:
        enroll = [b for b in test_blocks if b.subject == s and b.role == "enroll"]
        if not enroll:
            raise InvalidArgument(f"subject {s} has no enroll recording in the manifest.")
        windows = []
        for b in enroll:
            with naming(block_label(b)):
                windows.append(pipe.windows(b.samples, b.sfreq, b.ch_names))
        with naming(_enroll_label(s, enroll)):
            templates[s] = pipe.template_from_windows(windows)
    T = np.stack([templates[s].embedding for s in subjects]).astype(np.float64)
    thr1 = m.threshold_for(1)
    groups: dict[str, list] = {s: [] for s in subjects}  # fused groups in time order
    for b in test_blocks:
        if b.role != "probe":
            continue
        j = subjects.index(b.subject)
        # single: every window, model hop (2 s)
        with naming(block_label(b)):
            w = pipe.windows(b.samples, b.sfreq, b.ch_names)
        s = w.embeddings.astype(np.float64) @ T.T
        s[~w.accepted] = -np.inf
        out.single_g.append(s[:, j])
        out.single_gs.append(np.full(len(s), b.subject, dtype=object))
        out.single_i.append(np.delete(s, j, axis=1).ravel())
        out.fta_rej += int((~w.accepted).sum())
        out.fta_tot += int(w.n_windows)
        # non-overlapping windows for fusion and the sequential test
        ws = pipe.windows(b.samples, b.sfreq, b.ch_names, hop_s=m.window_s)
        n = ws.n_windows
        for a in range(0, n - FUSED_WINDOWS + 1, FUSED_WINDOWS):
            grp = ws.select(slice(a, a + FUSED_WINDOWS))
            row = []
            for k, subj in enumerate(subjects):
                d = pipe.decide(grp, templates[subj])
                sc = d.score if d.windows_used else -np.inf
                row.append(sc)
                (out.thr_fused_g if k == j else out.thr_fused_i).append(d.accepted)
            row = np.array(row)
            out.fused_g.append(row[j:j + 1])
            out.fused_gs.append(np.array([b.subject], dtype=object))
            out.fused_i.append(np.delete(row, j))
            out.fused_seconds.append(FUSED_WINDOWS * m.window_s)
        out.thr_single_g.append(s[:, j] >= thr1)
        out.thr_single_i.append(np.delete(s, j, axis=1).ravel() >= thr1)
        _sequential(pipe, ws, templates, subjects, j, b.subject, out)
        if adapt:
            groups[b.subject].extend(ws.select(slice(a, a + FUSED_WINDOWS))
                                     for a in range(0, n - FUSED_WINDOWS + 1, FUSED_WINDOWS))
    if adapt:
        _adaptation(pipe, groups, templates, subjects, out)


def _check_enrollable(front: Pipeline, blocks: Sequence[Block],
                      feats: Sequence[BlockFeatures]) -> None:
    """The :class:`FailedPrecondition` a subject's enrollment will raise in its fold, before
    any fold's model is fitted: the windows the gate accepts at the model's hop are those
    of the features (every fold's model keeps ``front``'s front end and gate)."""
    good: dict[str, int] = {}
    for b, f in zip(blocks, feats):
        if b.role == "enroll":
            good[b.subject] = good.get(b.subject, 0) + len(f.cov_hop)
    for s, n in sorted(good.items()):
        if n >= front.model.min_enroll_epochs:
            continue
        enroll = [b for b in blocks if b.subject == s and b.role == "enroll"]
        windows = []
        for b in enroll:  # the gate's verdicts, to say what it rejected (no embedding)
            _, q, acc, reasons, seconds, starts = front.epochs(b.samples, b.sfreq, b.ch_names)
            windows.append(Windows(np.zeros((len(acc), 1), dtype=np.float32), q, acc,
                                   reasons, seconds, starts, front.model.window_s))
        with naming(_enroll_label(s, enroll)):
            front.template_from_windows(windows)


def _enroll_label(subject: str, enroll: Sequence[Block]) -> str:
    """``subject S023 cannot enroll on recording R03``: an enrollment failure's subject."""
    recs = [b.recording for b in enroll if b.recording]
    on = f" on recording{'s' if len(recs) > 1 else ''} {', '.join(recs)}" if recs else ""
    return f"subject {subject} cannot enroll{on}"


def _sequential(pipe, ws, templates, subjects, j, subject, out) -> None:
    """Sequential tests one after the other along the probe, each started only where the
    probe holds the test's longest duration: a test cut short by the probe's end would
    count only when it decided early, the confident tests, and flatter the figures."""
    emb = ws.embeddings.astype(np.float64)
    n = ws.n_windows
    room = SequentialTest(pipe.model).max_windows
    for k, subj in enumerate(subjects):
        t = templates[subj].embedding.astype(np.float64)
        a = 0
        while a + room <= n:
            test = SequentialTest(pipe.model)
            acc_sum = np.zeros_like(t)
            cnt = 0
            i = a
            while i < n and not test.done:
                if ws.accepted[i]:
                    acc_sum += emb[i]
                    cnt += 1
                    f = acc_sum / np.linalg.norm(acc_sum)
                    test.update(float(f @ t))
                else:
                    test.update(None)
                i += 1
            if not test.done:  # pragma: no cover - it had room for max_windows windows
                break
            ok = test.decision == "accept"
            if k == j:
                out.seq["g_acc"].append(ok)
                out.seq["g_sec"].append(test.seconds)
                out.seq["gs"].append(subject)
            else:
                out.seq["i_acc"].append(ok)
                out.seq["i_sec"].append(test.seconds)
            a = i


def _adaptation(pipe, groups, templates, subjects, out) -> None:
    """Probes in time order (each subject's fused groups, recording after recording):
    a subject's confident accepts adapt its template.  Group ``a`` of a subject is scored
    against its own template as it stood before the update the group may cause, and
    against every other subject's template as it stood at the same time (after that
    subject's own first ``a`` groups): an impostor faces the adapted template, as in a
    deployment.  (Scoring impostors against the enrollment templates only measured the
    genuine side of adaptation.)"""
    states: dict[str, list[Template]] = {}
    gen: dict[str, list[float]] = {}
    for s in subjects:
        tpl = templates[s]
        states[s], gen[s] = [tpl], []
        for grp in groups[s]:
            d = pipe.decide(grp, tpl)
            gen[s].append(d.score if d.windows_used else -np.inf)
            tpl = pipe.adapt(tpl, d)
            states[s].append(tpl)
    for j, s in enumerate(subjects):
        for a, grp in enumerate(groups[s]):
            out.adapt_g.append(gen[s][a])
            for k, other in enumerate(subjects):
                if k != j:
                    t = states[other][min(a, len(states[other]) - 1)]
                    e = pipe.decide(grp, t)
                    out.adapt_i.append(e.score if e.windows_used else -np.inf)


def _summary(vals: list[dict]) -> dict:
    out = {}
    for key in vals[0]:
        xs = [v[key] for v in vals]
        if isinstance(xs[0], (int, np.integer)) and not isinstance(xs[0], bool):
            out[key] = int(xs[0]) if len(set(xs)) == 1 else int(round(float(np.mean(xs))))
        else:
            out[key] = float(np.mean(xs))
            if len(xs) > 1:
                out[key + "_range"] = [float(np.min(xs)), float(np.max(xs))]
    return out


#: Training subjects a fold's model needs: its thresholds are calibrated by cross-fitting
#: over them, 2 folds of 2 at least (:func:`nacf_core.training.cross_fit_scores`).
MIN_TRAINING_SUBJECTS = 4


def check_folds(n_subjects: int, folds: int, manifest: str | os.PathLike = "") -> None:
    """``InvalidArgument`` unless a ``folds``-fold split of ``n_subjects`` gives every fold
    2 test subjects (an impostor comparison needs another template) and leaves
    :data:`MIN_TRAINING_SUBJECTS` others to fit and calibrate the fold's model; the message
    says how many subjects that takes and which ``--folds`` would do."""
    def fits(n: int, k: int) -> bool:  # the largest fold holds ceil(n / k) subjects
        return 2 * k <= n and n - -(-n // k) >= MIN_TRAINING_SUBJECTS

    if fits(n_subjects, folds):
        return
    need = next(n for n in range(2 * folds, 2 * folds + 3 * MIN_TRAINING_SUBJECTS)
                if fits(n, folds))
    ok = [k for k in range(2, n_subjects // 2 + 1) if fits(n_subjects, k)]
    hint = ("add subjects, or evaluate a fitted model on these with --model" if not ok else
            f"use --folds {ok[0]}" if len(ok) == 1 else f"use --folds {ok[0]} to {ok[-1]}")
    raise InvalidArgument(
        f"the {folds}-fold evaluation over subjects needs at least {need} subjects (2 test "
        f"subjects per fold, {MIN_TRAINING_SUBJECTS} others to fit and calibrate its model), "
        f"but the manifest {str(manifest)!r} has {n_subjects}; {hint}.")


def evaluate(manifest: str | os.PathLike, *, channels: Sequence[str] | None = None,
             folds: int = 4, splits: int = 3, model: Model | None = None,
             backend: str | None = None, seed: int = 0, adapt: bool = False,
             progress: Callable[[int, int, str], None] | None = None,
             train_params: dict | None = None) -> dict:
    """Run the protocol of the module docstring on a manifest.

    Parameters
    ----------
    manifest : path
    channels : sequence of str, optional
        Channels to use (default: the 16-channel montage, or the model's channels).
    folds, splits : int
        k of the k-fold over subjects, and how many random fold assignments.
    model : Model, optional
        Evaluate this fitted model on every subject instead of k-fold fitting.
    adapt : bool
        Also measure template adaptation (``adaptation`` object of the report).
    progress : callable (done, total, stage), optional
    train_params : dict, optional
        Overrides of :data:`nacf_core.training.DEFAULTS`.

    Returns
    -------
    dict
        The JSON report: ``single``, ``fused``, ``sequential``, ``calibrated``, ``setup``
        (and ``adaptation`` when ``adapt``).
    """
    from nacf_core.channels import MONTAGE_16

    rows = read_manifest(manifest)
    subjects = sorted({r.subject for r in rows})
    enrolled = {r.subject for r in rows if r.role == "enroll"}
    unenrolled = sorted({r.subject for r in rows if r.role == "probe"} - enrolled)
    if unenrolled:  # before reading anything: it is found when the subject is scored
        raise InvalidArgument(
            f"subject(s) {', '.join(unenrolled)} have probe recordings but no enroll "
            f"recording in the manifest {str(manifest)!r}: add one, or leave them out.")
    if model is None or channels:
        model_channels(channels if channels else MONTAGE_16)  # before reading anything
    if model is None:
        check_folds(len(subjects), folds, manifest)
    elif len(subjects) < 2:  # every subject is enrolled (checked above)
        raise InvalidArgument(
            f"the evaluation needs at least 2 subjects (an impostor comparison is a probe "
            f"against another subject's template), but the manifest {str(manifest)!r} has "
            f"{len(subjects)} ({', '.join(subjects)}).")
    if splits < 1:
        raise InvalidArgument(f"'splits' must be >= 1, got {splits}.")
    # steps: each recording read; then with a model one scoring, else each recording's
    # features and each fold's fit (the fold is scored in the same step)
    total = len(rows) + (1 if model is not None else len(rows) + splits * folds)
    done = [0]

    def tick(stage: str) -> None:
        done[0] += 1
        if progress:
            progress(min(done[0], total), total, stage)

    blocks = load_blocks(rows, progress=lambda: tick("reading"))
    tp = dict(train_params or {})
    _check_probes(blocks, model.window_s if model is not None
                  else float(tp.get("window_s", DEFAULTS["window_s"])))
    if model is not None:
        chans = list(channels) if channels else list(model.ch_names)
        if channels and [c for c in chans] != list(model.ch_names):
            from nacf_core.channels import canonical_name
            if [canonical_name(c) for c in chans] != list(model.ch_names):
                raise InvalidArgument(
                    f"--channels {','.join(chans)} differ from the model's channels "
                    f"{','.join(model.ch_names)}.")
        trained_on = set(model.info.get("training", {}).get("subjects", []))
        overlap = sorted(trained_on & set(subjects))
        if overlap:
            raise InvalidArgument(
                f"the model was fitted on subject(s) {', '.join(overlap)} of this manifest: "
                "evaluating it on them would flatter it (open-set protocol).")
        pipe = Pipeline(model, backend=backend)
        sc = _SplitScores()
        _score_fold(pipe, blocks, sc, adapt)
        tick("scoring")
        per_split = [_split_metrics(sc, pipe.model)]
        models = [model]
        splits_used, folds_used = 1, 0
    else:
        chans = list(channels) if channels else list(MONTAGE_16)
        sfreq = blocks[0].sfreq
        front = Pipeline(front_end_model(chans, sfreq, name="eval", **tp), backend=backend)
        feats: list[BlockFeatures] = []
        for b in blocks:
            with naming(block_label(b)):
                feats.append(block_features(front, b))
            tick("features")
        _check_enrollable(front, blocks, feats)
        per_split, models = [], []
        for sp in range(splits):
            rng = np.random.default_rng(seed + sp)
            perm = [subjects[i] for i in rng.permutation(len(subjects))]
            sc = _SplitScores()
            for f in range(folds):
                test = set(perm[f::folds])
                train_feats = [x for x in feats if x.subject not in test]
                m = fit_model_from_features(front.model, train_feats, seed=seed, **tp)
                m.name = f"eval-split{sp}-fold{f}"
                models.append(m)
                pipe = Pipeline(m, backend=backend)
                _score_fold(pipe, [b for b in blocks if b.subject in test], sc, adapt)
                tick(f"split {sp + 1}/{splits}, fold {f + 1}/{folds}")
            per_split.append(_split_metrics(sc, models[-1]))
        splits_used, folds_used = splits, folds
    report = {
        "manifest": str(manifest),
        "setup": {
            "channels": list(models[0].ch_names), "n_subjects": len(subjects),
            "sfreq": models[0].sfreq, "window_s": models[0].window_s,
            "hop_s": models[0].hop_s, "band": list(models[0].band),
            "fused_windows": FUSED_WINDOWS, "folds": folds_used, "splits": splits_used,
            "target_fmr": models[0].target_fmr,
            "model": (models[0].version if model is not None else "k-fold: fitted per fold"),
            "features": models[0].info.get("features", ""),
            "embedding_dim": models[0].embedding_dim,
        },
    }
    for key in ("single", "fused", "sequential", "calibrated", "adaptation"):
        vals = [p[key] for p in per_split if key in p]
        if vals:
            report[key] = _summary(vals) if key != "calibrated" else _summary_nested(vals)
    report["_scores"] = per_split[-1]["_scores"]
    return report


def _check_probes(blocks: Sequence[Block], window_s: float) -> None:
    """``InvalidArgument`` unless some probe recording is long enough for the ``fused``
    figures (:data:`FUSED_WINDOWS` non-overlapping windows)."""
    seconds = [len(b.samples) / b.sfreq for b in blocks if b.role == "probe"]
    if not seconds:
        raise InvalidArgument("the manifest has no probe recording (role 'probe'): there "
                              "is nothing to compare with the templates.")
    need = FUSED_WINDOWS * window_s
    if max(seconds) < need:
        raise InvalidArgument(
            f"the fused figures need probe recordings of at least {need:g} s "
            f"({FUSED_WINDOWS} windows of {window_s:g} s); the longest probe here is "
            f"{max(seconds):.1f} s.")


def _summary_nested(vals: list[dict]) -> dict:
    return {k: _summary([v[k] for v in vals]) for k in vals[0]}


def _split_metrics(sc: _SplitScores, model: Model) -> dict:
    cat = np.concatenate
    sg, si = cat(sc.single_g), cat(sc.single_i)
    fg, fi = cat(sc.fused_g), cat(sc.fused_i)
    single = {**_rates(sg, si), "fta_rate": sc.fta_rej / max(sc.fta_tot, 1),
              "n_genuine": len(sg), "n_impostor": len(si)}
    fused = {**_rates(fg, fi), "mean_seconds": float(np.mean(sc.fused_seconds)),
             "n_genuine": len(fg), "n_impostor": len(fi)}
    def mean(xs):  # NaN when no sequential test ended (numpy warns on an empty mean)
        return float(np.mean(xs)) if len(xs) else float("nan")

    seq = {
        "fmr": mean(sc.seq["i_acc"]),
        "fnmr": 1.0 - mean(sc.seq["g_acc"]),
        "mean_seconds": mean(sc.seq["g_sec"] + sc.seq["i_sec"]),
        "mean_seconds_genuine": mean(sc.seq["g_sec"]),
        "mean_seconds_impostor": mean(sc.seq["i_sec"]),
        "n_genuine": len(sc.seq["g_acc"]), "n_impostor": len(sc.seq["i_acc"]),
    }
    calib = {}
    for name, g, i, gs in (("single", sc.thr_single_g, sc.thr_single_i, sc.single_gs),
                           ("fused", sc.thr_fused_g, sc.thr_fused_i, sc.fused_gs)):
        ga = cat([np.atleast_1d(x) for x in g]).astype(bool)
        ia = cat([np.atleast_1d(x) for x in i]).astype(bool)
        subj = cat(gs)
        fnmr, lo, hi = cal.bootstrap_fnmr(np.where(ga, 1.0, -1.0), subj, 0.0)
        calib[name] = {"fmr": float(ia.mean()), "fnmr": fnmr, "fnmr_ci_low": lo,
                       "fnmr_ci_high": hi, "target_fmr": model.target_fmr}
    out = {"single": single, "fused": fused, "sequential": seq, "calibrated": calib,
           "_scores": {"single": (sg, si), "fused": (fg, fi)}}
    if sc.adapt_g:
        ag, ai = np.array(sc.adapt_g), np.array(sc.adapt_i)
        out["adaptation"] = {**_rates(ag, ai), "eer_without": cal.eer(fg, fi)}
    return out


def plot_det(report: dict, path: str | os.PathLike, title: str = "") -> Path:
    """DET curves (FNMR against FMR, log axes) of the ``single`` and ``fused`` scores of
    the report's last split, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for key, label in (("single", "single 4-s window"),
                       ("fused", f"fused {FUSED_WINDOWS} windows")):
        g, i = report["_scores"][key]
        _, fmr, fnmr = cal.det_curve(g, i)
        floor = 0.5 / max(len(i), 1)
        ax.plot(np.maximum(fmr, floor), np.maximum(fnmr, 0.5 / len(g)),
                label=f"{label} (EER {cal.eer(g, i) * 100:.2f} %)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("false match rate")
    ax.set_ylabel("false non-match rate")
    ax.axvline(0.001, color="grey", lw=0.8, ls=":")
    ax.axvline(0.01, color="grey", lw=0.8, ls=":")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right")
    last = "\n(last fold split)" if report["setup"]["splits"] > 1 else ""
    ax.set_title((title or "DET") + last, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    try:  # the whole image, or the file as it was (a full disk, Ctrl-C)
        with CompleteOrNothing(path, binary=True, what="DET curve file") as fh:
            # the format from the name, as savefig(path) takes it (none: PNG)
            fig.savefig(fh, dpi=110, format=path.suffix[1:].lower() or None)
    finally:
        plt.close(fig)
    return path
