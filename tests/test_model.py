import io
import json
import zipfile

import numpy as np
import pytest

from nacf_core.channels import MONTAGE_8, MONTAGE_16
from nacf_core.errors import InvalidArgument
from nacf_core.model import FORMAT_VERSION, Model, default_model, default_model_path


@pytest.mark.parametrize("n, montage", [(16, MONTAGE_16), (8, MONTAGE_8)])
def test_default_models(n, montage):
    m = default_model(n)
    assert m.ch_names == list(montage)
    assert m.sfreq == 160.0 and m.window_s == 4.0
    assert m.version.startswith(f"eegmmidb-{n}ch-")
    # fitted on S001-S020 only: S021-S024 are the demo's people
    subjects = m.info["training"]["subjects"]
    assert subjects == [f"S{i:03d}" for i in range(1, 21)]
    assert "Schalk" in m.info["attribution"] and "Goldberger" in m.info["attribution"]
    assert m.embedding_dim == m.projection.components_.shape[1] > 0
    assert np.all(np.isfinite(m.thresholds)) and len(m.thresholds) == m.max_windows
    assert m.sequential["alpha"] == m.target_fmr == 0.001
    assert default_model(n) is m  # cached


def test_default_model_bad_montage():
    with pytest.raises(InvalidArgument, match="8, 16"):
        default_model(12)


def test_roundtrip(tmp_path):
    m = default_model(8)
    p = m.save(tmp_path / "m.npz")
    m2 = Model.load(p)
    assert m2.version == m.version
    assert m2.ch_names == m.ch_names and m2.band == m.band
    np.testing.assert_array_equal(m2.projection.components_, m.projection.components_)
    np.testing.assert_array_equal(m2.tangent.reference_, m.tangent.reference_)
    np.testing.assert_array_equal(m2.thresholds, m.thresholds)
    assert m2.sequential == m.sequential and m2.info == m.info


def test_version_changes_with_content():
    m = Model.from_bytes(default_model(8).to_bytes())
    v = m.version
    m.thresholds = m.thresholds + 0.01
    m.checksum = ""
    assert m.version != v and m.version.startswith("eegmmidb-8ch-")


def _rewrite(data: bytes, **replace) -> bytes:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        entries = {k: z[k] for k in z.files}
    entries.update(replace)
    buf = io.BytesIO()
    np.savez(buf, **entries)
    return buf.getvalue()


def test_corrupt_and_mismatched_files(tmp_path):
    good = default_model(8).to_bytes()
    cases = {
        "garbage.npz": (b"not a model at all", "not a readable .npz"),
        "truncated.npz": (good[: len(good) // 2], "not a readable .npz"),
        "empty.npz": (b"", "not a readable .npz"),
    }
    # a flipped coefficient: checksum mismatch
    with np.load(io.BytesIO(good), allow_pickle=False) as z:
        comp = z["projection_components"].copy()
        meta = json.loads(z["meta"].tobytes())
    comp[0, 0] += 1e-6
    cases["edited.npz"] = (_rewrite(good, projection_components=comp), "checksum mismatch")
    meta["format_version"] = FORMAT_VERSION + 1
    cases["future.npz"] = (_rewrite(good, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8)),
                           "format version")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("x.npy", b"")
    cases["other.npz"] = (buf.getvalue(), "not a")
    for name, (data, message) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(InvalidArgument, match=message) as e:
            Model.load(p)
        assert name in str(e.value)
    with pytest.raises(InvalidArgument, match="cannot read"):
        Model.load(tmp_path / "missing.npz")


def test_inconsistent_arrays_are_refused():
    m = Model.from_bytes(default_model(8).to_bytes())
    m.tangent.reference_ = np.eye(5)
    m.checksum = ""
    with pytest.raises(InvalidArgument, match="inconsistent"):
        Model.from_bytes(m.to_bytes())


def test_default_model_path_exists():
    assert default_model_path(16).is_file() and default_model_path(8).is_file()
