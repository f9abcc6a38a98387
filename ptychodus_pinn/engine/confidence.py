"""How well the counts determine the object, pixel by pixel: a Cramér–Rao bound from photon statistics.

Model (``physics.expected_counts_on_grid``): pattern j, detector pixel k has expected counts
``λ_jk = s · Σ_p |Ψ_pjk|²`` with ``Ψ_pj = F(O_j · P_pj)``, where ``O_j`` is the object window of
position j, ``P_pj`` probe mode p moved by the position's sub-pixel remainder, ``F`` the centred
*unitary* DFT (every element has ``|F_kr|² = 1/N²``) and ``s`` the intensity scale. For independent
Poisson pixels the Fisher information about real parameters θ is ``Σ_jk (∂λ_jk/∂θ)² / λ_jk``.

Write ``O(r) = A·e^{iφ}``. For one probe mode, ``∂Ψ_jk/∂A(r) = e^{iφ}·P_j(r)·F_kr =: D_jk`` and
``∂Ψ_jk/∂φ(r) = i·A·D_jk``; with ``∂λ = 2s·Re(conj(Ψ)·∂Ψ)`` and θ_jk the angle between Ψ_jk and D_jk:

* ``F_AA(r) = 4s Σ_jk |D_jk|² cos²θ_jk`` and ``F_φφ(r) = 4s A² Σ_jk |D_jk|² sin²θ_jk``, so
  ``F_AA + F_φφ / A² = 4s Σ_j |P_j(r)|² · Σ_k |F_kr|² = 4 s f D(r)`` **exactly**, with
  ``D(r) = Σ_j |P(r − r_j)|²`` the illumination summed over positions (``s·D`` is the dose: the
  counts a pixel of unit amplitude sends to the detector) and ``f`` the fraction of valid detector
  pixels (bad pixels carry no information and ``|F_kr|²`` is the same for every k);
* the split between amplitude and phase is ``cos²θ`` against ``sin²θ`` averaged over all detector
  pixels and positions, which is ½ unless the far field is special (a point-like exit wave), so
  ``F_φφ(r) ≈ 2 s f A(r)² D(r)`` and ``F_AA(r) ≈ 2 s f D(r)``.

Hence the bounds this module returns (radians, and object amplitude units)::

    σ_φ(r) ≈ 1 / (A(r) · sqrt(2 · s · f · D(r)))        σ_A(r) ≈ 1 / sqrt(2 · s · f · D(r))

(The often-quoted ``1 / (2·A·sqrt(dose))`` puts all of the trace ``4 s D`` into the phase; it is
√2 too optimistic.) Incoherent modes: the cross terms of ``Σ_p`` average out and each detector
pixel weighs the modes by their share of the intensity there, so ``D`` becomes
``Σ_j Σ_p π_p |P_p(r − r_j)|²`` with ``π_p`` mode p's share of the probe power (Cauchy–Schwarz
makes ``4 s f Σ_p |P_p|²`` a strict upper bound of the trace). Checked against the brute-force
Fisher information ``Jᵀ diag(1/λ) J`` of the exact forward model in
``tests/engine/test_confidence.py``: the trace identity to 1e-5 (float32), the phase term within ±20 %
per pixel (median within 2 %), with two modes 0.8–1.35 per pixel (median +6 %).

Assumptions, and what the number is not:

* independent Poisson counts with no background and no readout noise;
* the **diagonal** of the Fisher matrix: the bound for one pixel as if every other pixel, the
  probe and the positions were known. The true Cramér–Rao bound inverts the whole matrix; on
  small dense scans it is 1.1–1.25× this value once the global phase offset and ramp (which the
  data cannot fix) are removed, and larger at the edge of the scanned field;
* ``s``, the probe and ``A`` are taken from the reconstruction (plug-in values, not the truth);
* it is a lower bound on the noise from counting statistics only: model error, probe error,
  position error, an unconverged solver and the network's prior are all outside it.

Pixels that no probe position reaches carry no information: their standard deviation is ``inf``
and their confidence 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ptychodus_pinn.engine import physics

# positions per chunk when summing shifted probe intensities (bounds memory for large N)
_CHUNK_BYTES = 64 << 20


def mode_weights(probe: np.ndarray) -> np.ndarray:
    """Each incoherent mode's share of the probe power, (P,) summing to 1."""
    power = np.sum(np.abs(np.asarray(probe).reshape(-1, *np.shape(probe)[-2:])) ** 2, axis=(-2, -1), dtype=np.float64)
    total = float(power.sum())
    if not math.isfinite(total) or total <= 0:
        raise ValueError("the probe has zero or non-finite power; a confidence map needs a probe with non-zero values")
    return np.asarray(power / total, np.float64)


def illumination_map(
    probe: np.ndarray,
    positions_yx_px: np.ndarray,
    object_shape: tuple[int, int],
    *,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """``D(r) = Σ_j Σ_p w_p |P_p(r − r_j)|²`` (float64, ``object_shape``) with the engine's grid conventions.

    Each position lights an exact N×N window (``physics.window_top_left``) with the probe moved
    by its sub-pixel remainder (``physics.shifted_probes``), as in the forward model; windows may
    hang over the grid's edge (their outside part is dropped). ``weights`` per mode defaults to 1
    (plain illumination); ``mode_weights(probe)`` gives the information-weighted sum.
    """
    probe_modes = np.asarray(probe).reshape(-1, *np.shape(probe)[-2:])
    size = probe_modes.shape[-1]
    height, width = int(object_shape[0]), int(object_shape[1])
    top_left, fraction = physics.window_top_left(np.asarray(positions_yx_px, np.float64), size)
    # a canvas that holds every window whole; the grid is cut out of it at the end
    before = np.maximum(0, -top_left.min(axis=0, initial=0))
    after = np.maximum(0, (top_left + size).max(axis=0, initial=0) - (height, width))
    canvas_shape = (height + int(before[0] + after[0]), width + int(before[1] + after[1]))
    top_left = top_left + before
    mode_weight = torch.ones(probe_modes.shape[0]) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    probe_tensor = torch.from_numpy(np.ascontiguousarray(probe_modes, np.complex64))
    canvas = torch.zeros(canvas_shape[0] * canvas_shape[1], dtype=torch.float64)
    chunk = max(1, _CHUNK_BYTES // (8 * probe_modes.size))
    for start in range(0, top_left.shape[0], chunk):
        probes = physics.shifted_probes(probe_tensor, torch.from_numpy(fraction[start : start + chunk]))
        intensity = ((probes.real.square() + probes.imag.square()) * mode_weight[:, None, None]).sum(dim=1)
        flat = physics.window_flat_indices(torch.from_numpy(top_left[start : start + chunk]), size, canvas_shape[1])
        physics.add_at(canvas, flat.reshape(-1), intensity.reshape(-1).to(torch.float64))
    grid = canvas.reshape(canvas_shape)[int(before[0]) : int(before[0]) + height, int(before[1]) : int(before[1]) + width]
    return grid.clamp_min(0).numpy()


def valid_fraction(bad_pixels: np.ndarray | None) -> float:
    """Share of detector pixels that count (bad pixels carry no information)."""
    if bad_pixels is None:
        return 1.0
    return float(np.count_nonzero(~np.asarray(bad_pixels, bool))) / max(int(np.size(bad_pixels)), 1)


def effective_dose(
    probe: np.ndarray,
    positions_yx_px: np.ndarray,
    object_shape: tuple[int, int],
    intensity_scale: float,
    *,
    valid_detector_fraction: float = 1.0,
) -> np.ndarray:
    """``s · f · Σ_j Σ_p π_p |P_p(r − r_j)|²``: for one mode, the counts a unit-amplitude pixel sends to valid pixels."""
    if not (math.isfinite(intensity_scale) and intensity_scale > 0):
        raise ValueError(f"intensity_scale={intensity_scale!r} must be a positive number")
    if not 0 <= valid_detector_fraction <= 1:
        raise ValueError(f"valid_detector_fraction={valid_detector_fraction!r} must be in [0, 1]")
    weighted = illumination_map(probe, positions_yx_px, object_shape, weights=mode_weights(probe))
    return intensity_scale * valid_detector_fraction * weighted


def amplitude_std(dose: np.ndarray) -> np.ndarray:
    """σ_A = 1 / sqrt(2·dose) in object-amplitude units; ``inf`` where the dose is 0."""
    dose = np.asarray(dose, np.float64)
    with np.errstate(divide="ignore"):
        return np.where(dose > 0, 1.0 / np.sqrt(2.0 * np.maximum(dose, 0.0)), np.inf)


def phase_std(obj: np.ndarray, dose: np.ndarray) -> np.ndarray:
    """σ_φ = 1 / (|O| · sqrt(2·dose)) in radians; ``inf`` where the dose or the amplitude is 0."""
    information = 2.0 * np.abs(np.asarray(obj, np.complex128)) ** 2 * np.asarray(dose, np.float64)
    with np.errstate(divide="ignore"):
        return np.where(information > 0, 1.0 / np.sqrt(np.maximum(information, 0.0)), np.inf)


def confidence(std_rad: np.ndarray, tolerance_rad: float = 0.1) -> np.ndarray:
    """A 0–1 reading of σ_φ: ``t² / (t² + σ²)`` (½ where σ equals the tolerance t, 0 where unlit).

    The Wiener factor of a feature of size t against noise of size σ; the tolerance is the user's
    choice, the map itself (``std_rad``) is not.
    """
    if not (math.isfinite(tolerance_rad) and tolerance_rad > 0):
        raise ValueError(f"tolerance_rad={tolerance_rad!r} must be a positive number")
    variance = np.square(np.asarray(std_rad, np.float64))
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(variance), tolerance_rad**2 / (tolerance_rad**2 + variance), 0.0)


def scan_intensity_scale(patterns: np.ndarray, probe: np.ndarray, bad_pixels: np.ndarray | None) -> float:
    """The refinement's intensity scale: mean counts per pattern on valid pixels ÷ Σ|P|² (all modes)."""
    patterns = np.asarray(patterns)
    valid = 1.0 if bad_pixels is None else (~np.asarray(bad_pixels, bool)).astype(np.float64)
    total = float(np.sum(patterns.sum(axis=0, dtype=np.float64) * valid))
    mean_counts = max(total / max(patterns.shape[0], 1), physics.EPSILON_COUNTS)
    return physics.intensity_scale_from_data(mean_counts, np.asarray(probe))


def confidence_maps(
    obj: np.ndarray,
    probe: np.ndarray,
    positions_yx_px: np.ndarray,
    intensity_scale: float,
    bad_pixels: np.ndarray | None = None,
    *,
    illumination: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(σ_φ in rad, σ_A) as float32 maps on the object's grid for a reconstruction and its probe.

    ``illumination``: ``Σ_j Σ_p |P_p(r − r_j)|²`` when the caller has it already (the refinement
    computes it for its preconditioner); used for a one-mode probe, where it is the information
    weighting itself, so the map costs a few element-wise operations instead of M probe shifts.
    """
    probe = np.asarray(probe)
    fraction = valid_fraction(bad_pixels)
    one_mode = probe.ndim == 2 or probe.shape[0] == 1
    if illumination is not None and one_mode and np.shape(illumination) == np.shape(obj):
        if not (math.isfinite(intensity_scale) and intensity_scale > 0):
            raise ValueError(f"intensity_scale={intensity_scale!r} must be a positive number")
        dose = intensity_scale * fraction * np.clip(np.asarray(illumination, np.float64), 0.0, None)
    else:
        dose = effective_dose(probe, positions_yx_px, np.shape(obj), intensity_scale, valid_detector_fraction=fraction)
    return phase_std(obj, dose).astype(np.float32), amplitude_std(dose).astype(np.float32)
