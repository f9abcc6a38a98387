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
