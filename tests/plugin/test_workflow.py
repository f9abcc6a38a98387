"""Headless runs through ptychodus's own workflow API: one-click reconstruct, Stop, train/save/load/infer."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pinn_scene import pixel_size_m, product_from_scan
from ptychodus.api.assemble import AssembledDiffractionData
from ptychodus.api.geometry import PixelGeometry
from ptychodus.api.io import save_diffraction_data
from ptychodus.api.simulate.diffraction import generate_diffraction_data

from ptychodus_pinn.metrics import compare
from ptychodus_pinn.simulate import simulate_scan

RECONSTRUCT = "ptychopinn (pytorch)_reconstruct"
TRAIN_INFER = "ptychopinn (pytorch)_train+infer"
PHOTONS_PER_PATTERN = 1e5


def load_ptychodus_simulated_scan(model: Any, tmp_path: Path, *, n_positions: int = 256, seed: int = 0) -> tuple[Any, Any]:
    """A scan whose patterns ptychodus itself simulates from a product holding the true object.

    Returns the product handle to reconstruct (object guess = ones, same geometry) and the truth scan.
    """
    truth = simulate_scan("siemens", photons=PHOTONS_PER_PATTERN, n_positions=n_positions, N=32, seed=seed)
    clean = generate_diffraction_data(product_from_scan(truth, object_array=truth.ground_truth), rng=None)
    expected = clean.get_patterns().astype(np.float64)
    expected *= PHOTONS_PER_PATTERN / expected.sum(axis=(1, 2)).mean()
    counts = np.random.default_rng(seed).poisson(expected).astype(np.float32)
    data = AssembledDiffractionData(
        clean.get_indexes(),
        counts,
        PixelGeometry(75e-6, 75e-6),
        np.zeros(counts.shape[-2:], bool),
    )
    path = tmp_path / "diffraction.h5"
    save_diffraction_data(path, data)
    diffraction = model.workflow_api.load_assembled_diffraction_data(path)
    product = model.workflow_api.register_product(product_from_scan(truth, name="sim"), diffraction=diffraction)
    assert product.get_product().object_.get_pixel_geometry().width_m == pytest.approx(pixel_size_m(32))
    return product, truth


def illuminated_mask(truth: Any) -> np.ndarray:
    mask = np.zeros(truth.object_shape, bool)
    lo = np.floor(truth.positions_yx_px.min(axis=0)).astype(int)
    hi = np.ceil(truth.positions_yx_px.max(axis=0)).astype(int)
    mask[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1] = True
    return mask


def configure(library: Any, **values: Any) -> None:
    base = {"accelerator": "cpu", "n_filters_scale": 1, "batch_size": 16, "validation_fraction": 0.0, "seed": 0}
    for key, value in {**base, **values}.items():
        library.settings[key].set_value(value)


@pytest.mark.slow
def test_one_click_reconstruct_lands_on_truth(model_core: Any, library: Any, tmp_path: Path) -> None:
    product, truth = load_ptychodus_simulated_scan(model_core, tmp_path)
    configure(library, epochs=30, learning_rate=2e-3)
    started = time.perf_counter()
    output = product.reconstruct_local(algorithm=RECONSTRUCT, block=True)
    seconds = time.perf_counter() - started
    result = output.get_product()
    obj = result.object_
    source = product.get_product().object_
    assert obj.get_geometry() == source.get_geometry()  # overlays the truth in ptychodus
    assert len(result.losses) == 30
    assert result.losses[-1].value < result.losses[0].value
    quality = compare(obj.get_layer(0), truth.ground_truth, illuminated_mask(truth))
    print(f"one-click: {seconds:.1f} s, {quality.as_dict()}")
    assert max(abs(s) for s in quality.shift_yx_px) < 0.5
    assert quality.phase_ssim > quality.flat_phase_ssim + 0.1
    assert library.model_slot.get() is not None  # kept for Save Model / Infer


@pytest.mark.slow
def test_stop_keeps_best_result_quickly(model_core: Any, library: Any, tmp_path: Path) -> None:
    product, _ = load_ptychodus_simulated_scan(model_core, tmp_path, n_positions=128)
    configure(library, epochs=200)
    processing = model_core.processing_core.processing_api
    monitor = processing.task_monitor
    snapshot = monitor.get_completed_runs()
    output_index = processing.reconstruct(product_index=product.get_product_index(), algorithm=RECONSTRUCT)
    deadline = time.monotonic() + 120
    while monitor.get_progress() < 2 and time.monotonic() < deadline:  # a couple of epochs
        time.sleep(0.05)
    stop_at = time.monotonic()
    monitor.stop_processing()
    assert monitor.wait_for_completion_after(snapshot, timeout=60)
    latency_s = time.monotonic() - stop_at
    model_core.run_tasks()  # assign the final product (the GUI timer does this)
    print(f"stop latency {latency_s:.2f} s")
    assert latency_s < 2.0
    monitor.raise_if_failed()
    result = model_core.workflow_api.get_product(output_index).get_product()
    assert 1 <= len(result.losses) < 200
    assert not np.allclose(result.object_.get_layer(0), 1.0)  # the best model's reconstruction, not the guess


@pytest.mark.slow
def test_train_save_load_infer(model_core: Any, library: Any, tmp_path: Path) -> None:
    product, _ = load_ptychodus_simulated_scan(model_core, tmp_path, n_positions=128)
    data_dir = tmp_path / "training"
    data_dir.mkdir()
    product.export_training_data(data_dir / "scan.npz", algorithm=TRAIN_INFER)
    configure(library, epochs=2)
    product.train_reconstructor_local(data_dir, data_dir, algorithm=TRAIN_INFER, block=True)
    model_path = data_dir / "model.pinn.pt"
    assert model_path.is_file()
    library.model_slot.set(None, "")
    processing = model_core.processing_core.processing_api
    processing.load_model_from_file(model_path, algorithm=TRAIN_INFER)
    assert processing.is_reconstructor_trainable()
    output = product.reconstruct_local(algorithm=TRAIN_INFER, block=True)
    assert output.get_product().object_.get_geometry() == product.get_product().object_.get_geometry()


def test_errors_reach_the_log_panel_and_ptychodus_keeps_running(model_core: Any, library: Any, tmp_path: Path) -> None:
    product, _ = load_ptychodus_simulated_scan(model_core, tmp_path, n_positions=32)
    configure(library, epochs=1, gridsize=3, neighbor_count=2)  # invalid combination
    handler = model_core.processing_core.processing_api.task_monitor.get_log_handler()
    list(handler.messages())
    with pytest.raises(ValueError, match="neighbor_count"):
        product.reconstruct_local(algorithm=RECONSTRUCT, block=True)
    messages = "\n".join(handler.messages())
    assert "neighbor_count" in messages and "failed" in messages
    assert threading.active_count() < 50
