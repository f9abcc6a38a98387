"""Synthetic objects: every kind is a valid, reproducible complex object within its documented ranges."""

from __future__ import annotations

import numpy as np
import pytest

from ptychodus_pinn.engine.simulate import ObjectKind, make_object, simulate_scan

# documented (amplitude, phase) ranges of each kind, in the generators' docstrings and code
RANGES = {
    ObjectKind.SIEMENS: ((0.55, 1.0), (-0.75, 0.75)),
    ObjectKind.LINES: ((0.6, 1.0), (-0.5, 1.0)),
    ObjectKind.NATURAL: ((0.5, 1.0), (-1.0, 1.0)),
    ObjectKind.CIRCUIT: ((0.6, 1.0), (0.0, 1.2)),
    ObjectKind.GRAINS: ((0.6, 1.0), (-0.8, 0.8)),
}
TOLERANCE = 1e-5
SHAPES = [(96, 96), (70, 131)]


def test_every_kind_has_documented_ranges():
    assert set(RANGES) == set(ObjectKind)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", list(ObjectKind))
def test_object_is_complex64_in_range(kind, shape):
    (amplitude_low, amplitude_high), (phase_low, phase_high) = RANGES[kind]
    for seed in range(3):
        obj = make_object(kind, shape, seed)
        assert obj.dtype == np.complex64 and obj.shape == shape
        assert np.all(np.isfinite(obj))
        amplitude, phase = np.abs(obj), np.angle(obj)
        assert amplitude.min() >= amplitude_low - TOLERANCE and amplitude.max() <= amplitude_high + TOLERANCE
        assert phase.min() >= phase_low - TOLERANCE and phase.max() <= phase_high + TOLERANCE
        # not trivially flat: a good part of the documented phase range is used
        assert np.ptp(phase) > 0.4 * (phase_high - phase_low)


@pytest.mark.parametrize("kind", list(ObjectKind))
def test_object_is_deterministic_per_seed_and_differs_across_seeds(kind):
    first = make_object(kind, (64, 80), 7)
    np.testing.assert_array_equal(first, make_object(kind, (64, 80), 7))
    assert np.abs(first - make_object(kind, (64, 80), 8)).mean() > 0.01


def test_existing_kinds_reproduce_their_seeds():
    """The Siemens star and lines draw from the seed exactly as before the new kinds were added."""
    from ptychodus_pinn.engine.simulate import random_lines, siemens_star

    for kind, generator in ((ObjectKind.SIEMENS, siemens_star), (ObjectKind.LINES, random_lines)):
        expected = generator((48, 48), np.random.default_rng(5))
        np.testing.assert_array_equal(make_object(kind, (48, 48), 5), expected)


def test_natural_amplitude_and_phase_come_from_different_photographs():
    for seed in range(8):
        obj = make_object(ObjectKind.NATURAL, (96, 96), seed)
        correlation = np.corrcoef(np.abs(obj).ravel(), np.angle(obj).ravel())[0, 1]
        assert abs(correlation) < 0.9, (seed, correlation)


def test_natural_images_load_offline():
    from ptychodus_pinn.engine.simulate import NATURAL_IMAGES, _grey_photograph

    for name in NATURAL_IMAGES:
        image = _grey_photograph(name)
        assert image.ndim == 2 and min(image.shape) >= 256 and 0 <= image.min() < image.max() <= 1


def test_cli_object_choices_match_object_kinds():
    from ptychodus_pinn.app.cli import build_parser

    parser = build_parser()
    subparsers = next(action for action in parser._actions if action.dest == "command")
    simulate = subparsers.choices["simulate"]  # type: ignore[index]
    object_action = next(action for action in simulate._actions if action.dest == "object")
    assert list(object_action.choices) == [kind.value for kind in ObjectKind]


@pytest.mark.parametrize("kind", list(ObjectKind))
def test_simulate_scan_works_for_every_kind(kind):
    scan = simulate_scan(kind, photons=1e4, n_positions=16, N=32, seed=1, path="spiral")
    assert scan.patterns.shape == (16, 32, 32)
    assert np.all(np.isfinite(scan.patterns)) and scan.patterns.min() >= 0
    assert scan.ground_truth is not None and scan.ground_truth.shape == scan.object_shape
    np.testing.assert_array_equal(scan.ground_truth, make_object(kind, scan.object_shape, 1))
    assert scan.metadata["object_kind"] == kind.value
    # photons per pattern is the dose through a unit-amplitude object; the object only absorbs
    amplitude_low = RANGES[kind][0][0]
    assert 0.9 * amplitude_low**2 * 1e4 < scan.patterns.sum(axis=(1, 2)).mean() < 1.05e4


# ------------------------------------------------------------------------------------ scans and doses


def _patch_bounds(positions: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last row/column of each patch (probe pixel N//2 at the position, SPEC §4)."""
    top_left = np.rint(positions).astype(int) - size // 2
    return top_left, top_left + size


@pytest.mark.parametrize("path", ["raster", "jittered", "spiral"])
@pytest.mark.parametrize("count", [1, 10, 25])
def test_scan_has_the_asked_count_and_every_patch_inside_the_object(path, count):
    scan = simulate_scan(ObjectKind.SIEMENS, photons=1e3, n_positions=count, N=32, seed=2, path=path)
    assert scan.patterns.shape == (count, 32, 32) and scan.positions_yx_px.shape == (count, 2)
    assert scan.positions_yx_px.dtype == np.float64
    first, last = _patch_bounds(scan.positions_yx_px, 32)
    assert first.min() >= 0
    assert (last <= np.array(scan.object_shape)).all()
    assert scan.metadata["path"] == path


def test_raster_scan_is_a_row_major_grid_with_the_overlap_step():
    """N=32, probe radius N/4 = 8 px, overlap 0.75: step 2·8·(1 − 0.75) = 4 px, 3 × 3 from (20, 20) (N//2 + 4 margin)."""
    scan = simulate_scan(ObjectKind.LINES, photons=1e3, n_positions=9, N=32, seed=0, path="raster", overlap=0.75)
    rows, cols = np.divmod(np.arange(9), 3)
    np.testing.assert_array_equal(scan.positions_yx_px, 20 + 4.0 * np.stack([rows, cols], axis=1))
    assert scan.object_shape == (20 + 8 + 16 + 4, 20 + 8 + 16 + 4)  # last centre + N - N//2 + margin


def test_raster_with_a_non_square_count_fills_rows_first():
    from ptychodus_pinn.engine.simulate import scan_positions

    positions = scan_positions(10, 2.0, "raster", np.random.default_rng(0))
    np.testing.assert_array_equal(positions[:4], [[0, 0], [0, 2], [0, 4], [0, 6]])
    np.testing.assert_array_equal(positions[-2:], [[4, 0], [4, 2]])


def test_spiral_positions_are_distinct_and_evenly_spread():
    from ptychodus_pinn.engine.simulate import scan_positions

    positions = scan_positions(200, 3.0, "spiral", np.random.default_rng(0))
    assert positions.shape == (200, 2) and positions.min() == 0.0
    nearest = np.sort(np.hypot(*(positions[:, None] - positions[None]).transpose(2, 0, 1)), axis=1)[:, 1]
    assert nearest.min() > 0.5 * 3.0  # no two probe positions on top of each other
    assert nearest.max() < 2.0 * 3.0  # no holes: every position has a neighbour about one step away
    extent = np.ptp(positions, axis=0)
    assert abs(extent[0] - extent[1]) < 0.1 * extent.max()  # round, not a line


def test_scan_is_reproducible_by_seed_and_differs_across_seeds():
    first = simulate_scan(ObjectKind.GRAINS, photons=1e3, n_positions=16, N=32, seed=3)
    again = simulate_scan(ObjectKind.GRAINS, photons=1e3, n_positions=16, N=32, seed=3)
    other = simulate_scan(ObjectKind.GRAINS, photons=1e3, n_positions=16, N=32, seed=4)
    np.testing.assert_array_equal(first.patterns, again.patterns)
    np.testing.assert_array_equal(first.positions_yx_px, again.positions_yx_px)
    assert not np.array_equal(first.patterns, other.patterns)
    assert not np.array_equal(first.positions_yx_px, other.positions_yx_px)  # jittered: the seed moves the positions


@pytest.mark.parametrize("photons", [1e3, 1e5])
def test_mean_total_counts_match_the_dose_through_the_object(photons):
    """Integer positions, so the expected total of each pattern is photons·Σ|O·P|²/Σ|P|² (Parseval), by hand."""
    scan = simulate_scan(ObjectKind.NATURAL, photons=photons, n_positions=25, N=32, seed=5, path="raster", overlap=0.75)
    assert scan.ground_truth is not None
    probe_power = np.abs(scan.probe) ** 2
    first, last = _patch_bounds(scan.positions_yx_px, 32)
    expected = np.array(
        [
            photons * np.sum(probe_power * np.abs(scan.ground_truth[y0:y1, x0:x1]).astype(np.float64) ** 2) / np.sum(probe_power)
            for (y0, x0), (y1, x1) in zip(first, last, strict=True)
        ]
    )
    totals = scan.patterns.sum(axis=(1, 2), dtype=np.float64)
    assert 0.25 * photons < expected.mean() < photons  # the object absorbs (amplitude 0.5 … 1)
    # Poisson: each total scatters by √total; the mean over 25 patterns by √(mean/25)
    assert float(totals.mean()) == pytest.approx(float(expected.mean()), abs=4 * float(np.sqrt(expected.mean() / 25)))
    np.testing.assert_allclose(totals, expected, atol=5 * np.sqrt(expected.max()))
    assert scan.patterns.dtype == np.float32 and np.array_equal(scan.patterns, np.round(scan.patterns))  # counts


def test_invalid_scan_arguments_name_the_argument():
    with pytest.raises(ValueError, match="overlap=1"):
        simulate_scan(overlap=1.0, n_positions=4, N=32)
    with pytest.raises(ValueError, match="photons=0"):
        simulate_scan(photons=0, n_positions=4, N=32)
    with pytest.raises(ValueError, match="n_positions=0"):
        simulate_scan(n_positions=0, N=32)
