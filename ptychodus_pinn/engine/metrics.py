"""Quality of a reconstruction against a known object, after removing its ambiguities (SPEC §4, §10).

One implementation for the CLI, the demo, the tests and the benchmarks. Removed before scoring:
sub-pixel shift, global phase offset, phase ramp, and amplitude scale. Scored over the
illuminated region only (eroded by a few pixels), and always beside the score of a flat object (the floor
to clear). The FRC alone is taken over the central square of that region's bounding box.

Until 2026-12-06 (eleventh session) SSIM and PSNR were taken over the whole bounding box. For a scan whose lit
region is not a rectangle (a spiral's disc) that scored the box's unlit corners too, where no method has
data: every method's phase SSIM on the spiral benchmark scans was ~0.18 lower (pty-chi LSQML on the N = 64
circuit 0.735 against 0.919 over the lit region), the ratios between methods within −0.03 to +0.01 (docs/quality.md,
"Scoring the lit region").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def scored_pixels(illuminated: np.ndarray, erode_px: int = 0) -> np.ndarray:
    """The pixels a score is taken over: those with no unlit pixel within ``erode_px`` along either axis or
    diagonally (a square neighbourhood, so that SSIM's 7 × 7 window round a scored pixel stays lit for
    ``erode_px`` ≥ 3)."""
    square = np.ones((3, 3), bool)
    mask = ndimage.binary_erosion(illuminated, square, iterations=erode_px) if erode_px else np.asarray(illuminated, bool)
    if not mask.any():
        raise ValueError("no illuminated pixels to score")
    return mask


def illuminated_box(illuminated: np.ndarray, erode_px: int = 0) -> tuple[slice, slice]:
    """Bounding box of the (eroded) illuminated region."""
    return _bounding_box(scored_pixels(illuminated, erode_px))


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _exp_sum(values: np.ndarray, coords: np.ndarray, v: np.ndarray) -> tuple[complex, np.ndarray]:
    """Σ values·exp(−2πi coords·v) and its gradient in v (coords: (2, n))."""
    terms = values * np.exp(-2j * math.pi * (v @ coords))
    return complex(np.sum(terms)), -2j * math.pi * (coords @ terms)


def _maximize_modulus(
    values: np.ndarray,
    coords: np.ndarray,
    start: tuple[float, float],
    reach: tuple[float, float],
    power: np.ndarray | None = None,
) -> tuple[float, float]:
    """Local argmax over v of |Σ values·e^{−2πi coords·v}|² (÷ Re Σ power·e^{−2πi coords·v}), within start ± reach."""
    from scipy.optimize import minimize

    scale = max(float(np.sum(np.abs(values))), 1e-30)

    def loss_and_gradient(v: np.ndarray) -> tuple[float, np.ndarray]:
        total, slope = _exp_sum(values / scale, coords, v)
        numerator, numerator_slope = abs(total) ** 2, 2 * np.real(np.conj(total) * slope)
        if power is None:
            return -numerator, -numerator_slope
        norm, norm_slope = _exp_sum(power / scale, coords, v)
        denominator = max(norm.real, 1e-30)
        return -numerator / denominator, -(numerator_slope * denominator - numerator * norm_slope.real) / denominator**2

    bounds = [(start[0] - reach[0], start[0] + reach[0]), (start[1] - reach[1], start[1] + reach[1])]
    result = minimize(loss_and_gradient, np.array(start), jac=True, method="L-BFGS-B", bounds=bounds)
    return float(result.x[0]), float(result.x[1])


def remove_phase_ramp_and_offset(estimate: np.ndarray, reference: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Multiply ``estimate`` by the linear phase (ramp + offset) that best matches ``reference``.

    The ramp maximises |Σ estimate·conj(reference)·weight·e^{−2πi k·r}|: the peak of the 4×
    zero-padded spectrum, refined continuously.
    """
    product = estimate * np.conj(reference) * weight
    height, width = product.shape
    pad = 4
    spectrum = np.abs(np.fft.fft2(product, s=(pad * height, pad * width)))
    peak = np.unravel_index(np.argmax(spectrum), spectrum.shape)
    start = (float(np.fft.fftfreq(pad * height)[peak[0]]), float(np.fft.fftfreq(pad * width)[peak[1]]))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    lit = product != 0
    coords = np.stack([yy[lit], xx[lit]])
    ky, kx = _maximize_modulus(product[lit], coords, start, (1.0 / (pad * height), 1.0 / (pad * width)))
    ramp = np.exp(-2j * math.pi * (ky * yy + kx * xx))
    offset = np.angle(np.sum(product * ramp))
    return estimate * ramp * np.exp(-1j * offset)


def register_shift(estimate: np.ndarray, reference: np.ndarray, weight: np.ndarray, max_shift_px: float) -> np.ndarray:
    """Sub-pixel (dy, dx) that moves ``estimate`` onto ``reference`` where ``weight`` > 0.

    Least squares over s of Σ weight·|reference − c·estimate(r − s)|² with the best complex c, i.e.
    the maximum of |Σ w·conj(ref)·est(r − s)|² / Σ w·|est(r − s)|²; the whole estimate is shifted
    (not a crop of it, which would bias the shift towards 0). Best integer shift within
    ``max_shift_px + 1``, refined continuously within ±1 px.
    """
    spectrum = np.fft.fft2(estimate)
    cross = spectrum * np.conj(np.fft.fft2(reference * weight))
    power = np.fft.fft2(np.abs(estimate) ** 2) * np.conj(np.fft.fft2(weight))
    # fft2(x)[s] = Σ_f x(f)·e^{−2πi f·s}: the correlations at every integer shift s
    score = np.abs(np.fft.fft2(cross)) ** 2 / np.maximum(np.real(np.fft.fft2(power)), 1e-30)
    height, width = cross.shape
    sy = np.fft.fftfreq(height, 1.0 / height)[:, None]
    sx = np.fft.fftfreq(width, 1.0 / width)[None, :]
    score[np.hypot(sy, sx) > max_shift_px + 1] = -1.0
    peak = np.unravel_index(np.argmax(score), score.shape)
    start = (float(sy[peak[0], 0]), float(sx[0, peak[1]]))
    fy, fx = np.meshgrid(np.fft.fftfreq(height), np.fft.fftfreq(width), indexing="ij")
    coords = np.stack([fy.ravel(), fx.ravel()])
    return np.array(_maximize_modulus(cross.ravel(), coords, start, (1.0, 1.0), power.ravel()))


def flatten_phase(obj: np.ndarray, illuminated: np.ndarray) -> np.ndarray:
    """Remove the dominant linear phase (ramp and offset) over the illuminated region, for display.

    A phase ramp is an ambiguity of the reconstruction (a shift of the diffraction pattern
    relative to the probe guess); without a reference, the best linear phase is the one that
    maximises |Σ obj · e^{-i(k·r + c)}| over lit pixels.
    """
    weight = illuminated.astype(np.float64)
    flat = np.where(illuminated, obj, 0)
    return np.where(illuminated, remove_phase_ramp_and_offset(flat, np.ones_like(flat), weight), obj)


def frc_curve(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """FRC per integer ring 0 … Nyquist−1 of the central square crops (Hann-windowed); ring r / Nyquist is the frequency."""
    size = min(first.shape)
    top, left = (first.shape[0] - size) // 2, (first.shape[1] - size) // 2
    first = first[top : top + size, left : left + size]
    second = second[top : top + size, left : left + size]
    window = np.outer(np.hanning(size), np.hanning(size))
    f1 = np.fft.fftshift(np.fft.fft2(first * window))
    f2 = np.fft.fftshift(np.fft.fft2(second * window))
    yy, xx = np.indices((size, size)) - size // 2
    rings = np.hypot(yy, xx).astype(int)
    index = np.arange(size // 2)
    numerator = ndimage.sum_labels(np.real(f1 * np.conj(f2)), rings, index=index)
    power1 = ndimage.sum_labels(np.abs(f1) ** 2, rings, index=index)
    power2 = ndimage.sum_labels(np.abs(f2) ** 2, rings, index=index)
    return np.asarray(numerator / np.sqrt(np.maximum(power1 * power2, 1e-30)), np.float64)


FRC_SKIP_FRACTION = 0.03
FRC_MIN_SKIPPED_RINGS = 2
FRC_RUN_RINGS = 3


def frc_threshold_crossing(first: np.ndarray, second: np.ndarray, threshold: float = 0.5) -> float:
    """Spatial frequency (fraction of Nyquist, 1 = finest) where the FRC drops below threshold for good.

    Robust rule: the lowest rings (the first 3 % of Nyquist, at least 2 rings) are skipped, and the
    crossing is the first later ring r where the FRC is below ``threshold`` on ``FRC_RUN_RINGS`` (3)
    consecutive rings r, r+1, r+2 (or on every remaining ring, near Nyquist). A lone dip of one or
    two rings does not count. Returns r / Nyquist, or 1.0 when it never crosses.
    """
    frc = frc_curve(first, second)
    nyquist = frc.size
    skip = max(FRC_MIN_SKIPPED_RINGS, math.ceil(FRC_SKIP_FRACTION * nyquist))
    below = frc < threshold
    for ring in range(skip, nyquist):
        if below[ring : ring + FRC_RUN_RINGS].all():
            return float(ring / nyquist)
    return 1.0


@dataclass(frozen=True)
class Quality:
    phase_ssim: float
    amplitude_ssim: float
    phase_psnr_db: float
    amplitude_psnr_db: float
    frc50: float
    flat_phase_ssim: float
    flat_amplitude_ssim: float
    shift_yx_px: tuple[float, float]

    def as_dict(self) -> dict[str, float | list[float]]:
        return {
            "phase_ssim": self.phase_ssim,
            "amplitude_ssim": self.amplitude_ssim,
            "phase_psnr_db": self.phase_psnr_db,
            "amplitude_psnr_db": self.amplitude_psnr_db,
            "frc50": self.frc50,
            "flat_phase_ssim": self.flat_phase_ssim,
            "flat_amplitude_ssim": self.flat_amplitude_ssim,
            "residual_shift_yx_px": list(self.shift_yx_px),
        }


SSIM_WINDOW_PX = 7  # skimage's default window


def _ssim(estimate: np.ndarray, reference: np.ndarray, scored: np.ndarray) -> float:
    """skimage's SSIM map averaged over the ``scored`` pixels, less the border strip skimage itself leaves out
    (where the window would reach past the image): skimage's own mean when every pixel is scored."""
    data_range = float(reference[scored].max() - reference[scored].min()) or 1.0
    _, ssim_map = structural_similarity(reference, estimate, data_range=data_range, full=True)
    pad = (SSIM_WINDOW_PX - 1) // 2
    inner = np.zeros_like(scored)
    inner[pad:-pad, pad:-pad] = scored[pad:-pad, pad:-pad]
    return float(np.mean(ssim_map[inner], dtype=np.float64)) if inner.any() else float("nan")


def _psnr(estimate: np.ndarray, reference: np.ndarray, scored: np.ndarray) -> float:
    data_range = float(reference[scored].max() - reference[scored].min()) or 1.0
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(reference[scored], estimate[scored], data_range=data_range))


#: What scores are taken over, recorded in benchmark results: rows scored another way (before 2026-12-06, over the
#: lit region's bounding box) are not reused beside new ones
SCORING = "eroded-lit-region"
MAX_REGISTRATION_SHIFT_PX = 4.0
ERODE_PX = 4  # the lit region's rim, where only the probe's tails reach, is not scored


def align_to_reference(
    estimate: np.ndarray, reference: np.ndarray, illuminated: np.ndarray, erode_px: int = ERODE_PX
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Crop both to the illuminated box and remove shift, phase ramp/offset and amplitude scale, each fitted
    over the scored pixels (the eroded illuminated region: not the box's corners, which a non-rectangular
    scan leaves unlit).

    Returns the aligned estimate, the cropped reference, and the sub-pixel shift that was removed.
    Shifts beyond a few pixels are not an ambiguity but a failure, so they are not removed.
    The ramp is removed once before registering (a ramp moves the cross-correlation peak) and once
    after; the shift is applied to the whole grid so its wrap-around stays outside the scored box.
    """
    aligned, reference_crop, shift, _ = _aligned_on_scored_pixels(estimate, reference, illuminated, erode_px)
    return aligned, reference_crop, shift


def _aligned_on_scored_pixels(
    estimate: np.ndarray, reference: np.ndarray, illuminated: np.ndarray, erode_px: int
) -> tuple[np.ndarray, np.ndarray, tuple[float, float], np.ndarray]:
    """:func:`align_to_reference`, plus the scored pixels within the box (boolean, the crops' shape)."""
    mask = scored_pixels(illuminated, erode_px)
    box = _bounding_box(mask)
    scored = mask.astype(np.float64)
    deramped = remove_phase_ramp_and_offset(np.asarray(estimate, np.complex128), reference, scored)
    reference_crop = reference[box]
    shift = register_shift(deramped, reference, scored, MAX_REGISTRATION_SHIFT_PX)
    if np.hypot(*shift) > MAX_REGISTRATION_SHIFT_PX:
        shift = np.zeros(2)
    if np.hypot(*shift) > 0.05:
        deramped = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(deramped), shift))
    weight = scored[box]
    aligned = remove_phase_ramp_and_offset(deramped[box], reference_crop, weight)
    amplitude = np.abs(aligned)
    amplitude_scale = np.sum(weight * amplitude * np.abs(reference_crop)) / max(np.sum(weight * amplitude**2), 1e-30)
    return aligned * amplitude_scale, reference_crop, (float(shift[0]), float(shift[1])), mask[box]


def compare(estimate: np.ndarray, reference: np.ndarray, illuminated: np.ndarray) -> Quality:
    """Score a complex reconstruction against the true object on the same grid."""
    if estimate.shape != reference.shape or illuminated.shape != reference.shape:
        raise ValueError(f"shapes differ: estimate {estimate.shape}, reference {reference.shape}, mask {illuminated.shape}")
    aligned, truth, shift, scored = _aligned_on_scored_pixels(estimate, reference, illuminated, ERODE_PX)
    truth_phase = np.angle(truth)
    truth_amplitude = np.abs(truth)
    flat = np.full_like(truth, np.mean(truth_amplitude[scored]))
    flat_aligned = remove_phase_ramp_and_offset(flat, truth, scored.astype(np.float64))
    return Quality(
        phase_ssim=_ssim(np.angle(aligned), truth_phase, scored),
        amplitude_ssim=_ssim(np.abs(aligned), truth_amplitude, scored),
        phase_psnr_db=_psnr(np.angle(aligned), truth_phase, scored),
        amplitude_psnr_db=_psnr(np.abs(aligned), truth_amplitude, scored),
        frc50=frc_threshold_crossing(aligned, truth),
        flat_phase_ssim=_ssim(np.angle(flat_aligned), truth_phase, scored),
        flat_amplitude_ssim=_ssim(np.abs(flat_aligned), truth_amplitude, scored),
        shift_yx_px=shift,
    )


def reconstruction_metrics(reconstruction: Any, reference: np.ndarray) -> dict[str, Any]:
    """What ``metrics.json`` holds for a reconstruction: its scores, the network's alone, the stages.

    Both objects are scored over the same illuminated region, so the two rows compare directly.
    """
    metrics: dict[str, Any] = dict(compare(reconstruction.object, reference, reconstruction.illuminated).as_dict())
    network_object = reconstruction.network_object
    if network_object is not None and "refinement" in reconstruction.stages:
        network = compare(network_object, reference, reconstruction.illuminated).as_dict()
        metrics.update({f"network_{key}": value for key, value in network.items() if not key.startswith(("flat_", "residual"))})
    refinement = reconstruction.refinement
    metrics.update(
        stages=list(reconstruction.stages),
        seconds_train=0.0,
        seconds_infer=reconstruction.seconds,
        seconds_network=reconstruction.network_seconds,
        seconds_refinement=0.0 if refinement is None else refinement.seconds,
        refinement_epochs=0 if refinement is None else sum(not report.half_resolution for report in refinement.history),
        refinement_half_resolution_epochs=0
        if refinement is None
        else sum(report.half_resolution for report in refinement.history),
        refinement_start=None if refinement is None else str(refinement.start),
        refinement_converged=refinement is not None and refinement.converged,
        patterns_per_second_infer=reconstruction.patterns_per_second,
    )
    return metrics
