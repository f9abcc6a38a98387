"""Quality of a reconstruction against a known object, after removing its ambiguities (SPEC §4, §10).

One implementation for the CLI, the demo, the tests and the benchmarks. Removed before scoring:
sub-pixel shift, global phase offset, phase ramp, and amplitude scale. Scored over the
illuminated region only, and always beside the score of a flat object (the floor to clear).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.registration import phase_cross_correlation


def illuminated_box(illuminated: np.ndarray, erode_px: int = 0) -> tuple[slice, slice]:
    """Bounding box of the (eroded) illuminated region."""
    mask = ndimage.binary_erosion(illuminated, iterations=erode_px) if erode_px else illuminated
    if not mask.any():
        raise ValueError("no illuminated pixels to score")
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def remove_phase_ramp_and_offset(estimate: np.ndarray, reference: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Multiply ``estimate`` by the linear phase (ramp + offset) that best matches ``reference``.

    The ramp is the peak of the spectrum of estimate·conj(reference), refined on a fine grid.
    """
    product = estimate * np.conj(reference) * weight
    height, width = product.shape
    pad = 4
    spectrum = np.abs(np.fft.fft2(product, s=(pad * height, pad * width)))
    peak = np.unravel_index(np.argmax(spectrum), spectrum.shape)
    ky = np.fft.fftfreq(pad * height)[peak[0]]
    kx = np.fft.fftfreq(pad * width)[peak[1]]
    yy, xx = np.mgrid[0:height, 0:width]
    best = (-math.inf, ky, kx)
    step = 1.0 / (pad * max(height, width))
    for dy in np.linspace(-step, step, 9):
        for dx in np.linspace(-step, step, 9):
            value = abs(np.sum(product * np.exp(-2j * math.pi * ((ky + dy) * yy + (kx + dx) * xx))))
            if value > best[0]:
                best = (value, ky + dy, kx + dx)
    _, ky, kx = best
    ramp = np.exp(-2j * math.pi * (ky * yy + kx * xx))
    offset = np.angle(np.sum(product * ramp))
    return estimate * ramp * np.exp(-1j * offset)


def flatten_phase(obj: np.ndarray, illuminated: np.ndarray) -> np.ndarray:
    """Remove the dominant linear phase (ramp and offset) over the illuminated region, for display.

    A phase ramp is an ambiguity of the reconstruction (a shift of the diffraction pattern
    relative to the probe guess); without a reference, the best linear phase is the one that
    maximises |Σ obj · e^{-i(k·r + c)}| over lit pixels.
    """
    weight = illuminated.astype(np.float64)
    flat = np.where(illuminated, obj, 0)
    return np.where(illuminated, remove_phase_ramp_and_offset(flat, np.ones_like(flat), weight), obj)


def frc_threshold_crossing(first: np.ndarray, second: np.ndarray, threshold: float = 0.5) -> float:
    """Spatial frequency (fraction of Nyquist, 1 = finest) where the FRC first drops below threshold."""
    size = min(first.shape)
    top, left = (first.shape[0] - size) // 2, (first.shape[1] - size) // 2
    first = first[top : top + size, left : left + size]
    second = second[top : top + size, left : left + size]
    window = np.outer(np.hanning(size), np.hanning(size))
    f1 = np.fft.fftshift(np.fft.fft2(first * window))
    f2 = np.fft.fftshift(np.fft.fft2(second * window))
    yy, xx = np.indices((size, size)) - size // 2
    rings = np.hypot(yy, xx).astype(int)
    nyquist = size // 2
    numerator = ndimage.sum_labels(np.real(f1 * np.conj(f2)), rings, index=np.arange(nyquist))
    power1 = ndimage.sum_labels(np.abs(f1) ** 2, rings, index=np.arange(nyquist))
    power2 = ndimage.sum_labels(np.abs(f2) ** 2, rings, index=np.arange(nyquist))
    frc = numerator / np.sqrt(np.maximum(power1 * power2, 1e-30))
    below = np.flatnonzero(frc[1:] < threshold)
    ring = below[0] + 1 if below.size else nyquist
    return float(ring / nyquist)


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


def _ssim(estimate: np.ndarray, reference: np.ndarray) -> float:
    data_range = float(reference.max() - reference.min()) or 1.0
    return float(structural_similarity(reference, estimate, data_range=data_range))


def _psnr(estimate: np.ndarray, reference: np.ndarray) -> float:
    data_range = float(reference.max() - reference.min()) or 1.0
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(reference, estimate, data_range=data_range))


MAX_REGISTRATION_SHIFT_PX = 4.0


def align_to_reference(
    estimate: np.ndarray, reference: np.ndarray, illuminated: np.ndarray, erode_px: int = 4
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Crop both to the illuminated box and remove shift, phase ramp/offset and amplitude scale.

    Returns the aligned estimate, the cropped reference, and the sub-pixel shift that was removed.
    Shifts beyond a few pixels are not an ambiguity but a failure, so they are not removed.
    """
    rows, cols = illuminated_box(illuminated, erode_px)
    reference_crop = reference[rows, cols]
    estimate_crop = estimate[rows, cols]
    shift, _, _ = phase_cross_correlation(reference_crop, estimate_crop, upsample_factor=20, normalization=None)
    if np.hypot(*shift) > MAX_REGISTRATION_SHIFT_PX:
        shift = np.zeros(2)
    if np.hypot(*shift) > 0.05:
        estimate_crop = ndimage.fourier_shift(np.fft.fft2(estimate_crop), shift)
        estimate_crop = np.fft.ifft2(estimate_crop)
    weight = np.ones(reference_crop.shape)
    aligned = remove_phase_ramp_and_offset(estimate_crop, reference_crop, weight)
    amplitude_scale = np.sum(np.abs(aligned) * np.abs(reference_crop)) / max(np.sum(np.abs(aligned) ** 2), 1e-30)
    return aligned * amplitude_scale, reference_crop, (float(shift[0]), float(shift[1]))


def compare(estimate: np.ndarray, reference: np.ndarray, illuminated: np.ndarray) -> Quality:
    """Score a complex reconstruction against the true object on the same grid."""
    if estimate.shape != reference.shape or illuminated.shape != reference.shape:
        raise ValueError(f"shapes differ: estimate {estimate.shape}, reference {reference.shape}, mask {illuminated.shape}")
    aligned, truth, shift = align_to_reference(estimate, reference, illuminated)
    truth_phase = np.angle(truth)
    truth_amplitude = np.abs(truth)
    flat = np.full_like(truth, np.mean(np.abs(truth)))
    flat_aligned = remove_phase_ramp_and_offset(flat, truth, np.ones(truth.shape))
    return Quality(
        phase_ssim=_ssim(np.angle(aligned), truth_phase),
        amplitude_ssim=_ssim(np.abs(aligned), truth_amplitude),
        phase_psnr_db=_psnr(np.angle(aligned), truth_phase),
        amplitude_psnr_db=_psnr(np.abs(aligned), truth_amplitude),
        frc50=frc_threshold_crossing(aligned, truth),
        flat_phase_ssim=_ssim(np.angle(flat_aligned), truth_phase),
        flat_amplitude_ssim=_ssim(np.abs(flat_aligned), truth_amplitude),
        shift_yx_px=shift,
    )
