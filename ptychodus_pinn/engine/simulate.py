"""Synthetic scans with known truth: objects, probes, scan paths and Poisson counts."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from enum import StrEnum

import numpy as np
import torch
from scipy.ndimage import gaussian_filter, map_coordinates
from scipy.spatial import cKDTree

from ptychodus_pinn.engine import physics
from ptychodus_pinn.engine.data import Scan, object_shape_for


class ObjectKind(StrEnum):
    SIEMENS = "siemens"
    LINES = "lines"
    NATURAL = "natural"
    CIRCUIT = "circuit"
    GRAINS = "grains"


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


# Bundled with scikit-image (no download); colour ones are converted to grey.
NATURAL_IMAGES = (
    "camera",
    "astronaut",
    "coffee",
    "chelsea",
    "immunohistochemistry",
    "moon",
    "coins",
    "gravel",
    "rocket",
    "clock",
)
# Other bundled photographs, for training corpora: a network pretrained on these has never seen the
# natural objects the benchmarks and tests simulate (NATURAL_IMAGES).
CORPUS_PHOTOGRAPHS = ("cat", "retina", "hubble_deep_field", "brick", "grass", "cell", "page", "text")


@functools.lru_cache(maxsize=len(NATURAL_IMAGES))
def _grey_photograph(name: str) -> np.ndarray:
    """One of ``NATURAL_IMAGES`` as float64 grey levels in [0, 1] (read-only, cached)."""
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.util import img_as_float

    image = getattr(skimage.data, name)()
    grey = rgb2gray(image[..., :3]) if image.ndim == 3 else img_as_float(image)
    grey = np.asarray(grey, np.float64)
    grey.setflags(write=False)
    return grey


def _normalized(image: np.ndarray) -> np.ndarray:
    """Map the 1st–99th percentiles to [0, 1], clipping beyond (a constant image becomes 0.5)."""
    low, high = (float(v) for v in np.percentile(image, [1.0, 99.0]))
    return np.clip((image - low) / (high - low), 0.0, 1.0) if high > low else np.full_like(image, 0.5)


def random_view(image: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A randomly rotated, zoomed and placed crop of ``image`` resampled bilinearly onto ``shape``, in [0, 1].

    The crop's side is 30–60 % of the image's shorter side, so the rotated crop always lies inside
    the image; when the crop is shrunk, the image is first anti-aliased as ``skimage.transform.resize``
    does (Gaussian, sigma = (zoom - 1) / 2) — no other smoothing.
    """
    height, width = shape
    side = rng.uniform(0.3, 0.6) * min(image.shape)
    step = side / max(height, width)  # image pixels per object pixel
    theta = rng.uniform(0, 2 * math.pi)
    reach = step * math.hypot(height, width) / 2 + 1
    cy = rng.uniform(reach, image.shape[0] - 1 - reach)
    cx = rng.uniform(reach, image.shape[1] - 1 - reach)
    source = gaussian_filter(image, (step - 1) / 2) if step > 1 else image
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    yy, xx = (yy - (height - 1) / 2) * step, (xx - (width - 1) / 2) * step
    rows = cy + math.cos(theta) * yy - math.sin(theta) * xx
    cols = cx + math.sin(theta) * yy + math.cos(theta) * xx
    return _normalized(map_coordinates(source, [rows, cols], order=1, mode="nearest"))


def natural_object(shape: tuple[int, int], rng: np.random.Generator, photographs: Sequence[str] = NATURAL_IMAGES) -> np.ndarray:
    """Amplitude in [0.5, 1] from one photograph and phase in [-1, 1] rad from another, random views."""
    first, second = rng.choice(len(photographs), size=2, replace=False)
    amplitude = 0.5 + 0.5 * random_view(_grey_photograph(photographs[first]), shape, rng)
    phase = 2.0 * random_view(_grey_photograph(photographs[second]), shape, rng) - 1.0
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def _manhattan_layer(shape: tuple[int, int], rng: np.random.Generator, horizontal_fraction: float) -> np.ndarray:
    """Boolean mask of one layout layer: wires (1–4 px wide) on a routing grid, rectangular pads and square vias."""
    height, width = shape
    mask = np.zeros(shape, bool)
    area = height * width
    pitch = int(rng.integers(4, 9))
    for _ in range(max(2, area // 1000)):
        wire = int(rng.integers(1, 5))
        length = int(rng.integers(min(height, width) // 8 + 2, max(height, width) // 2 + 3))
        y, x = pitch * int(rng.integers(0, height // pitch + 1)), pitch * int(rng.integers(0, width // pitch + 1))
        if rng.random() < horizontal_fraction:
            mask[y : y + wire, max(0, x - length // 2) : x + length // 2] = True
        else:
            mask[max(0, y - length // 2) : y + length // 2, x : x + wire] = True
    for _ in range(max(1, area // 4000)):
        pad_h, pad_w = (int(v) for v in rng.integers(4, 13, size=2))
        y, x = int(rng.integers(0, height)), int(rng.integers(0, width))
        mask[y : y + pad_h, x : x + pad_w] = True
    for _ in range(max(1, area // 1500)):
        via = int(rng.integers(2, 4))
        y, x = int(rng.integers(0, height)), int(rng.integers(0, width))
        mask[y : y + via, x : x + via] = True
    return mask


def circuit_object(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Manhattan circuit layout on 2–3 layers, each with its own phase and absorption.

    Phases add over overlapping layers (total 0 … ≤ 1.2 rad), transmissions multiply
    (amplitude 0.6 … 1.0); blurred with sigma 0.6 px.
    """
    layers = int(rng.integers(2, 4))
    layer_phase = rng.uniform(0.25, 0.6, size=layers)
    layer_phase *= min(1.0, 1.2 / layer_phase.sum())
    layer_absorption = rng.uniform(0.05, 0.15, size=layers)
    phase = np.zeros(shape)
    amplitude = np.ones(shape)
    for index in range(layers):
        mask = _manhattan_layer(shape, rng, horizontal_fraction=0.8 if index % 2 == 0 else 0.2)
        phase += layer_phase[index] * mask
        amplitude *= 1.0 - layer_absorption[index] * mask
    phase = gaussian_filter(phase, 0.6)
    amplitude = np.clip(gaussian_filter(amplitude, 0.6), 0.6, 1.0)
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def grains_object(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Voronoi grains, each with its own phase (±0.8 rad) and amplitude (0.6–1), thin dark boundaries, blur 0.6 px."""
    height, width = shape
    grain_px = rng.uniform(8.0, 20.0)
    count = max(4, round(height * width / grain_px**2))
    seeds = rng.uniform([-2.0, -2.0], [height + 1.0, width + 1.0], size=(count, 2))
    grain_phase = rng.uniform(-0.8, 0.8, size=count)
    grain_amplitude = rng.uniform(0.65, 1.0, size=count)
    pixels = np.indices(shape).reshape(2, -1).T.astype(np.float64)
    distance, nearest = cKDTree(seeds).query(pixels, k=2)
    boundary = (distance[:, 1] - distance[:, 0] < 1.0).reshape(shape)
    phase = np.where(boundary, 0.0, grain_phase[nearest[:, 0]].reshape(shape))
    amplitude = np.where(boundary, 0.6, grain_amplitude[nearest[:, 0]].reshape(shape))
    phase = gaussian_filter(phase, 0.6)
    amplitude = gaussian_filter(amplitude, 0.6)
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


_OBJECT_MAKERS = {
    ObjectKind.SIEMENS: siemens_star,
    ObjectKind.LINES: random_lines,
    ObjectKind.NATURAL: natural_object,
    ObjectKind.CIRCUIT: circuit_object,
    ObjectKind.GRAINS: grains_object,
}


def make_object(
    kind: ObjectKind | str, shape: tuple[int, int], seed: int, photographs: Sequence[str] | None = None
) -> np.ndarray:
    """The complex64 object of ``kind`` and ``shape``; the same seed gives the same object.

    ``photographs``: the scikit-image photographs natural objects are drawn from (default NATURAL_IMAGES).
    """
    rng = np.random.default_rng(seed)
    kind = ObjectKind(kind)
    if photographs is not None and kind is ObjectKind.NATURAL:
        if len(photographs) < 2:
            raise ValueError("natural objects need at least two photographs (amplitude and phase)")
        return natural_object(shape, rng, tuple(photographs))
    return _OBJECT_MAKERS[kind](shape, rng)


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
    probe_curvature_rad: float = 2.0,
    overlap: float = 0.7,
    path: ScanPath | str = ScanPath.JITTERED,
    bad_pixel_fraction: float = 0.0,
    photographs: Sequence[str] | None = None,
) -> Scan:
    """A scan with Poisson counts of ``photons`` per pattern (on average) over a known object.

    ``overlap`` is the linear overlap of neighbouring probe footprints (1 - step / diameter);
    ``probe_curvature_rad`` the default probe's defocus phase at its rim (``soft_disk_probe``).
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap={overlap} must be in [0, 1)")
    if photons <= 0 or not math.isfinite(photons):
        raise ValueError(f"photons={photons} must be a positive number of photons per pattern")
    if n_positions < 1:
        raise ValueError(f"n_positions={n_positions} must be >= 1")
    rng = np.random.default_rng(seed)
    radius_px = probe_radius_px if probe_radius_px is not None else N / 4
    if probe is None:
        probe_modes = soft_disk_probe(N, radius_px, probe_curvature_rad)
    else:
        probe_modes = np.asarray(probe, np.complex64).reshape(-1, N, N)
    step_px = max(1.0, 2 * radius_px * (1 - overlap))
    margin_px = 4
    positions = scan_positions(n_positions, step_px, path, rng) + N // 2 + margin_px
    shape = object_shape_for(positions, N, margin_px)
    obj = make_object(object_kind, shape, seed, photographs)
    # the engine's one forward model: exact object windows, probe shifted by the sub-pixel remainder
    scale = photons / float(np.sum(np.abs(probe_modes) ** 2))
    expected = physics.expected_counts_on_grid(torch.from_numpy(obj), torch.from_numpy(probe_modes), positions, scale)
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
