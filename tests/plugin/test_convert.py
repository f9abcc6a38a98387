"""ReconstructInput → Scan → Product, checked against ptychodus's own geometry and forward model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pinn_scene import product_from_scan, reconstruct_input_from_scan
from ptychodus.api.probe import ProbeGeometry, ProbeSequence
from ptychodus.api.product import Product
from ptychodus.api.reconstruct import ReconstructInput
from ptychodus.api.simulate.diffraction import generate_diffraction_data

from ptychodus_pinn.engine import physics
from ptychodus_pinn.engine.data import ptychodus_position_offset_px
from ptychodus_pinn.engine.simulate import simulate_scan
from ptychodus_pinn.plugin.convert import (
    ConversionError,
    output_product,
    reconstruct_input_to_scan,
)


@pytest.fixture(scope="module")
def scan():  # type: ignore[no-untyped-def]
    return simulate_scan("siemens", photons=1e4, n_positions=40, N=32, seed=1, bad_pixel_fraction=0.01)


@pytest.mark.parametrize("size_px", [32, 64])
def test_patch_windows_agree_with_ptychodus(size_px: int) -> None:
    """Golden case: where ptychodus's resolve_patch_bounds puts a probe, the engine's convention agrees."""
    geometry = ProbeGeometry(width_px=size_px, height_px=size_px, pixel_width_m=1.0, pixel_height_m=1.0)
    for cx_px, cy_px in [(100.5, 40.5), (77.5, 203.5), (64.0, 50.0), (90.25, 33.75)]:
        bounds = geometry.resolve_patch_bounds(cx_px, cy_px)
        engine_x = cx_px + ptychodus_position_offset_px(size_px)
        engine_y = cy_px + ptychodus_position_offset_px(size_px)
        # ptychodus: columns x_lower.. plus a Fourier shift dx of the probe; engine: pixel N//2 at the position
        assert bounds.x_slice.start + size_px // 2 + bounds.dx == pytest.approx(engine_x)
        assert bounds.y_slice.start + size_px // 2 + bounds.dy == pytest.approx(engine_y)


def test_positions_round_trip_and_fields(scan) -> None:  # type: ignore[no-untyped-def]
    converted = reconstruct_input_to_scan(reconstruct_input_from_scan(scan))
    np.testing.assert_allclose(converted.positions_yx_px, scan.positions_yx_px, atol=1e-6)
    assert converted.object_shape == scan.object_shape
    np.testing.assert_array_equal(converted.patterns, scan.patterns)
    np.testing.assert_array_equal(converted.bad_pixels, scan.bad_pixels)
    assert converted.probe.shape == (1, 32, 32)
    assert converted.object_guess is None


def test_ptychodus_forward_model_matches_engine_at_converted_positions() -> None:
    """ptychodus simulates patterns from its product; the engine, at the converted positions, predicts the same."""
    base = simulate_scan("siemens", photons=1e4, n_positions=12, N=32, seed=2)
    # integer engine positions: ptychodus then needs no sub-pixel probe shift, so the comparison is exact
    positions = np.rint(base.positions_yx_px)
    from ptychodus_pinn.engine.data import Scan

    scan = Scan(base.patterns, positions, base.probe, base.object_shape, ground_truth=base.ground_truth)
    product = product_from_scan(scan, object_array=scan.ground_truth)
    simulated = generate_diffraction_data(product, rng=None).get_patterns().astype(np.float64)
    converted = reconstruct_input_to_scan(ReconstructInput(simulated, np.zeros((32, 32), bool), product))

    def engine_counts(positions_yx_px: np.ndarray) -> np.ndarray:
        patches = physics.extract_patches(torch.from_numpy(scan.ground_truth), positions_yx_px, 32)
        return physics.predicted_counts(patches, torch.from_numpy(scan.probe), 1.0).double().numpy()

    def misfit(predicted: np.ndarray) -> float:
        scale = float((predicted * simulated).sum() / (predicted * predicted).sum())  # ptychodus's propagator normalisation
        return float(np.linalg.norm(scale * predicted - simulated) / np.linalg.norm(simulated))

    right = misfit(engine_counts(converted.positions_yx_px))
    wrong = misfit(engine_counts(converted.positions_yx_px - 0.5))  # without the centre convention offset
    # the residual is ptychodus's Fresnel-transform chirp (~0.03 rad at the probe edge), not position
    assert right < 1e-2, (right, wrong)
    assert wrong > 5 * right, (right, wrong)  # measured: 0.0029 vs 0.027


def test_output_product_keeps_geometry(scan) -> None:  # type: ignore[no-untyped-def]
    parameters = reconstruct_input_from_scan(scan)
    recon = np.full(scan.object_shape, 0.5 + 0.5j, np.complex64)
    illuminated = np.zeros(scan.object_shape, bool)
    illuminated[5:-5, 5:-5] = True
    product = output_product(parameters, recon, illuminated=illuminated, losses=[])
    source = parameters.product.object_
    assert product.object_.get_geometry() == source.get_geometry()
    assert product.metadata is parameters.product.metadata
    assert product.probe_positions is parameters.product.probe_positions
    assert product.probes is parameters.product.probes
    array = product.object_.get_layer(0)
    assert array[10, 10] == pytest.approx(0.5 + 0.5j)
    assert array[0, 0] == pytest.approx(1.0)  # unilluminated: the input object
    zero = output_product(parameters, recon, illuminated=illuminated, fill_with_input=False).object_.get_layer(0)
    assert zero[0, 0] == 0


def test_output_product_with_a_refined_probe(scan) -> None:  # type: ignore[no-untyped-def]
    parameters = reconstruct_input_from_scan(scan)
    refined = (np.asarray(scan.probe) * 1.5).astype(np.complex64)
    product = output_product(parameters, None, probe=refined)
    assert product.probes is not parameters.product.probes
    assert np.allclose(product.probes.get_probe_no_opr().get_array(), refined)
    assert product.probes.get_pixel_geometry() == parameters.product.probes.get_pixel_geometry()
    with pytest.raises(ConversionError, match="refined probe"):
        output_product(parameters, None, probe=np.ones((1, 8, 8), np.complex64))


def test_refusals_name_the_fix(scan) -> None:  # type: ignore[no-untyped-def]
    parameters = reconstruct_input_from_scan(scan)
    product = parameters.product
    probes = product.probes
    opr = ProbeSequence(np.stack([probes.get_array()[0]] * 2), np.ones((scan.count, 2)), probes.get_pixel_geometry())
    with pytest.raises(ConversionError, match="OPR"):
        reconstruct_input_to_scan(
            ReconstructInput(parameters.diffraction_patterns, parameters.bad_pixels, _with(product, probes=opr))
        )
    from ptychodus.api.geometry import PixelGeometry
    from ptychodus.api.object import Object

    obj = product.object_
    coarse = Object(
        obj.get_array(), PixelGeometry(2 * obj.get_pixel_geometry().width_m, obj.get_pixel_geometry().height_m), obj.get_center()
    )
    with pytest.raises(ConversionError, match="pixel width"):
        reconstruct_input_to_scan(
            ReconstructInput(parameters.diffraction_patterns, parameters.bad_pixels, _with(product, object_=coarse))
        )
    small = Object(obj.get_array()[:, :8, :8], obj.get_pixel_geometry(), obj.get_center())
    with pytest.raises(ConversionError, match="object"):
        reconstruct_input_to_scan(
            ReconstructInput(parameters.diffraction_patterns, parameters.bad_pixels, _with(product, object_=small))
        )


def _with(product: Product, **changes: object) -> Product:
    import dataclasses

    return dataclasses.replace(product, **changes)  # type: ignore[arg-type]
