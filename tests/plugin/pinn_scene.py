"""Builds ptychodus products from engine scans (and back) for the plugin tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ptychodus.api.assemble import AssembledDiffractionData
from ptychodus.api.constants import energy_eV_to_wavelength_m
from ptychodus.api.geometry import PixelGeometry
from ptychodus.api.io import save_diffraction_data
from ptychodus.api.object import Object, ObjectCenter
from ptychodus.api.probe import ProbeSequence
from ptychodus.api.probe_positions import ProbePosition, ProbePositionSequence
from ptychodus.api.product import Product, ProductMetadata
from ptychodus.api.reconstruct import ReconstructInput
from ptychodus.api.simulate.diffraction import generate_diffraction_data

from ptychodus_pinn.engine.simulate import simulate_scan

PHOTON_ENERGY_EV = 10_000.0
DETECTOR_DISTANCE_M = 2.0
DETECTOR_PIXEL_M = 75e-6
CENTER_X_M, CENTER_Y_M = 3e-6, -2e-6  # off zero, so a sign or centre error would show
PHOTONS_PER_PATTERN = 1e5


def pixel_size_m(size_px: int) -> float:
    """Sample-plane pixel of a far-field geometry: λ z / (N d)."""
    return energy_eV_to_wavelength_m(PHOTON_ENERGY_EV) * DETECTOR_DISTANCE_M / (size_px * DETECTOR_PIXEL_M)


def product_from_scan(scan: Any, *, object_array: np.ndarray | None = None, name: str = "simulated") -> Product:
    """A ptychodus Product on the scan's object grid; positions converted engine px → metres."""
    size_px = scan.size_px
    dx_m = pixel_size_m(size_px)
    height, width = scan.object_shape
    ptychodus_px = scan.positions_yx_px - (size_px // 2 - (size_px - 1) / 2)
    x_m = CENTER_X_M + dx_m * (ptychodus_px[:, 1] - (width - 1) / 2)
    y_m = CENTER_Y_M + dx_m * (ptychodus_px[:, 0] - (height - 1) / 2)
    positions = ProbePositionSequence(
        [ProbePosition(i, float(x), float(y)) for i, (x, y) in enumerate(zip(x_m, y_m, strict=True))]
    )
    array = np.ones(scan.object_shape, np.complex64) if object_array is None else np.asarray(object_array, np.complex64)
    metadata = ProductMetadata(
        name=name,
        comments="",
        detector_distance_m=DETECTOR_DISTANCE_M,
        photon_energy_eV=PHOTON_ENERGY_EV,
        probe_photon_count=float(scan.mean_total_counts),
        exposure_time_s=1.0,
        mass_attenuation_m2_per_kg=0.0,
        tomography_angle_deg=0.0,
    )
    return Product(
        metadata=metadata,
        probe_positions=positions,
        probes=ProbeSequence(np.asarray(scan.probe, np.complex64), None, PixelGeometry(dx_m, dx_m)),
        object_=Object(array, PixelGeometry(dx_m, dx_m), ObjectCenter(CENTER_X_M, CENTER_Y_M)),
        losses=[],
    )


def reconstruct_input_from_scan(scan: Any, **kwargs: Any) -> ReconstructInput:
    bad = scan.bad_pixels if scan.bad_pixels is not None else np.zeros((scan.size_px, scan.size_px), bool)
    return ReconstructInput(scan.patterns, bad, product_from_scan(scan, **kwargs))


def load_ptychodus_simulated_scan(
    model: Any, folder: Path, *, n_positions: int = 256, seed: int = 0, size_px: int = 32
) -> tuple[Any, Any]:
    """A scan whose patterns ptychodus itself simulates from a product holding the true object.

    ``model`` is a ptychodus ModelCore; the diffraction file is written to ``folder``. Returns the
    product handle to reconstruct (object guess = ones, same geometry) and the truth scan.
    """
    truth = simulate_scan("siemens", photons=PHOTONS_PER_PATTERN, n_positions=n_positions, N=size_px, seed=seed)
    clean = generate_diffraction_data(product_from_scan(truth, object_array=truth.ground_truth), rng=None)
    expected = clean.get_patterns().astype(np.float64)
    expected *= PHOTONS_PER_PATTERN / expected.sum(axis=(1, 2)).mean()
    counts = np.random.default_rng(seed).poisson(expected).astype(np.float32)
    data = AssembledDiffractionData(
        clean.get_indexes(),
        counts,
        PixelGeometry(DETECTOR_PIXEL_M, DETECTOR_PIXEL_M),
        np.zeros(counts.shape[-2:], bool),
    )
    path = Path(folder) / "diffraction.h5"
    save_diffraction_data(path, data)
    diffraction = model.workflow_api.load_assembled_diffraction_data(path)
    product = model.workflow_api.register_product(product_from_scan(truth, name="sim"), diffraction=diffraction)
    width_m = product.get_product().object_.get_pixel_geometry().width_m
    if not np.isclose(width_m, pixel_size_m(size_px), rtol=1e-6):
        raise AssertionError(f"ptychodus changed the object pixel size to {width_m} m")
    return product, truth


def illuminated_mask(truth: Any) -> np.ndarray:
    """The object region inside the scan's bounding box of positions (where quality is scored)."""
    mask = np.zeros(truth.object_shape, bool)
    lo = np.floor(truth.positions_yx_px.min(axis=0)).astype(int)
    hi = np.ceil(truth.positions_yx_px.max(axis=0)).astype(int)
    mask[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1] = True
    return mask
