"""Scan validation, readers and writers: every bad input is a ScanError that says what to fix."""

from __future__ import annotations

import bz2
import io

import h5py
import numpy as np
import pytest

from ptychodus_pinn.engine.data import ReadOptions, Scan, ScanError, load_scan, save_scan
from ptychodus_pinn.engine.simulate import simulate_scan, soft_disk_probe


def make_scan(**changes):
    values = {
        "patterns": np.ones((4, 32, 32), np.float32),
        "positions_yx_px": np.array([[20.0, 20.0], [20.0, 24.0], [24.0, 20.0], [24.0, 24.0]]),
        "probe": soft_disk_probe(32, 8),
        "object_shape": (48, 48),
    }
    values.update(changes)
    return Scan(**values)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"patterns": np.full((4, 32, 32), np.nan, np.float32)}, "NaN or infinite counts"),
        ({"patterns": -np.ones((4, 32, 32), np.float32)}, "negative counts"),
        ({"patterns": np.zeros((4, 32, 32), np.float32)}, "all zero"),
        ({"patterns": np.ones((4, 32, 30), np.float32)}, "must be square"),
        ({"patterns": np.ones((4, 48, 48), np.float32)}, "N=48 is not supported"),
        ({"patterns": np.ones((0, 32, 32), np.float32)}, "empty"),
        ({"patterns": np.ones((3, 32, 32), np.float32)}, "3 patterns but 4 positions"),
        ({"positions_yx_px": np.array([[20.0, 20.0], [20.0, 24.0], [24.0, 20.0], [24.0, 90.0]])}, "off the 48x48 object grid"),
        ({"probe": np.zeros((32, 32), np.complex64)}, "probe is zero"),
        ({"probe": np.full((32, 32), np.nan, np.complex64)}, "NaN"),
        ({"probe": np.ones((64, 64), np.complex64)}, "probe has shape"),
        ({"bad_pixels": np.zeros((16, 16), bool)}, "bad-pixel mask has shape"),
    ],
)
def test_bad_scans_are_refused_with_a_clear_message(changes, fragment):
    with pytest.raises(ScanError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        make_scan(**changes)


def test_integer_and_memory_mapped_patterns_become_float32(tmp_path):
    counts = (np.arange(4 * 32 * 32) % 7).reshape(4, 32, 32).astype(np.uint16)
    assert make_scan(patterns=counts).patterns.dtype == np.float32
    np.save(tmp_path / "counts.npy", counts.astype(np.uint32))
    mapped = np.load(tmp_path / "counts.npy", mmap_mode="r")
    scan = make_scan(patterns=mapped)
    assert scan.patterns.dtype == np.float32 and not isinstance(scan.patterns, np.memmap)
    np.testing.assert_array_equal(scan.patterns, counts)


def test_single_and_duplicate_positions_are_accepted():
    single = make_scan(patterns=np.ones((1, 32, 32), np.float32), positions_yx_px=np.array([[20.0, 20.0]]))
    assert single.count == 1
    duplicate = make_scan(positions_yx_px=np.array([[20.0, 20.0]] * 4))
    assert duplicate.count == 4


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_scans_round_trip_through_files(tmp_path, suffix):
    scan = simulate_scan("lines", photons=1e4, n_positions=36, N=32, seed=1, bad_pixel_fraction=0.01)
    path = save_scan(scan, tmp_path / f"scan with spaces é{suffix}")
    loaded = load_scan(path)
    np.testing.assert_array_equal(loaded.patterns, scan.patterns)
    np.testing.assert_allclose(loaded.positions_yx_px, scan.positions_yx_px)
    np.testing.assert_array_equal(loaded.ground_truth, scan.ground_truth)
    np.testing.assert_array_equal(loaded.bad_pixels, scan.bad_pixels)
    assert loaded.object_shape == scan.object_shape
    assert loaded.metadata["object_kind"] == "lines"


def test_ptychodus_training_data_layout_is_read(tmp_path):
    scan = simulate_scan("siemens", photons=1e4, n_positions=36, N=32, seed=2)
    path = tmp_path / "exported.npz"
    np.savez(
        path,
        diff3d=scan.patterns.astype(np.uint32),
        xcoords=scan.positions_yx_px[:, 1],
        ycoords=scan.positions_yx_px[:, 0],
        probeGuess=scan.probe,
        objectGuess=scan.ground_truth,
        bad_pixels=np.zeros((32, 32), bool),
        scan_index=np.zeros(36, int),
    )
    loaded = load_scan(path)
    assert loaded.object_shape == scan.object_shape
    # ptychodus puts probe pixel (N-1)/2 on a position, we put pixel N//2 there: half a pixel for even N
    np.testing.assert_allclose(loaded.positions_yx_px, scan.positions_yx_px + 0.5)
    np.testing.assert_array_equal(loaded.object_guess, scan.ground_truth)


def test_ptychodus_hdf5_training_data_layout_is_read(tmp_path):
    scan = simulate_scan("siemens", photons=1e4, n_positions=36, N=32, seed=2)
    path = tmp_path / "exported.h5"
    with h5py.File(path, "w") as handle:
        handle["patterns"] = scan.patterns.astype(np.uint16)
        handle["probe"] = scan.probe
        handle["probe_position_x_px"] = scan.positions_yx_px[:, 1]
        handle["probe_position_y_px"] = scan.positions_yx_px[:, 0]
        handle["object"] = scan.ground_truth[None]
    loaded = load_scan(path)
    assert loaded.object_shape == scan.object_shape and loaded.count == 36


def test_tike_style_file_with_corner_dc_and_centred_positions(tmp_path):
    scan = simulate_scan("siemens", photons=1e4, n_positions=36, N=32, seed=2)
    centred = scan.positions_yx_px - scan.positions_yx_px.mean(axis=0)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        data=np.fft.ifftshift(scan.patterns, axes=(-2, -1))[None],
        scan=centred[None].astype(np.float32),
        probe=scan.probe[None, None, None] * 3,
    )
    path = tmp_path / "real.npz.bz2"
    path.write_bytes(bz2.compress(buffer.getvalue()))
    loaded = load_scan(path, ReadOptions(margin_px=8))
    np.testing.assert_array_equal(loaded.patterns, scan.patterns)
    assert loaded.positions_yx_px.min() >= 16 + 8 - 1e-4
    np.testing.assert_allclose(np.diff(loaded.positions_yx_px, axis=0), np.diff(centred, axis=0), atol=1e-4)
    cropped = load_scan(path, ReadOptions(crop_px=32, max_patterns=10))
    assert cropped.count == 10


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "cannot read"),
        (b"PK\x03\x04 truncated zip", "cannot read"),
        (b"not a scan at all", "cannot read"),
    ],
)
def test_broken_files_are_reported(tmp_path, content, fragment):
    path = tmp_path / "broken.npz"
    path.write_bytes(content)
    with pytest.raises(ScanError, match=fragment):
        load_scan(path)


def test_missing_file_and_directory_and_unknown_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_scan(tmp_path / "nope.npz")
    with pytest.raises(ScanError, match="is a directory"):
        load_scan(tmp_path)
    np.savez(tmp_path / "other.npz", something=np.ones(3))
    with pytest.raises(ScanError, match="unrecognised scan layout"):
        load_scan(tmp_path / "other.npz")


def test_pickled_object_arrays_are_never_loaded(tmp_path):
    path = tmp_path / "pickle.npz"
    np.savez(path, diff3d=np.array([object()], dtype=object), xcoords=[1.0], ycoords=[1.0], probeGuess=np.ones((32, 32)))
    with pytest.raises(ScanError, match="cannot read"):
        load_scan(path)


def test_failed_write_leaves_previous_file_intact(tmp_path, monkeypatch):
    scan = simulate_scan("siemens", photons=1e4, n_positions=16, N=32, seed=2)
    path = save_scan(scan, tmp_path / "scan.npz")
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_scan(scan, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["scan.npz"]


def test_written_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    scan = simulate_scan("siemens", photons=1e4, n_positions=16, N=32, seed=2)
    path = save_scan(scan, tmp_path / "scan.npz")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
