"""The beamline use in the GUI: train on the first scans of a kind, and the network does better on the next one.

Through ptychodus's own calls: Export Training Data from two loaded scans, Train (warm-started from the
model in use, which was trained on another kind of object), Infer on a third scan with refinement off;
with each Training Mode (distil, the default, and pinn).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pinn_scene import illuminated_mask, load_ptychodus_simulated_scan

from ptychodus_pinn.engine.config import ExecutionConfig, ModelConfig, RunConfig, TrainingConfig
from ptychodus_pinn.engine.metrics import compare
from ptychodus_pinn.engine.simulate import simulate_scan
from ptychodus_pinn.engine.training import train
from ptychodus_pinn.plugin.library import default_record_path

TRAIN_INFER = "ptychopinn (pytorch)_train+infer"
SETTINGS = {"accelerator": "cpu", "n_filters_scale": 1, "batch_size": 16, "validation_fraction": 0.0, "seed": 0}


def network_phase_ssim(product: Any, truth: Any) -> float:
    """Infer with refinement off: the network's own object, scored against the truth."""
    result = product.reconstruct_local(algorithm=TRAIN_INFER, block=True).get_product()
    return compare(result.object_.get_layer(0), truth.ground_truth, illuminated_mask(truth)).phase_ssim


@pytest.mark.parametrize("training_mode", ["distil", "pinn"])
def test_training_on_two_scans_of_a_kind_improves_the_network_on_the_next(
    model_core: Any, library: Any, tmp_path: Path, training_mode: str
) -> None:
    # the model in use was trained on another kind of object (lines), as a user's earlier model
    lines = [simulate_scan("lines", 1e5, 128, 32, seed=40)]
    quiet = ExecutionConfig(accelerator="cpu", logger="none", enable_progress_bar=False)
    earlier = train(lines, RunConfig(ModelConfig(N=32, n_filters_scale=1), TrainingConfig(epochs=4, batch_size=16), quiet))
    library.attach_view()  # as in the GUI: the model memory is on
    library.model_slot.set(earlier.model, "a model trained on lines")
    assert library.settings["training_mode"].get_value() == "distil"  # the default
    settings = {**SETTINGS, "refine_epochs": 0, "epochs": 20, "warm_start": True, "training_mode": training_mode}
    for key, value in settings.items():
        library.settings[key].set_value(value)
    # two Siemens-star scans, exported from ptychodus with the entry's Export Training Data
    data_dir = tmp_path / "training"
    data_dir.mkdir()
    for seed in (1, 2):
        (tmp_path / f"scan{seed}").mkdir()
        product, _ = load_ptychodus_simulated_scan(model_core, tmp_path / f"scan{seed}", n_positions=128, seed=seed)
        product.export_training_data(data_dir / f"scan{seed}.npz", algorithm=TRAIN_INFER)
    (tmp_path / "next").mkdir()
    product, truth = load_ptychodus_simulated_scan(model_core, tmp_path / "next", n_positions=128, seed=3)

    before = network_phase_ssim(product, truth)
    product.train_reconstructor_local(data_dir, data_dir, algorithm=TRAIN_INFER, block=True)
    after = network_phase_ssim(product, truth)
    print(f"network alone on the next Siemens scan: {before:.3f} (lines model) -> {after:.3f} after training on two")
    # measured (1 torch thread): 0.024 -> 0.112. The network alone is weak at N=32 on 128 patterns (trained from
    # scratch on two scans of 256 it reaches 0.14 on the next one); what is asserted is the gain from training
    assert after > before + 0.05
    # Infer used the model just trained, and it is the next session's model too
    assert library.model_slot.source.startswith(f"{training_mode} training on training")
    assert library.model_slot.get().config.mode.value == training_mode
    model_file = (data_dir / "model.pinn.pt").resolve()
    assert json.loads(default_record_path().read_text()) == {"model_file": str(model_file)}
