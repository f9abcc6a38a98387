"""Scores after removing the ambiguities (SPEC §4, §10), and a robust FRC crossing."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ptychodus_pinn.engine.metrics import compare, frc_curve, frc_threshold_crossing, register_shift
from ptychodus_pinn.engine.simulate import ObjectKind, make_object

SHAPE = (96, 96)


def _illuminated(shape: tuple[int, int], margin: int = 10) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[margin:-margin, margin:-margin] = True
    return mask


def _fourier_shift(image: np.ndarray, shift_yx: tuple[float, float]) -> np.ndarray:
    return np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(image), shift_yx))


def _with_ambiguities(truth: np.ndarray) -> np.ndarray:
    """The truth moved by (+1.5, −1.5) px, then given a phase ramp and a global phase offset."""
    yy, xx = np.indices(truth.shape)
    ramp = np.exp(1j * (0.7 + 2 * np.pi * (0.01 * yy - 0.02 * xx)))
    return (_fourier_shift(truth, (1.5, -1.5)) * ramp).astype(np.complex64)


@pytest.mark.parametrize("kind", [ObjectKind.SIEMENS, ObjectKind.NATURAL, ObjectKind.GRAINS])
def test_truth_scores_perfect_and_ambiguities_are_removed(kind):
    truth = make_object(kind, SHAPE, 1)
    illuminated = _illuminated(SHAPE)
    itself = compare(truth, truth, illuminated)
    assert itself.phase_ssim > 0.999 and itself.amplitude_ssim > 0.999 and itself.frc50 == 1.0
    assert itself.flat_phase_ssim < 0.7
    yy, xx = np.indices(SHAPE)
    variants = {
        "offset": truth * np.exp(2.5j),
        "ramp": truth * np.exp(2j * np.pi * (0.01 * yy - 0.02 * xx)),
        "shift": _fourier_shift(truth, (1.5, -1.5)),
        "all": _with_ambiguities(truth),
    }
    for name, estimate in variants.items():
        quality = compare(estimate.astype(np.complex64), truth, illuminated)
        assert quality.phase_ssim == pytest.approx(itself.phase_ssim, abs=0.005), name
        assert quality.amplitude_ssim == pytest.approx(itself.amplitude_ssim, abs=0.005), name
        assert quality.frc50 == 1.0, name
        assert quality.flat_phase_ssim == pytest.approx(itself.flat_phase_ssim, abs=1e-6), name
    shift = compare(variants["all"], truth, illuminated).shift_yx_px
    np.testing.assert_allclose(shift, (-1.5, 1.5), atol=0.05)


def test_flat_object_scores_its_flat_score():
    truth = make_object(ObjectKind.SIEMENS, SHAPE, 2)
    quality = compare(np.ones(SHAPE, np.complex64), truth, _illuminated(SHAPE))
    assert quality.phase_ssim == pytest.approx(quality.flat_phase_ssim, abs=1e-4)
    assert quality.amplitude_ssim == pytest.approx(quality.flat_amplitude_ssim, abs=1e-4)
    assert quality.frc50 < 0.1


def test_registration_is_not_biased_towards_zero():
    """The whole estimate is shifted against the masked reference, so a sub-pixel shift is found exactly."""
    truth = make_object(ObjectKind.NATURAL, SHAPE, 3)
    box = _illuminated(SHAPE, 14).astype(float)
    for expected in [(0.3, -0.7), (1.5, 2.25), (-3.0, 0.5)]:
        moved = _fourier_shift(truth, expected)
        np.testing.assert_allclose(register_shift(moved, truth, box, 4.0), -np.array(expected), atol=0.02)


def _band(size: int, low: float, high: float) -> np.ndarray:
    yy, xx = np.indices((size, size)) - size // 2
    radius = np.hypot(yy, xx)
    return (radius >= low) & (radius < high)


def _filtered(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Keep the frequencies in ``mask`` (centred, symmetric), so a real image stays real."""
    spectrum = np.fft.fftshift(np.fft.fft2(image))
    return np.real(np.fft.ifft2(np.fft.ifftshift(spectrum * mask)))


SIZE = 128
NYQUIST = SIZE // 2


def test_frc_of_identical_images_reaches_nyquist():
    image = np.random.default_rng(0).standard_normal((SIZE, SIZE))
    np.testing.assert_allclose(frc_curve(image, image), 1.0, atol=1e-9)
    assert frc_threshold_crossing(image, image) == 1.0
    obj = make_object(ObjectKind.GRAINS, (SIZE, SIZE), 0)
    assert frc_threshold_crossing(obj, obj) == 1.0


def test_frc_against_independent_noise_is_low():
    rng = np.random.default_rng(1)
    image, noise = rng.standard_normal((2, SIZE, SIZE))
    assert frc_curve(image, noise).size == NYQUIST
    assert np.abs(frc_curve(image, noise)[3:]).mean() < 0.1
    assert frc_threshold_crossing(image, noise) < 0.1


def test_a_single_low_ring_dip_does_not_end_the_frc():
    """Identical images except ring 4, replaced with noise: the old first-crossing rule said 4/64."""
    rng = np.random.default_rng(2)
    image, noise = rng.standard_normal((2, SIZE, SIZE))
    band = _band(SIZE, 4, 5)
    dipped = image - _filtered(image, band) + _filtered(noise, band)
    curve = frc_curve(image, dipped)
    below = np.flatnonzero(curve[1:] < 0.5) + 1
    assert below.tolist() == [4]  # one dip, at ring 4, everything else above the threshold
    assert frc_threshold_crossing(image, dipped) == 1.0


@pytest.mark.parametrize("cutoff", [0.3, 0.5, 0.75])
def test_frc_crosses_where_the_images_really_decorrelate(cutoff):
    rng = np.random.default_rng(3)
    image, noise = rng.standard_normal((2, SIZE, SIZE))
    low_passed = _filtered(image, _band(SIZE, 0, cutoff * NYQUIST)) + 0.1 * noise
    assert frc_threshold_crossing(image, low_passed) == pytest.approx(cutoff, abs=0.04)
    # a lower threshold sits nearer the noise (ring-to-ring spread ~0.07 here): a few rings later at most
    assert cutoff - 0.02 <= frc_threshold_crossing(image, low_passed, threshold=1 / 7) <= cutoff + 0.08
