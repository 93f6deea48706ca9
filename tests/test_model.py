import io
import json
import zipfile

import numpy as np
import pytest

from nacf_core import model as model_module
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


def test_two_saves_to_one_path_do_not_share_a_temporary_file(tmp_path, monkeypatch):
    """Two `nacf train --out m.npz` at once wrote the same 'm.npz.tmp': the second
    truncated and rewrote the first's half-written bytes, renamed the file, and the first
    rename then failed (or renamed a mix of both models into place)."""
    path = tmp_path / "m.npz"
    a, b = Model.from_bytes(default_model(8).to_bytes()), default_model(16)
    real_replace = model_module.os.replace
    calls = []

    def replace(src, dst):  # the other process's save runs between write and rename
        calls.append(src)
        if len(calls) == 1:
            b.save(path)
        real_replace(src, dst)

    monkeypatch.setattr(model_module.os, "replace", replace)
    a.save(path)
    assert calls[0] != calls[1]
    assert Model.load(path).version == a.version  # the later rename wins, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


def test_save_refuses_a_model_that_would_not_load(tmp_path):
    """A model named with a tab (or a NaN threshold) was written, and Model.load then
    refused the file."""
    m = Model.from_bytes(default_model(8).to_bytes())
    m.name, m.checksum = "a\tb", ""
    with pytest.raises(InvalidArgument, match=r"refusing to write model .*'name' must be "
                                              "a printable string"):
        m.save(tmp_path / "m.npz")
    m.name, m.checksum, m.thresholds = "ok", "", m.thresholds * np.nan
    with pytest.raises(InvalidArgument, match="thresholds holds non-finite values"):
        m.save(tmp_path / "m.npz")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_keeps_the_old_model_and_leaves_no_temporary_file(tmp_path):
    """A write that fails midway (disk full: here the file-size limit) raised, but left a
    half-written 'm.npz.tmp' beside the model, which the next save reused."""
    from _fsize import run_with_file_size_limit

    path = tmp_path / "m.npz"
    default_model(8).save(path)
    old = path.read_bytes()
    out = run_with_file_size_limit(
        "from nacf_core.model import default_model\nm = default_model(16)",
        "try:\n"
        "    m.save(sys.argv[1])\n"
        "except OSError as exc:\n"
        "    print('failed', exc.errno)\n", 50000, str(path))
    assert out.stdout.startswith("failed"), out.stdout + out.stderr
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


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


# ------------------------------------------------------------------ wrong input, file level
def _npz(**entries) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **entries)
    return buf.getvalue()


def _with_meta(meta_bytes: bytes) -> bytes:
    """An archive whose ``meta`` is ``meta_bytes`` (checksum not matching: checked after)."""
    good = default_model(8).to_bytes()
    return _rewrite(good, meta=np.frombuffer(meta_bytes, np.uint8))


@pytest.mark.parametrize("meta, kind", [
    (b"[1]", "list"), (b'"x"', "str"), (b"5", "int"), (b"null", "NoneType"),
])
def test_meta_not_an_object(meta, kind):
    with pytest.raises(InvalidArgument, match=f"metadata is a JSON {kind}, not an object"):
        Model.from_bytes(_with_meta(meta), source="m.npz")


def test_meta_nested_too_deeply():
    with pytest.raises(InvalidArgument, match="nested too deeply"):
        Model.from_bytes(_with_meta(b"[" * 100_000 + b"]" * 100_000))
    with pytest.raises(InvalidArgument, match="metadata is not JSON"):
        Model.from_bytes(_with_meta(b"1" * 5000))  # beyond int()'s digit limit


def test_special_paths_are_refused(special_path, raised_without_blocking):
    exc = raised_without_blocking(lambda: Model.load(special_path))
    assert isinstance(exc, InvalidArgument), repr(exc)
    assert "expected a regular file" in str(exc) and str(special_path) in str(exc)


def test_size_limits(tmp_path, monkeypatch):
    good = default_model(8).to_bytes()
    monkeypatch.setattr(model_module, "MAX_MODEL_BYTES", len(good) - 1)
    p = tmp_path / "m.npz"
    p.write_bytes(good)
    with pytest.raises(InvalidArgument, match=f"larger than the limit of {len(good) - 1} bytes"):
        Model.load(p)
    # a small compressed archive whose member expands beyond the limit (a zip bomb)
    monkeypatch.setattr(model_module, "MAX_MODEL_BYTES", 1024 * 1024)
    with np.load(io.BytesIO(good), allow_pickle=False) as z:
        entries = {k: z[k] for k in z.files}
    buf = io.BytesIO()
    np.savez_compressed(buf, padding=np.zeros(2 * 1024 * 1024, np.uint8), **entries)
    assert len(buf.getvalue()) < 1024 * 1024
    with pytest.raises(InvalidArgument, match="bytes uncompressed"):
        Model.from_bytes(buf.getvalue())


def test_npy_header_declaring_a_huge_array():
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (10 ** 12,)})
    good = default_model(8).to_bytes()
    with np.load(io.BytesIO(good), allow_pickle=False) as z:
        entries = {k: z[k] for k in z.files}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, a in entries.items():
            if k == "thresholds":
                zf.writestr("thresholds.npy", header.getvalue() + b"\0" * 8)
            else:
                member = io.BytesIO()
                np.lib.format.write_array(member, a)
                zf.writestr(f"{k}.npy", member.getvalue())
    with pytest.raises(InvalidArgument, match="header declares 8000000000000 bytes"):
        Model.from_bytes(buf.getvalue())


# ------------------------------------------------------------------ wrong input, valid checksum
def _signed(meta_changes=None, **arrays) -> bytes:
    """The 8-channel model with ``meta`` fields changed (``KeyError``: removed) and arrays
    replaced, with a matching checksum (unkeyed SHA-256: anyone can recompute it)."""
    payload, arrs = default_model(8)._payload()
    meta = json.loads(payload)
    for k, v in (meta_changes or {}).items():
        if v is KeyError:
            meta.pop(k)
        else:
            meta[k] = v
    arrs = {**arrs, **arrays}
    mb = json.dumps(meta).encode()
    return _npz(meta=np.frombuffer(mb, np.uint8),
                checksum=np.frombuffer(Model._digest(mb, arrs).encode(), np.uint8), **arrs)


@pytest.mark.parametrize("changes, message", [
    ({"artifact_limits": []}, "'artifact_limits' must be an object"),
    ({"artifact_limits": "x"}, "'artifact_limits' must be an object"),
    ({"artifact_limits": {"bogus": 1.0}}, "'artifact_limits' must be an object with keys among"),
    ({"artifact_limits": {"rail_uv": 0}}, r"'artifact_limits.rail_uv' must be .* in \(0, "),
    ({"artifact_limits": {"rail_fraction": 2}}, r"'artifact_limits.rail_fraction' .* \[0, 1\]"),
    ({"artifact_limits": {"jump_uv": "big"}}, "'artifact_limits.jump_uv' must be a finite"),
    ({"band": [1]}, r"'band' must be a list \[l_freq, h_freq\]"),
    ({"band": "ab"}, "'band' must be a list"),
    ({"band": {"a": 1}}, "'band' must be a list"),
    ({"band": [40, 1]}, r"'band\[1\]' must be a finite number in \(40, 80\)"),
    ({"band": [1, 1e6]}, r"'band\[1\]' must be a finite number in \(1, 80\)"),
    ({"band": [0, 40]}, r"'band\[0\]' must be a finite number in \[0.01, 80\)"),
    ({"sfreq": -250}, r"'sfreq' must be a finite number in \[125, 1000\]"),
    # outside the pipeline's rates: at 100 kHz every input was resampled to it (20 s of
    # 16 channels took 900 MB to enroll); at 20 Hz nothing above 10 Hz was left
    ({"sfreq": 100000.0}, r"'sfreq' must be a finite number in \[125, 1000\]"),
    ({"sfreq": 20.0, "band": [1.0, 8.0]}, r"'sfreq' must be a finite number in \[125, 1000\]"),
    ({"sfreq": 0}, "'sfreq' must be a finite number"),
    ({"sfreq": "fast"}, "'sfreq' must be a finite number"),
    ({"sfreq": float("nan")}, "'sfreq' must be a finite number"),
    ({"sfreq": True}, "'sfreq' must be a finite number"),
    ({"sfreq": 10 ** 400}, "'sfreq' must be a finite number"),
    ({"sfreq": KeyError}, "field 'sfreq' is missing"),
    ({"window_s": 0}, "'window_s' must be a finite number"),
    ({"window_s": 0.001}, r"'window_s' must be a finite number in \[1, 20\]"),
    ({"hop_s": -1}, "'hop_s' must be a finite number"),
    ({"filter_order": 1e300}, r"'filter_order' must be an integer in \[1, 20\]"),
    ({"filter_order": 0}, "'filter_order' must be an integer"),
    ({"filter_order": 4.5}, "'filter_order' must be an integer"),
    ({"ch_names": "abcdefgh"}, "'ch_names' must be a list"),
    # nacf train fits 2 channels or more (a covariance of one channel is a variance)
    ({"ch_names": ["Fp1"]}, "'ch_names' must be a list of 2 to 256 channel names"),
    ({"ch_names": None}, "'ch_names' must be a list"),
    ({"ch_names": ["Fp1"] * 8}, "'ch_names' must not repeat a name"),
    ({"ch_names": ["Fp1", "Fp2", "C3", "C4", "P7", "P8", "O1", 5]}, r"'ch_names\[7\]' must be"),
    ({"ch_names": ["Fp1", "Fp2", "C3", "C4", "P7", "P8", "O1", "O\n2"]}, r"'ch_names\[7\]'"),
    # not EEG: every request failed INVALID_ARGUMENT ("Invalid channel name 'ECG' in
    # 'wanted'"), blaming the client for the model
    ({"ch_names": ["Fp1", "Fp2", "C3", "C4", "P7", "P8", "O1", "ECG"]},
     r"'ch_names\[7\]' must be an EEG electrode name .* got 'ECG'\.$"),
    ({"ch_names": ["Fp1", "Fp2", "C3", "C4", "P7", "P8", "O1", "Oz2"]},
     r"'ch_names\[7\]' must be an EEG electrode name"),
    # Fp1 twice under two spellings: the model's second channel read Fp1 again
    ({"ch_names": ["Fp1", "FP1", "C3", "C4", "P7", "P8", "O1", "O2"]},
     r"'ch_names\[1\]' must be an EEG electrode name .* got 'FP1' \(written 'Fp1'\)"),
    ({"name": ""}, "'name' must be a printable string"),
    ({"name": ["x"]}, "'name' must be a printable string"),
    ({"min_quality": 1.5}, r"'min_quality' must be a finite number in \[0, 1\]"),
    ({"min_enroll_epochs": -5}, "'min_enroll_epochs' must be an integer"),
    ({"target_fmr": 2.0}, r"'target_fmr' must be a finite number in \(0, 1\)"),
    ({"shrinkage": "nan"}, r"'shrinkage' must be a finite number in \[0, 1\)"),
    ({"tangent_eps": 0}, "'tangent_eps' must be a finite number"),
    ({"projection_reg": -1}, "'projection_reg' must be a finite number"),
    ({"sequential": [1, 2, 3]}, "'sequential' must be an object"),
    ({"sequential": {"alpha": 0.7}}, r"'sequential.alpha' must be a finite number in \(0, 0.5\)"),
    ({"sequential": {"alpha": 0.01, "beta": 0.02, "max_windows": 2, "mu_g": [0.5],
                     "sd_g": [0.1], "mu_i": [0.0], "sd_i": [0.2]}},
     r"'sequential.mu_g' must be a list of max_windows \(2\) numbers"),
    ({"sequential": {"alpha": 0.01, "beta": 0.02, "max_windows": 1, "mu_g": [0.5],
                     "sd_g": [0.0], "mu_i": [0.0], "sd_i": [0.2]}},
     r"'sequential.sd_g\[0\]' must be a finite number in \[0.001, 1\]"),
    ({"info": [[1, 2]]}, "'info' must be an object"),
    # nacf evaluate --model read these to refuse the model's own training subjects: an
    # AttributeError traceback, or "'int' object is not iterable"
    ({"info": {"training": "S001-S020"}}, "'info.training' must be an object"),
    ({"info": {"training": {"subjects": 5}}}, "'info.training.subjects' must be a list"),
    ({"info": {"training": {"subjects": ["S001", 2]}}},
     "'info.training.subjects' must be a list"),
    ({"format_version": "1"}, "format version '1'"),
    ({"format_version": True}, "format version True"),
])
def test_signed_meta_with_wrong_fields(changes, message):
    with pytest.raises(InvalidArgument, match=message) as e:
        Model.from_bytes(_signed(changes), source="evil.npz")
    assert "evil.npz" in str(e.value)


def test_signed_arrays_with_wrong_content():
    arrs = default_model(8)._payload()[1]
    comp, ref, mean = (arrs["projection_components"], arrs["tangent_reference"],
                       arrs["projection_mean"])
    asym = ref.copy()
    asym[0, 1] += 1.0
    cases = {
        "projection_components holds non-finite": {"projection_components": comp * np.nan},
        "tangent_reference holds non-finite": {"tangent_reference": ref * np.nan},
        "tangent_reference must be symmetric": {"tangent_reference": asym},
        "symmetric positive definite": {"tangent_reference": -ref},
        "do not fit": {"projection_components": comp[:, :0]},
        "projection_mean must hold floating-point numbers, got dtype complex128":
            {"projection_mean": mean + 1j},
        "thresholds must hold floating-point numbers": {"thresholds": np.array(["a"])},
        "thresholds must be a 1-D array": {"thresholds": np.zeros((2, 2))},
        r"thresholds must be cosine scores in \[-1, 1\]": {"thresholds": np.array([0.5, 3.0])},
    }
    for message, arrays in cases.items():
        with pytest.raises(InvalidArgument, match=message):
            Model.from_bytes(_signed(**arrays))


def test_signed_unchanged_model_still_loads():
    m = Model.from_bytes(_signed())
    assert m.ch_names == default_model(8).ch_names and m.band == default_model(8).band


# ------------------------------------------------------------------ loads, then fails in use
@pytest.mark.parametrize("changes, message", [
    # the band-pass's initial state could not be computed: Pipeline(model) raised
    # LinAlgError 'Singular matrix' after the model had loaded
    ({"band": [1e-9, 40.0]}, r"'band\[0\]' must be a finite number in \[0.01, 80\)"),
    ({"band": [1e-7, 40.0], "filter_order": 20}, r"'band\[0\]' must be a finite number"),
    # poles on or outside the unit circle: an unstable filter that blows up on any signal
    ({"sfreq": 125.0, "band": [30.0, 62.499999999999], "filter_order": 20},
     r"'band' \[30, 62.5\] with 'filter_order' 20 at 'sfreq' 125 Hz gives an unstable "
     r"band-pass"),
])
def test_band_pass_that_cannot_be_built_is_refused_at_load(changes, message):
    with pytest.raises(InvalidArgument, match=message) as e:
        Model.from_bytes(_signed(changes), source="evil.npz")
    assert "evil.npz" in str(e.value)


@pytest.mark.parametrize("band, order", [([0.01, 40.0], 4), ([1.0, 79.0], 4), ([0.5, 40.0], 8)])
def test_band_pass_within_the_rules_builds(band, order):
    from nacf_core.pipeline import Pipeline

    m = Model.from_bytes(_signed({"band": band, "filter_order": order}))
    Pipeline(m)  # the filter and its initial state compute


@pytest.mark.parametrize("hop_s", [1e-9, 1 / 160, 0.49])
def test_hop_much_shorter_than_the_window_is_refused(hop_s):
    # a one-sample hop loaded, and enrolling 60 s of 16 channels cut ~9000 overlapping
    # windows (~730 MB of float64 epochs)
    with pytest.raises(InvalidArgument,
                       match=r"'hop_s' must be a finite number in \[0.5, 4\], got .*: "
                             r"at least window_s / 8 \(4 s / 8\)") as e:
        Model.from_bytes(_signed({"hop_s": hop_s}), source="evil.npz")
    assert "evil.npz" in str(e.value)


def test_hop_of_an_eighth_of_the_window_loads():
    assert Model.from_bytes(_signed({"hop_s": 0.5})).hop_s == 0.5


@pytest.mark.parametrize("window_s, hop_s", [(3600.0, 1800.0), (20.5, 10.0), (0.9, 0.45),
                                             (0.05, 0.025)])
def test_window_outside_what_the_pipeline_and_server_use_is_refused(window_s, hop_s):
    """Windows of up to an hour loaded (one 16-channel window at 1000 Hz is 460 MB of
    float64; nacf serve then refused to start, every AuthenticateStream needing a whole
    window within stream_max_seconds), and so did windows of a few samples. nacf train
    fits 4-s windows."""
    with pytest.raises(InvalidArgument, match=r"'window_s' must be a finite number in "
                                              r"\[1, 20\], got ") as e:
        Model.from_bytes(_signed({"window_s": window_s, "hop_s": hop_s}), source="evil.npz")
    assert "evil.npz" in str(e.value)


@pytest.mark.parametrize("hop_s", [4.5, 8.0, 3600.0])
def test_hop_longer_than_the_window_is_refused(hop_s):
    """A hop beyond the window skipped signal between windows: with a 3600-s hop an
    enrollment got one window of any signal, and every enrollment failed the gate."""
    with pytest.raises(InvalidArgument, match=r"'hop_s' must be a finite number in "
                                              r"\[0.5, 4\], got .*, and at most window_s"):
        Model.from_bytes(_signed({"hop_s": hop_s}), source="evil.npz")


@pytest.mark.parametrize("window_s, hop_s", [(1.0, 0.125), (1.0, 1.0), (20.0, 20.0),
                                             (20.0, 2.5)])
def test_windows_at_the_bounds_load(window_s, hop_s):
    m = Model.from_bytes(_signed({"window_s": window_s, "hop_s": hop_s}))
    assert (m.window_s, m.hop_s) == (window_s, hop_s)


def test_a_model_file_without_a_checksum_is_refused_with_a_way_out(tmp_path):
    good = default_model(8).to_bytes()
    with np.load(io.BytesIO(good), allow_pickle=False) as z:
        entries = {k: z[k] for k in z.files if k != "checksum"}
    p = tmp_path / "old.npz"
    p.write_bytes(_npz(**entries))
    with pytest.raises(InvalidArgument, match=r"model file '.*old.npz' has no SHA-256 "
                                              r"checksum.*Refit it with `nacf train`"):
        Model.load(p)


@pytest.mark.parametrize("n", [8, 16])
@pytest.mark.parametrize("member", ["meta", "tangent_reference", "projection_mean",
                                   "projection_components", "thresholds"])
def test_shipped_model_with_damaged_numbers_in_a_well_formed_file_is_refused(
        tmp_path, n, member):
    """One bit of a number flipped in any member of a shipped model, the archive rebuilt
    around it (CRC-32s right, so zipfile reads it): the SHA-256 written at save catches
    it at load, naming the file."""
    data = default_model_path(n).read_bytes()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            raw = bytearray(zin.read(info))
            if info.filename == f"{member}.npy":
                if member == "meta":  # a digit of the window, still valid JSON
                    raw = raw.replace(b'"window_s": 4.0', b'"window_s": 5.0')
                else:
                    raw[-3] ^= 0x01  # a low bit of the last float64's exponent
            zout.writestr(info.filename, bytes(raw))
    p = tmp_path / "damaged.npz"
    p.write_bytes(out.getvalue())
    with pytest.raises(InvalidArgument, match=r"damaged.npz' is corrupt: SHA-256 checksum "
                                              "mismatch"):
        Model.load(p)


def _projection_cases():
    arrs = default_model(8)._payload()[1]
    comp, mean = arrs["projection_components"], arrs["projection_mean"]
    dup = comp.copy()
    dup[:, 1] = dup[:, 0]
    independent = "projection_components must have linearly independent columns"
    scale = r"projection_components must have singular values in \[1e-100, 1e\+100\]"
    return [
        # ZeroDivisionError from the embedding kernel when the pipeline was built: a
        # traceback from nacf serve and nacf evaluate
        ("zeros", {"projection_components": np.zeros_like(comp)}, independent),
        ("underflows", {"projection_components": comp * 1e-300}, scale),
        ("duplicate column", {"projection_components": dup}, independent),
        # every embedding overflowed to zeros: every score 0, every user refused
        ("overflows", {"projection_components": comp * 1e300}, scale),
        ("mean overflows", {"projection_mean": mean * 0 + 1e300},
         r"projection_mean must hold values within ±10000 \(a mean of tangent vectors\)"),
    ]


@pytest.mark.parametrize("label, arrays, message", _projection_cases(),
                         ids=[c[0] for c in _projection_cases()])
def test_degenerate_projection_is_refused_at_load(label, arrays, message):
    with pytest.raises(InvalidArgument, match=message) as e:
        Model.from_bytes(_signed(**arrays), source="evil.npz")
    assert "evil.npz" in str(e.value)


def _sequential(**rows):
    seq = dict(default_model(8).sequential)
    n = seq["max_windows"]
    seq.update({k: [v] * n for k, v in rows.items()})
    return {"sequential": seq}


@pytest.mark.parametrize("changes, message", [
    # 1 / sd**2 overflowed: the log-likelihood ratio was -inf or NaN, every stream rejected
    (_sequential(sd_g=1e-300), r"'sequential.sd_g\[0\]' must be a finite number in \[0.001, 1\]"),
    (_sequential(sd_i=1e-200), r"'sequential.sd_i\[0\]' must be a finite number in \[0.001, 1\]"),
    # means and spreads of cosine scores, which lie in [-1, 1]
    (_sequential(sd_i=5.0), r"'sequential.sd_i\[0\]' must be a finite number in \[0.001, 1\]"),
    (_sequential(mu_g=1e9), r"'sequential.mu_g\[0\]' must be a finite number in \[-1, 1\]"),
    (_sequential(mu_i=-3.0), r"'sequential.mu_i\[0\]' must be a finite number in \[-1, 1\]"),
])
def test_sequential_parameters_out_of_the_scores_range(changes, message):
    with pytest.raises(InvalidArgument, match=message) as e:
        Model.from_bytes(_signed(changes), source="evil.npz")
    assert "evil.npz" in str(e.value)


@pytest.mark.parametrize("changes", [
    _sequential(mu_g=0.02, mu_i=0.8),    # the two distributions swapped
    _sequential(mu_g=0.3, mu_i=0.3),     # no separation at all
])
def test_sequential_parameters_with_genuine_scores_not_above_impostor_ones(changes):
    """Sequential-test parameters whose genuine mean is not above the impostor mean
    (swapped, or a fit that separated nothing) loaded without a word: the log-likelihood
    ratio then falls as the score rises, so a perfect genuine score never accepted early
    and every AuthenticateStream waited for its maximum; they are refused, naming the
    row."""
    with pytest.raises(InvalidArgument, match=r"'sequential.mu_g\[0\]' \((0.3|0.02)\) must be "
                       r"above 'sequential.mu_i\[0\]'") as e:
        Model.from_bytes(_signed(changes), source="evil.npz")
    assert "evil.npz" in str(e.value)
