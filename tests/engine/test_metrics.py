"""Scores after removing the ambiguities (SPEC §4, §10), and a robust FRC crossing."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from ptychodus_pinn.engine.metrics import (
    MAX_REGISTRATION_SHIFT_PX,
    align_to_reference,
    compare,
    flatten_phase,
    frc_curve,
    frc_threshold_crossing,
    illuminated_box,
    reconstruction_metrics,
    register_shift,
    remove_phase_ramp_and_offset,
)
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


# ------------------------------------------------------------------------------- hand-computed cases


def _skimage_ssim(estimate: np.ndarray, reference: np.ndarray) -> float:
    """SSIM exactly as the headline number is defined: data range of the reference."""
    return float(structural_similarity(reference, estimate, data_range=float(reference.max() - reference.min())))


def test_illuminated_box_is_the_eroded_bounding_box():
    mask = np.zeros((40, 50), bool)
    mask[5:30, 12:41] = True
    assert illuminated_box(mask) == (slice(5, 30), slice(12, 41))
    assert illuminated_box(mask, erode_px=3) == (slice(8, 27), slice(15, 38))
    with pytest.raises(ValueError, match="no illuminated pixels"):
        illuminated_box(np.zeros((8, 8), bool))
    with pytest.raises(ValueError, match="no illuminated pixels"):
        illuminated_box(mask[:4, :4] | True, erode_px=4)  # eroded away


def test_identical_objects_score_ssim_one_and_no_shift():
    truth = make_object(ObjectKind.NATURAL, SHAPE, 3)
    quality = compare(truth, truth, _illuminated(SHAPE))
    assert quality.phase_ssim == pytest.approx(1.0, abs=1e-6)
    assert quality.amplitude_ssim == pytest.approx(1.0, abs=1e-6)
    assert quality.phase_psnr_db > 100 and quality.amplitude_psnr_db > 100
    assert np.hypot(*quality.shift_yx_px) < 0.01


def test_amplitude_only_distortion_scores_what_skimage_says():
    """|O|² with the true phase: nothing to align, so the scores are skimage's on the eroded box, after the amplitude scale."""
    truth = make_object(ObjectKind.NATURAL, SHAPE, 3)
    illuminated = _illuminated(SHAPE)
    estimate = (np.abs(truth) ** 2 * np.exp(1j * np.angle(truth))).astype(np.complex64)
    quality = compare(estimate, truth, illuminated)
    rows, cols = illuminated_box(illuminated, 4)  # compare's default erosion
    truth_box, estimate_box = np.abs(truth[rows, cols]), np.abs(estimate[rows, cols])
    scale = np.sum(estimate_box * truth_box) / np.sum(estimate_box**2)  # least-squares amplitude scale
    expected = _skimage_ssim(scale * estimate_box, truth_box)
    assert 0.5 < expected < 0.99  # a real distortion, not a near-copy
    assert quality.amplitude_ssim == pytest.approx(expected, abs=2e-3)
    assert quality.phase_ssim == pytest.approx(1.0, abs=1e-5)


def _disc(shape: tuple[int, int]) -> np.ndarray:
    yy, xx = np.indices(shape)
    return np.hypot(yy - shape[0] / 2, xx - shape[1] / 2) < 0.4 * shape[0]


@pytest.mark.parametrize("region", ["rectangle", "disc"])
@pytest.mark.parametrize("fill", ["zero", "one", "another object"])
def test_what_lies_outside_the_illuminated_region_does_not_count(fill, region):
    """Unlit pixels (filled with 0, 1 or the input object by stitching) change nothing, also in the corners of a
    disc's bounding box, which a spiral scan leaves unlit (scored over the box, exact patches stitched onto the
    N = 64 spiral circuit scored 0.865)."""
    truth = make_object(ObjectKind.GRAINS, SHAPE, 4)
    illuminated = _illuminated(SHAPE) if region == "rectangle" else _disc(SHAPE)
    fills: dict[str, complex | np.ndarray] = {"zero": 0, "one": 1, "another object": make_object(ObjectKind.NATURAL, SHAPE, 11)}
    quality = compare(np.where(illuminated, truth, fills[fill]), truth, illuminated)
    assert quality.phase_ssim == pytest.approx(1.0, abs=1e-4) and quality.amplitude_ssim == pytest.approx(1.0, abs=1e-4)
    assert quality.phase_psnr_db > 60
    assert quality.flat_phase_ssim < 0.5  # the floor is scored over the same pixels


@pytest.mark.xfail(strict=False, reason="known: white noise next to the scored box biases the sub-pixel registration")
def test_white_noise_outside_the_scored_box_does_not_count():
    """Registration divides by a Fourier-interpolated |estimate|² (exact only at integer shifts), so noise just outside
    the box finds a spurious ~0.05-0.1 px shift, and the whole-grid Fourier shift then rings the noise into the box."""
    truth = make_object(ObjectKind.GRAINS, SHAPE, 4)
    illuminated = _illuminated(SHAPE)
    spoiled = truth.copy()
    outside = np.ones(SHAPE, bool)
    outside[illuminated_box(illuminated, 4)] = False
    spoiled[outside] = np.random.default_rng(0).standard_normal(int(outside.sum()))
    quality = compare(spoiled, truth, illuminated)
    assert quality.phase_ssim == pytest.approx(1.0, abs=1e-3) and quality.amplitude_ssim == pytest.approx(1.0, abs=1e-3)


def test_a_phase_ramp_and_offset_are_removed_exactly():
    truth = make_object(ObjectKind.SIEMENS, SHAPE, 5)
    yy, xx = np.indices(SHAPE)
    ky, kx, offset = 0.0123, -0.0371, 2.9  # cycles per pixel, off the FFT grid, and radians
    ramped = truth * np.exp(1j * (offset + 2 * np.pi * (ky * yy + kx * xx)))
    np.testing.assert_allclose(remove_phase_ramp_and_offset(ramped, truth, np.ones(SHAPE)), truth, atol=1e-5)
    window = np.zeros(SHAPE)
    window[20:70, 15:80] = 1.0  # a weight: only there must it match, yet the ramp is global
    np.testing.assert_allclose(remove_phase_ramp_and_offset(ramped, truth, window), truth, atol=1e-5)


def test_flatten_phase_removes_a_ramp_from_a_pure_phase_ramp():
    yy, xx = np.indices(SHAPE)
    lit = _illuminated(SHAPE, 20)
    tilted = 0.8 * np.exp(1j * (-1.1 + 2 * np.pi * (0.02 * yy + 0.0137 * xx)))
    flat = flatten_phase(tilted, lit)
    np.testing.assert_allclose(flat[lit], 0.8, atol=1e-6)  # amplitude kept, phase 0 over the lit region
    np.testing.assert_array_equal(flat[~lit], tilted[~lit])  # the rest is left as it was


@pytest.mark.parametrize("shift", [(1.5, -2.25), (-2.25, 1.5), (0.4, 0.0)])
def test_registration_recovers_an_asymmetric_sub_pixel_shift_with_its_sign(shift):
    """``estimate`` is the truth moved by +shift; the shift that moves it back is −shift, and applying it gives the truth."""
    truth = make_object(ObjectKind.NATURAL, SHAPE, 6)
    moved = _fourier_shift(truth, shift)
    box = _illuminated(SHAPE, 14).astype(float)
    found = register_shift(moved, truth, box, MAX_REGISTRATION_SHIFT_PX)
    np.testing.assert_allclose(found, -np.array(shift), atol=0.05)
    back = _fourier_shift(moved, tuple(found))
    inner = _illuminated(SHAPE, 14)
    assert np.abs(back - truth)[inner].max() < 0.02


def test_a_point_moved_down_and_left_is_reported_as_moved_down_and_left():
    """A hand-checkable sign: a blob at (40, 50) found at (41.5, 47.75) needs (−1.5, +2.25) to go back."""
    yy, xx = np.indices(SHAPE)
    blob = lambda cy, cx: 1.0 + np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0**2))  # noqa: E731
    found = register_shift(blob(41.5, 47.75).astype(complex), blob(40, 50).astype(complex), np.ones(SHAPE), 4.0)
    np.testing.assert_allclose(found, (-1.5, 2.25), atol=0.05)


def test_compare_reports_the_removed_shift_and_scores_as_the_truth():
    truth = make_object(ObjectKind.GRAINS, SHAPE, 7)
    yy, xx = np.indices(SHAPE)
    estimate = _fourier_shift(truth, (1.5, -2.25)) * np.exp(1j * (1.0 + 2 * np.pi * (0.015 * yy + 0.005 * xx)))
    quality = compare(estimate.astype(np.complex64), truth, _illuminated(SHAPE))
    np.testing.assert_allclose(quality.shift_yx_px, (-1.5, 2.25), atol=0.05)
    assert quality.phase_ssim > 0.99 and quality.amplitude_ssim > 0.99


def test_shifts_beyond_the_registration_limit_are_not_removed():
    """A shift of many pixels is a failure, not an ambiguity: it is scored, not forgiven."""
    truth = make_object(ObjectKind.NATURAL, SHAPE, 8)
    far = _fourier_shift(truth, (9.0, -7.0))
    _, _, shift = align_to_reference(far, truth, _illuminated(SHAPE))
    assert np.hypot(*shift) <= MAX_REGISTRATION_SHIFT_PX
    assert compare(far.astype(np.complex64), truth, _illuminated(SHAPE)).phase_ssim < 0.5


def test_compare_refuses_mismatched_shapes():
    truth = make_object(ObjectKind.SIEMENS, SHAPE, 1)
    with pytest.raises(ValueError, match="shapes differ"):
        compare(truth[:-1], truth, _illuminated(SHAPE))
    with pytest.raises(ValueError, match="shapes differ"):
        compare(truth, truth, _illuminated((SHAPE[0], SHAPE[1] + 1)))


@pytest.mark.parametrize("noise_std", [1.0, np.sqrt(3.0)])
def test_frc_of_signal_against_signal_plus_white_noise_is_one_over_root_one_plus_snr(noise_std):
    """FRC(x, x + σn) for white x, n of unit power is 1/√(1 + σ²) on every ring: 0.707 and 0.5 here."""
    rng = np.random.default_rng(4)
    image, noise = rng.standard_normal((2, SIZE, SIZE))
    curve = frc_curve(image, image + noise_std * noise)
    expected = 1 / np.sqrt(1 + noise_std**2)
    assert curve[8:].mean() == pytest.approx(expected, abs=0.02)
    assert np.abs(curve[8:] - expected).max() < 0.2  # each ring is noisy, but centred on the value


def test_frc_is_invariant_to_scale_and_sign_flips_correlation():
    image = np.random.default_rng(5).standard_normal((SIZE, SIZE))
    np.testing.assert_allclose(frc_curve(image, 3.7 * image), 1.0, atol=1e-9)
    np.testing.assert_allclose(frc_curve(image, -image), -1.0, atol=1e-9)


def test_frc_uses_the_central_square_of_a_rectangle():
    rng = np.random.default_rng(6)
    wide = rng.standard_normal((SIZE, SIZE + 40))
    other = wide.copy()
    other[:, :20] = rng.standard_normal((SIZE, 20))  # outside the central square: ignored
    curve = frc_curve(wide, other)
    assert curve.size == NYQUIST
    np.testing.assert_allclose(curve, 1.0, atol=1e-9)


def test_independent_noise_falls_below_the_threshold_at_every_ring_but_the_lowest():
    rng = np.random.default_rng(7)
    image, noise = rng.standard_normal((2, SIZE, SIZE))
    curve = frc_curve(image, noise)
    assert (np.abs(curve[4:]) < 0.5).all()
    assert frc_threshold_crossing(image, noise) == pytest.approx(2 / NYQUIST)  # the first ring after the skipped ones


def test_flat_floor_is_skimage_ssim_of_the_best_flat_object():
    """The floor is the score of a constant object (mean amplitude, best linear phase) and does not depend on the estimate."""
    truth = make_object(ObjectKind.CIRCUIT, SHAPE, 9)
    illuminated = _illuminated(SHAPE)
    rows, cols = illuminated_box(illuminated, 4)
    crop = truth[rows, cols]
    flat = remove_phase_ramp_and_offset(np.full_like(crop, np.mean(np.abs(crop))), crop, np.ones(crop.shape))
    floor_phase = _skimage_ssim(np.angle(flat), np.angle(crop))
    floor_amplitude = _skimage_ssim(np.abs(flat), np.abs(crop))
    for estimate in (truth, np.ones(SHAPE, np.complex64), make_object(ObjectKind.NATURAL, SHAPE, 1)):
        quality = compare(estimate, truth, illuminated)
        assert quality.flat_phase_ssim == pytest.approx(floor_phase, abs=1e-9)
        assert quality.flat_amplitude_ssim == pytest.approx(floor_amplitude, abs=1e-9)
    assert compare(truth, truth, illuminated).phase_ssim > floor_phase + 0.5
    unrelated = compare(make_object(ObjectKind.NATURAL, SHAPE, 1), truth, illuminated)
    assert unrelated.phase_ssim < floor_phase + 0.2  # an unrelated object does not clear the floor by much


def test_reconstruction_metrics_adds_the_network_row_only_after_refinement():
    truth = make_object(ObjectKind.SIEMENS, SHAPE, 10)
    illuminated = _illuminated(SHAPE)
    common = dict(object=truth, illuminated=illuminated, network_object=np.ones(SHAPE, np.complex64), seconds=2.0)
    network_only = SimpleNamespace(**common, stages=("network",), refinement=None, network_seconds=2.0, patterns_per_second=50.0)
    metrics = reconstruction_metrics(network_only, truth)
    assert metrics["phase_ssim"] == pytest.approx(1.0, abs=1e-5)
    assert not any(key.startswith("network_") for key in metrics)
    assert metrics["refinement_epochs"] == 0 and metrics["refinement_start"] is None
    assert metrics["refinement_converged"] is False
    history = [SimpleNamespace(half_resolution=half) for half in (True, True, False, False, False)]
    refinement = SimpleNamespace(seconds=1.5, history=history, start="network", converged=True)
    refined = SimpleNamespace(**common, stages=("network", "refinement"), refinement=refinement, network_seconds=0.5,
                              patterns_per_second=50.0)  # fmt: skip
    metrics = reconstruction_metrics(refined, truth)
    flat = compare(np.ones(SHAPE, np.complex64), truth, illuminated)
    assert metrics["network_phase_ssim"] == pytest.approx(flat.phase_ssim)
    assert "network_flat_phase_ssim" not in metrics and "network_residual_shift_yx_px" not in metrics
    assert metrics["refinement_epochs"] == 3 and metrics["refinement_half_resolution_epochs"] == 2
    assert metrics["seconds_refinement"] == 1.5 and metrics["refinement_converged"] is True
    assert metrics["stages"] == ["network", "refinement"]
