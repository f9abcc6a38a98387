"""Synthetic scans with known truth: objects, probes, scan paths and Poisson counts."""

from __future__ import annotations

import math
from enum import StrEnum

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from ptychodus_pinn import physics
from ptychodus_pinn.data import Scan, object_shape_for


class ObjectKind(StrEnum):
    SIEMENS = "siemens"
    LINES = "lines"


class ScanPath(StrEnum):
    RASTER = "raster"
    JITTERED = "jittered"
    SPIRAL = "spiral"


def _smooth_random_field(shape: tuple[int, int], sigma_px: float, rng: np.random.Generator) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal(shape), sigma_px, mode="wrap")
    field -= field.min()
    return field / max(field.max(), 1e-12)


def siemens_star(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Phase object: a Siemens star at a random centre with random spokes; amplitude from other features."""
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    spokes = int(rng.integers(12, 36))
    cy = height * rng.uniform(0.35, 0.65)
    cx = width * rng.uniform(0.35, 0.65)
    angle = np.arctan2(yy - cy, xx - cx) + rng.uniform(0, 2 * math.pi)
    radius = np.hypot(yy - cy, xx - cx)
    outer = 0.45 * min(height, width) * rng.uniform(0.8, 1.2)
    star = (np.sin(spokes * angle) > 0) & (radius < outer)
    star = gaussian_filter(star.astype(np.float64), 0.7)
    rings = 0.5 + 0.5 * np.cos(2 * math.pi * radius / rng.uniform(18, 40))
    amplitude_features = 0.6 * _smooth_random_field(shape, 6.0, rng) + 0.4 * rings
    amplitude = 0.55 + 0.45 * amplitude_features
    phase = 1.2 * star - 0.6 + 0.3 * (_smooth_random_field(shape, 10.0, rng) - 0.5)
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def random_lines(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Random straight lines of varying width; amplitude and phase from two independent sets."""
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)

    def line_layer(count: int) -> np.ndarray:
        layer = np.zeros(shape)
        for _ in range(count):
            theta = rng.uniform(0, math.pi)
            offset = rng.uniform(-0.5, 0.5) * math.hypot(height, width)
            distance = (yy - height / 2) * math.cos(theta) - (xx - width / 2) * math.sin(theta) - offset
            half_width = rng.uniform(1.0, 4.0)
            layer += rng.uniform(0.3, 1.0) * (np.abs(distance) < half_width)
        return gaussian_filter(np.clip(layer, 0, 1.5), 0.7)

    density = max(1, (height * width) // 1500)
    amplitude = 1.0 - 0.4 * np.clip(line_layer(density), 0, 1)
    phase = 1.0 * np.clip(line_layer(density), 0, 1.5) - 0.5
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def make_object(kind: ObjectKind | str, shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kind = ObjectKind(kind)
    return siemens_star(shape, rng) if kind is ObjectKind.SIEMENS else random_lines(shape, rng)


def soft_disk_probe(size: int, radius_px: float, curvature_rad: float = 2.0, edge_px: float = 2.0) -> np.ndarray:
    """Soft-edged disk with a quadratic phase (curvature radians at the rim): a defocused probe.

    The curvature breaks the twin-image ambiguity a flat, centro-symmetric probe would leave.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) - size // 2
    radius = np.hypot(yy, xx)
    amplitude = 0.5 * (1 - np.tanh((radius - radius_px) / edge_px))
    phase = curvature_rad * (radius / radius_px) ** 2
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)[None]


def scan_positions(
    count: int,
    step_px: float,
    path: ScanPath | str,
    rng: np.random.Generator,
) -> np.ndarray:
    """(count, 2) positions (y, x) starting at 0 with the given mean step."""
    path = ScanPath(path)
    if path is ScanPath.SPIRAL:
        index = np.arange(count)
        golden = math.pi * (3 - math.sqrt(5))
        radius = step_px * np.sqrt(index) * 0.56
        positions = np.stack([radius * np.sin(index * golden), radius * np.cos(index * golden)], axis=1)
        return positions - positions.min(axis=0)
    side = math.ceil(math.sqrt(count))
    rows, cols = np.divmod(np.arange(count), side)
    positions = np.stack([rows, cols], axis=1).astype(np.float64) * step_px
    if path is ScanPath.JITTERED:
        positions += rng.uniform(-0.25, 0.25, size=positions.shape) * step_px
    return positions - positions.min(axis=0)


def simulate_scan(
    object_kind: ObjectKind | str = ObjectKind.SIEMENS,
    photons: float = 1e5,
    n_positions: int = 576,
    N: int = 64,
    seed: int = 0,
    *,
    probe: np.ndarray | None = None,
    probe_radius_px: float | None = None,
    overlap: float = 0.7,
    path: ScanPath | str = ScanPath.JITTERED,
    bad_pixel_fraction: float = 0.0,
) -> Scan:
    """A scan with Poisson counts of ``photons`` per pattern (on average) over a known object.

    ``overlap`` is the linear overlap of neighbouring probe footprints (1 - step / diameter).
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap={overlap} must be in [0, 1)")
    if photons <= 0 or not math.isfinite(photons):
        raise ValueError(f"photons={photons} must be a positive number of photons per pattern")
    if n_positions < 1:
        raise ValueError(f"n_positions={n_positions} must be >= 1")
    rng = np.random.default_rng(seed)
    radius_px = probe_radius_px if probe_radius_px is not None else N / 4
    probe_modes = soft_disk_probe(N, radius_px) if probe is None else np.asarray(probe, np.complex64).reshape(-1, N, N)
    step_px = max(1.0, 2 * radius_px * (1 - overlap))
    margin_px = 4
    positions = scan_positions(n_positions, step_px, path, rng) + N // 2 + margin_px
    shape = object_shape_for(positions, N, margin_px)
    obj = make_object(object_kind, shape, seed)
    patches = physics.extract_patches(torch.from_numpy(obj), positions, N)
    expected = physics.predicted_counts(patches, torch.from_numpy(probe_modes), photons / float(np.sum(np.abs(probe_modes) ** 2)))
    counts = rng.poisson(expected.numpy().astype(np.float64)).astype(np.float32)
    bad_pixels = None
    if bad_pixel_fraction > 0:
        bad_pixels = rng.random((N, N)) < bad_pixel_fraction
        counts[:, bad_pixels] = 0
    return Scan(
        patterns=counts,
        positions_yx_px=positions,
        probe=probe_modes,
        object_shape=shape,
        bad_pixels=bad_pixels,
        object_guess=np.ones(shape, np.complex64),
        ground_truth=obj,
        metadata={
            "simulated": True,
            "object_kind": str(ObjectKind(object_kind)),
            "photons_per_pattern": photons,
            "seed": seed,
            "overlap": overlap,
            "path": str(ScanPath(path)),
            "probe_radius_px": radius_px,
        },
    )
