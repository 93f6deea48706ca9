"""Fitting a population model (what ``nacf train`` runs).

:func:`fit_model` takes labelled signal blocks (subject, role, samples, sfreq,
ch_names), runs them through the product's own front end (:meth:`Pipeline.epochs`:
channel selection, resampling, band-pass, windows, quality gate), and fits

1. the tangent-space reference and the within-subject whitening
   (:mod:`nacf_core.features`) on every accepted window of every block — both roles, so
   the within-subject covariance sees how a person's windows vary *between recordings*,
   the variation verification has to tolerate;
2. the thresholds and the sequential test by cross-fitting (``inner_folds``-fold over
   the subjects): for each fold the features are refitted on the other subjects, the
   fold's subjects are enrolled on their ``enroll`` blocks and probed with their
   ``probe`` blocks (consecutive non-overlapping windows, fused 1..``max_windows`` at a
   time), giving out-of-sample genuine and impostor scores
   (:mod:`nacf_core.calibration`, :mod:`nacf_core.sequential`);
3. the final features on all subjects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np

from nacf_core import calibration as cal
from nacf_core.channels import canonical_name
from nacf_core.errors import FailedPrecondition, InvalidArgument
from nacf_core.features import Covariances, TangentSpace, WithinClassWhitening, l2_normalize
from nacf_core.kernels import ArtifactLimits
from nacf_core.model import Model, check_windows
from nacf_core.pipeline import Pipeline
from nacf_core.sequential import fit_sequential

__all__ = [
    "DEFAULTS",
    "Block",
    "BlockFeatures",
    "FeatureModel",
    "block_features",
    "cross_fit_scores",
    "fit_features",
    "fit_model",
    "fit_model_from_features",
    "front_end_model",
    "fused_sequences",
    "model_channels",
    "naming",
]

logger = logging.getLogger("nacf.training")

#: Front-end and fitting defaults of ``nacf train``.  The gate is loose on purpose: it
#: rejects windows that are broken (non-finite, railed, flat, over 2000 µV peak-to-peak,
#: a 500 µV step), not windows with blinks or muscle; those the within-subject whitening
#: learns to discount, and every rejected window is a failure to acquire.  (On EEGMMIDB,
#: 16 channels 1-40 Hz, 10 % of 4-s windows exceed 1000 µV peak-to-peak on some channel,
#: mostly frontal eye movements; the kernels' default 500 µV rejected 42 % of them.)
DEFAULTS = dict(
    window_s=4.0, hop_s=2.0, band=(1.0, 40.0), filter_order=4, min_quality=0.2,
    peak_to_peak_uv=2000.0, jump_uv=500.0,
    min_enroll_epochs=10, shrinkage=0.01, reg=1e-3, max_components=None,
    target_fmr=cal.DEFAULT_TARGET_FMR, max_windows=5, beta=0.02, inner_folds=4,
)


@dataclass
class Block:
    """One labelled recording (or a time range of one)."""

    subject: str
    role: str  # "enroll" or "probe"
    samples: np.ndarray  # (n_times, n_channels) µV
    sfreq: float
    ch_names: list[str]
    recording: str = ""


@contextmanager
def naming(what: str) -> Iterator[None]:
    """An :class:`InvalidArgument` or :class:`FailedPrecondition` raised inside (the
    pipeline refusing a block: too short, channels missing, too few good windows) says
    ``what`` it was about first, e.g. ``subject S022, probe recording R07``: in a manifest
    of tens of recordings, the pipeline's own message names none."""
    try:
        yield
    except FailedPrecondition as exc:
        raise FailedPrecondition(f"{what}: {exc}") from exc
    except InvalidArgument as exc:
        raise InvalidArgument(f"{what}: {exc}") from exc


def block_label(block: Block) -> str:
    """``subject S022, probe recording R07``: a block as :func:`naming` names it."""
    return (f"subject {block.subject}, {block.role} recording {block.recording}"
            if block.recording else f"subject {block.subject}, {block.role} block")


def model_channels(ch_names: Sequence[str]) -> list[str]:
    """The canonical names of a model's channels; ``InvalidArgument`` for a name that is
    not an EEG electrode, an electrode named twice, or fewer than 2 channels."""
    names = []
    for c in ch_names:
        cn = canonical_name(c)
        if cn is None:
            raise InvalidArgument(f"channel {c!r} is not an EEG electrode name.")
        names.append(cn)
    if len(set(names)) != len(names):
        raise InvalidArgument(f"channels named twice: {', '.join(names)}.")
    if len(names) < 2:
        raise InvalidArgument(f"a model needs at least 2 channels, got {len(names)}.")
    return names


def front_end_model(ch_names: Sequence[str], sfreq: float, *, name: str = "unfitted",
                    **params) -> Model:
    """An unfitted :class:`Model` carrying only the front-end parameters."""
    p = {**DEFAULTS, **params}
    names = model_channels(ch_names)
    try:  # before any recording is read: Model.save would refuse them after the fit
        check_windows(*(float(v) if isinstance(v, (np.integer, np.floating)) else v
                        for v in (p["window_s"], p["hop_s"])))
    except ValueError as exc:
        raise InvalidArgument(f"{exc}.") from None
    return Model(
        name=name, sfreq=float(sfreq), ch_names=names, window_s=float(p["window_s"]),
        hop_s=float(p["hop_s"]), band=tuple(float(b) for b in p["band"]),
        filter_order=int(p["filter_order"]),
        artifact_limits=asdict(ArtifactLimits(peak_to_peak_uv=float(p["peak_to_peak_uv"]),
                                              jump_uv=float(p["jump_uv"]))),
        min_quality=float(p["min_quality"]), min_enroll_epochs=int(p["min_enroll_epochs"]),
        covariances=Covariances(shrinkage=float(p["shrinkage"])), tangent=TangentSpace(),
        projection=WithinClassWhitening(n_components=p["max_components"], reg=float(p["reg"])),
        thresholds=np.zeros(int(p["max_windows"])), target_fmr=float(p["target_fmr"]),
    )


@dataclass
class BlockFeatures:
    """Covariances of one block: every ``hop_s`` (accepted only) and the consecutive
    non-overlapping windows (all, with the gate's mask)."""

    subject: str
    role: str
    cov_hop: np.ndarray  # (n_accepted, c, c)
    cov_seq: np.ndarray  # (n_seq, c, c); rejected windows are identity
    seq_accepted: np.ndarray  # (n_seq,) bool


def block_features(front: Pipeline, block: Block) -> BlockFeatures:
    """Run the front end on one block and compute its window covariances."""
    m = front.model
    cov = m.covariances
    ep, _, acc, _, _, _ = front.epochs(block.samples, block.sfreq, block.ch_names, m.hop_s)
    cov_hop = cov.transform(ep[acc]) if acc.any() else np.zeros((0, m.n_channels, m.n_channels))
    ep2, _, acc2, _, _, _ = front.epochs(block.samples, block.sfreq, block.ch_names, m.window_s)
    cov_seq = np.broadcast_to(np.eye(m.n_channels), (len(acc2), m.n_channels, m.n_channels)).copy()
    if acc2.any():
        cov_seq[acc2] = cov.transform(ep2[acc2])
    return BlockFeatures(block.subject, block.role, cov_hop, cov_seq, acc2)


@dataclass
class FeatureModel:
    tangent: TangentSpace
    projection: WithinClassWhitening

    def embed(self, covs: np.ndarray) -> np.ndarray:
        if len(covs) == 0:
            return np.zeros((0, self.projection.n_components_), dtype=np.float32)
        return l2_normalize(self.projection.transform(self.tangent.transform(covs)))


def fit_features(feats: Sequence[BlockFeatures], shrinkage: float, reg: float,
                 max_components: int | None) -> FeatureModel:
    """Tangent reference and within-subject whitening on the accepted windows of ``feats``."""
    covs = np.concatenate([f.cov_hop for f in feats])
    y = np.concatenate([[f.subject] * len(f.cov_hop) for f in feats])
    if len(np.unique(y)) < 2:
        raise InvalidArgument("fitting a model needs good windows of at least 2 subjects.")
    ts = TangentSpace().fit(covs)
    x = ts.transform(covs)
    n_comp = max_components
    if n_comp is None:  # a covariance of k dims needs well over k samples: keep <= n/10
        n_comp = max(2, len(x) // 10)
    proj = WithinClassWhitening(n_components=n_comp, reg=reg).fit(x, y)
    return FeatureModel(ts, proj)


def _templates(fm: FeatureModel, feats: Sequence[BlockFeatures], subjects: list[str]):
    out = {}
    for s in subjects:
        e = [fm.embed(f.cov_hop) for f in feats if f.subject == s and f.role == "enroll"]
        e = np.concatenate(e) if e else np.zeros((0, 1))
        if len(e):
            out[s] = l2_normalize(e.astype(np.float64).mean(axis=0))
    return out


def fused_sequences(emb: np.ndarray, accepted: np.ndarray, n: int) -> np.ndarray:
    """Fused embeddings of every run of ``n`` consecutive windows (NaN row when none of
    the ``n`` passed the gate): shape (n_seq - n + 1, d)."""
    k = len(accepted) - n + 1
    if k <= 0:
        return np.zeros((0, emb.shape[1]))
    w = accepted.astype(np.float64)
    cs = np.vstack([np.zeros((1, emb.shape[1])), np.cumsum(emb * w[:, None], axis=0)])
    cn = np.concatenate([[0.0], np.cumsum(w)])
    sums = cs[n:] - cs[:-n]
    cnt = cn[n:] - cn[:-n]
    out = np.full_like(sums, np.nan)
    ok = cnt > 0
    out[ok] = l2_normalize(sums[ok] / cnt[ok, None])
    return out


def cross_fit_scores(feats: Sequence[BlockFeatures], *, folds: int, max_windows: int,
                     shrinkage: float, reg: float, max_components: int | None, seed: int = 0,
                     progress: Callable[[], None] | None = None):
    """Out-of-sample fused scores per number of windows.

    Returns
    -------
    genuine, impostor : dict of int to ndarray
        Scores for ``n`` = 1..max_windows (``-inf`` where the gate rejected all ``n``).
    genuine_subjects : dict of int to ndarray
    """
    subjects = sorted({f.subject for f in feats})
    rng = np.random.default_rng(seed)
    perm = [subjects[i] for i in rng.permutation(len(subjects))]
    folds = int(min(folds, len(subjects) // 2))
    if folds < 2:
        raise InvalidArgument(
            f"calibration needs at least 4 subjects (2 folds of 2), got {len(subjects)}.")
    gen = {n: [] for n in range(1, max_windows + 1)}
    imp = {n: [] for n in range(1, max_windows + 1)}
    gsub = {n: [] for n in range(1, max_windows + 1)}
    for f in range(folds):
        test = perm[f::folds]
        train = [f_ for f_ in feats if f_.subject not in test]
        fm = fit_features(train, shrinkage, reg, max_components)
        tpl = _templates(fm, feats, test)
        ids = [s for s in test if s in tpl]
        T = np.stack([tpl[s] for s in ids]) if ids else np.zeros((0, 1))
        for b in feats:
            if b.subject not in tpl or b.role != "probe":
                continue
            emb = fm.embed(b.cov_seq).astype(np.float64)
            j = ids.index(b.subject)
            for n in range(1, max_windows + 1):
                fused = fused_sequences(emb, b.seq_accepted, n)
                if not len(fused):
                    continue
                s = np.nan_to_num(fused @ T.T, nan=-np.inf)
                gen[n].append(s[:, j])
                gsub[n].append(np.full(len(s), b.subject, dtype=object))
                imp[n].append(np.delete(s, j, axis=1).ravel())
        if progress:
            progress()
    def cat(d):
        return {n: (np.concatenate(v) if v else np.zeros(0)) for n, v in d.items()}

    return cat(gen), cat(imp), cat(gsub)


def fit_model(blocks: Sequence[Block], *, ch_names: Sequence[str], name: str,
              sfreq: float | None = None, backend: str | None = None, seed: int = 0,
              info: dict | None = None, progress: Callable[[str], None] | None = None,
              **params) -> Model:
    """Fit and calibrate a model on labelled blocks (see the module docstring).

    Parameters
    ----------
    blocks : sequence of Block
        Every subject needs ``enroll`` and ``probe`` blocks for the calibration.
    ch_names : sequence of str
        The model's channels (any spelling :func:`canonical_name` understands).
    name : str
        Model name; the version is ``<name>-<checksum prefix>``.
    sfreq : float, optional
        Working rate (default: the rate of the first block).
    **params
        Overrides of :data:`DEFAULTS`.
    """
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown parameter(s) {', '.join(sorted(unknown))}; "
                        f"allowed: {', '.join(DEFAULTS)}.")
    for key in ("target_fmr", "beta"):  # the sequential test's alpha and beta
        v = params.get(key, DEFAULTS[key])
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                or not 0.0 < float(v) < 0.5:
            raise InvalidArgument(f"{key!r} must be in (0, 0.5), got {v!r}.")
    blocks = list(blocks)
    if not blocks:
        raise InvalidArgument("no blocks to fit a model on.")
    sfreq = float(blocks[0].sfreq if sfreq is None else sfreq)
    front = Pipeline(front_end_model(ch_names, sfreq, name=name, **params), backend=backend)
    say = progress or (lambda msg: None)
    feats = []
    for b in blocks:
        if b.role not in ("enroll", "probe"):
            raise InvalidArgument(f"block role must be 'enroll' or 'probe', got {b.role!r}.")
        with naming(block_label(b)):
            feats.append(block_features(front, b))
        say("features")
    info = {**(info or {}), "recordings": sorted({b.recording for b in blocks if b.recording})}
    return fit_model_from_features(front.model, feats, seed=seed, info=info, progress=say,
                                   **params)


def fit_model_from_features(front_model: Model, feats: Sequence[BlockFeatures], *,
                            seed: int = 0, info: dict | None = None,
                            progress: Callable[[str], None] | None = None,
                            **params) -> Model:
    """:func:`fit_model` after the front end: ``feats`` from :func:`block_features` run
    with ``front_model`` (a fresh copy of it is fitted and returned)."""
    import copy

    p = {**DEFAULTS, **params}
    say = progress or (lambda msg: None)
    kw = dict(shrinkage=float(p["shrinkage"]), reg=float(p["reg"]),
              max_components=p["max_components"])
    mw = int(p["max_windows"])
    gen, imp, gsub = cross_fit_scores(feats, folds=int(p["inner_folds"]), max_windows=mw,
                                      seed=seed, progress=lambda: say("calibration"), **kw)
    _check_calibration_scores(front_model, feats, gen, imp, mw)
    target = float(p["target_fmr"])
    thresholds = np.array([cal.threshold_at_fmr(imp[n], target) for n in range(1, mw + 1)])
    calib = {}
    for n in sorted({1, min(3, mw), mw}):
        c = cal.calibrate(gen[n], imp[n], gsub[n], target, seed=seed)
        c.threshold = float(thresholds[n - 1])
        c.fmr, _ = cal.rates_at(gen[n], imp[n], c.threshold)
        c.fnmr, lo, hi = cal.bootstrap_fnmr(gen[n], gsub[n], c.threshold, seed=seed)
        c.fnmr_ci = (lo, hi)
        c.method = ("cross-fitted (%d-fold over training subjects) empirical quantile of "
                    "out-of-fold impostor scores of %d fused window(s); FNMR 95%% percentile "
                    "bootstrap over subjects" % (int(p["inner_folds"]), n))
        calib[str(n)] = c.as_dict()
    seq = fit_sequential(gen, imp, alpha=target, beta=float(p["beta"]), max_windows=mw)
    fm = fit_features(feats, **kw)
    model = copy.copy(front_model)
    model.tangent, model.projection = fm.tangent, fm.projection
    model.thresholds = thresholds
    model.sequential = seq
    info = dict(info or {})
    subjects = sorted({f.subject for f in feats})
    model.info = {
        "training": {"subjects": subjects, "n_blocks": len(feats),
                     "n_windows": int(sum(len(f.cov_hop) for f in feats)),
                     "recordings": info.pop("recordings", [])},
        "calibration": calib,
        "features": "covariance (shrinkage %g) -> tangent space at the log-Euclidean mean -> "
                    "PCA (%d) + within-subject whitening -> L2" % (
                        float(p["shrinkage"]), fm.projection.n_components_),
        **info,
    }
    model.checksum = ""
    logger.debug("fitted model %s on %d subjects", model.version, len(subjects))
    return model


def _check_calibration_scores(front_model: Model, feats: Sequence[BlockFeatures],
                              gen: dict, imp: dict, max_windows: int) -> None:
    """``InvalidArgument`` saying what the manifest lacks when some fusion length 1..
    ``max_windows`` got no genuine or no impostor calibration score."""
    missing = [n for n in range(1, max_windows + 1) if not len(gen[n]) or not len(imp[n])]
    if not missing:
        return
    probes = [len(f.seq_accepted) for f in feats if f.role == "probe"]
    w = front_model.window_s
    if not probes:
        raise InvalidArgument(
            "there is no probe recording: calibrating the thresholds needs a probe "
            "recording (role 'probe', a recording other than the enrollment's) of each "
            "subject.")
    enrolled = {f.subject for f in feats if f.role == "enroll"}
    probed = {f.subject for f in feats if f.role == "probe"}
    if not enrolled & probed:
        only = f"{len(probed)} have probes only" + (
            f", {len(enrolled)} enroll recordings only" if enrolled else "")
        raise InvalidArgument(
            f"no subject has both an enroll and a probe recording ({only}): calibrating the "
            "thresholds enrolls each subject on its enroll recordings and scores probe "
            "recordings against those templates.")
    raise InvalidArgument(
        f"calibrating the thresholds of 1 to {max_windows} fused windows needs probe "
        f"recordings of at least {max_windows * w:g} s ({max_windows} windows of {w:g} s) "
        f"of subjects that also have an enroll recording; the longest probe here gives "
        f"{max(probes)} window(s), and no calibration score was left for "
        f"{', '.join(map(str, missing))} window(s).")
