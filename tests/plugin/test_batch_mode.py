"""``ptychodus -b reconstruct|train -i IN -o OUT`` through ptychodus's own ``ModelCore.batch_mode_execute``.

The workflow directory is written with ptychodus's own functions (``save_diffraction_data``, the
workflow API's ``save_product``, the settings registry's ``save_settings``), as a beamline script
would. Batch mode has no settings panel, so the library yields no previews: ptychodus writes one
``product.NNNNNN.h5`` per yielded product, and only the network's object and the result are written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from pinn_scene import illuminated_mask, load_ptychodus_simulated_scan
from ptychodus.api.io import StandardFileLayout, load_product

from ptychodus_pinn.engine.metrics import compare

RECONSTRUCT = "ptychopinn (pytorch)_reconstruct"
TRAIN_INFER = "ptychopinn (pytorch)_train+infer"
MODEL_FILE = f"{StandardFileLayout.MODEL_BASENAME}.pinn.pt"


def write_workflow_directory(
    model_core: Any, library: Any, folder: Path, *, algorithm: str, size_px: int, n_positions: int, **settings: Any
) -> Any:
    """diffraction.h5, product.h5 and settings.ini (with ``algorithm`` and ``settings``) in ``folder``; returns the truth."""
    folder.mkdir(parents=True)
    product, truth = load_ptychodus_simulated_scan(model_core, folder, n_positions=n_positions, size_px=size_px)
    product.save_product(folder / StandardFileLayout.PRODUCT, file_type="HDF5")
    for key, value in {"accelerator": "cpu", "seed": 0, **settings}.items():
        library.settings[key].set_value(value)
    model_core.processing_core.algorithm_parameter.set_value(algorithm)
    model_core.settings_registry.save_settings(folder / StandardFileLayout.SETTINGS)
    library.model_slot.set(None, "")  # batch mode starts with nothing loaded
    return truth


def product_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.glob("product.*.h5"))


def test_reconstruct_writes_the_network_object_and_the_result_only(
    model_core: Any, library: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Default settings (N=64: the shipped model, then 40 half- and 30 full-resolution refinement epochs); previews
    would be due every second."""
    caplog.set_level(logging.INFO, logger="ptychodus_pinn")
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    truth = write_workflow_directory(
        model_core, library, inputs, algorithm=RECONSTRUCT, size_px=64, n_positions=144, preview_interval_s=1.0
    )
    assert int(model_core.batch_mode_execute("reconstruct", inputs, outputs)) == 0, caplog.text
    # before: the network's object, a refinement preview ~2 s later (more with Train On The Scan First), the result
    assert product_files(outputs) == ["product.000001.h5", "product.000071.h5"]
    quality = compare(
        load_product(outputs / "product.000071.h5").object_.get_layer(0), truth.ground_truth, illuminated_mask(truth)
    )
    print(f"batch reconstruct: {quality.as_dict()}")
    assert quality.phase_ssim > max(0.6, quality.flat_phase_ssim + 0.3)
    messages = [record.getMessage() for record in caplog.records if record.name.startswith("ptychodus_pinn")]
    assert "Reconstructing 144 patterns (N=64) with the shipped pretrained model, then refinement" in messages
    progress = [message for message in messages if message.startswith("Refinement epoch ")]
    assert progress[0].startswith("Refinement epoch 7/70 (half resolution): Poisson NLL") and len(progress) == 10  # every 10 %
    assert progress[-1].startswith("Refinement epoch 70/70: Poisson NLL")


def test_train_then_reconstruct_uses_the_trained_model(
    model_core: Any, library: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``-b train -i IN -o IN`` writes IN/model.pinn.pt; ``-b reconstruct -i IN`` (trainable entry) loads and uses it."""
    caplog.set_level(logging.INFO, logger="ptychodus_pinn")
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    write_workflow_directory(
        model_core,
        library,
        inputs,
        algorithm=TRAIN_INFER,
        size_px=32,
        n_positions=128,
        epochs=3,
        batch_size=16,
        validation_fraction=0.0,
        refine_epochs=10,
    )
    assert int(model_core.batch_mode_execute("train", inputs, inputs)) == 0, caplog.text
    assert (inputs / MODEL_FILE).is_file()
    messages = [record.getMessage() for record in caplog.records]
    epochs = [message for message in messages if message.startswith("Training epoch ")]
    assert [message.split(":")[0] for message in epochs] == [f"Training epoch {epoch}/3" for epoch in (1, 2, 3)]
    assert "loss" in epochs[0] and epochs[0].endswith(" s")
    assert any("Read 128 patterns (N=32) from the workflow directory" in message for message in messages)

    library.model_slot.set(None, "")  # a fresh ptychodus process: nothing loaded
    caplog.clear()
    assert int(model_core.batch_mode_execute("reconstruct", inputs, outputs)) == 0, caplog.text
    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith(f"Loaded model loaded from {MODEL_FILE}") for message in messages), messages
    assert any(f"with loaded from {MODEL_FILE}" in message and "then refinement" in message for message in messages)
    assert product_files(outputs) == ["product.000001.h5", "product.000051.h5"]  # 40 half- + 10 full-resolution epochs


def test_previews_only_with_a_panel_and_the_setting_on(library: Any) -> None:
    values = library.settings.values()
    assert values["preview_updates"] is True
    assert not library.previews_wanted(values)  # no panel: batch mode, scripts
    library.attach_view()  # what qt/view.py's factory does when ptychodus builds its GUI
    assert library.previews_wanted(values)
    library.settings["preview_updates"].set_value(False)
    assert not library.previews_wanted(library.settings.values())
