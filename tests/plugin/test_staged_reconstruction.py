"""Network → refinement inside the real ptychodus: staged products, Stop, Infer, failures, batch mode.

The scan is ptychodus's own simulation of a Siemens star (N=32, tests/plugin/pinn_scene.py). No
model ships for N=32, so the network is ``trained_small`` (tests/conftest.py: two epochs on another
scan), loaded as a user would with Load Model; its object is poor, which is what refinement is for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pinn_scene import illuminated_mask, load_ptychodus_simulated_scan

from ptychodus_pinn.engine.metrics import compare

RECONSTRUCT = "ptychopinn (pytorch)_reconstruct"
TRAIN_INFER = "ptychopinn (pytorch)_train+infer"
# measured on this scene with default refinement, 2 shared CPU cores: phase SSIM 0.93–0.94 (40 epochs; 40 half- and 30 full-
# resolution epochs: 0.94)
# (network alone ≈ 0.005, flat 0.007); the threshold leaves margin for other seeds/BLAS/thread counts
REFINED_PHASE_SSIM = 0.75


def configure(library: Any, **values: Any) -> None:
    base = {"accelerator": "cpu", "seed": 0}
    for key, value in {**base, **values}.items():
        library.settings[key].set_value(value)


@dataclass
class Yielded:
    progress: int
    object: np.ndarray
    at_s: float  # time.monotonic() when ptychodus received it


@pytest.fixture
def yields(model_core: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Yielded]]:
    """Every product the reconstructor yields to ptychodus, in order (recorded on ptychodus's side)."""
    monitor = model_core.processing_core.processing_api.task_monitor
    recorded: list[Yielded] = []
    real = monitor.update_product

    def recording(product_item: Any, result: Any) -> None:
        recorded.append(Yielded(result.progress, result.product.object_.get_layer(0).copy(), time.monotonic()))
        real(product_item, result)

    monkeypatch.setattr(monitor, "update_product", recording)
    yield recorded


@pytest.fixture
def scene(model_core: Any, tmp_path: Path) -> tuple[Any, Any]:
    return load_ptychodus_simulated_scan(model_core, tmp_path)


@pytest.fixture
def n32_model(library: Any, trained_small: Any) -> Any:
    library.model_slot.set(trained_small.model, "a test model (N=32)")
    return trained_small.model


def _panel_log(model_core: Any) -> Any:
    """ptychodus's log panel handler (on the library's logger), drained; INFO passes even under pytest."""
    handler = model_core.processing_core.processing_api.task_monitor.get_log_handler()
    list(handler.messages())  # drain
    return handler


@pytest.fixture(autouse=True)
def _info_reaches_the_log_panel() -> Iterator[None]:
    logger = logging.getLogger("ptychodus_pinn")
    level = logger.level
    logger.setLevel(logging.INFO)  # as in the GUI (pytest's root logger is at WARNING)
    yield
    logger.setLevel(level)


def phase_ssim(obj: np.ndarray, truth: Any) -> float:
    return float(compare(obj, truth.ground_truth, illuminated_mask(truth)).phase_ssim)


def test_one_click_yields_the_network_object_then_the_refined_one(
    model_core: Any, library: Any, scene: tuple[Any, Any], n32_model: Any, yields: list[Yielded]
) -> None:
    product, truth = scene
    configure(library)
    assert library.settings["train_first"].get_value() is False  # the default path: no training
    log = _panel_log(model_core)
    started = time.monotonic()
    output = product.reconstruct_local(algorithm=RECONSTRUCT, block=True)
    seconds = time.monotonic() - started
    messages = "\n".join(log.messages())
    assert len(yields) >= 2, [y.progress for y in yields]
    network, final = yields[0], yields[-1]
    # network, then the default 40 half- and 30 full-resolution refinement epochs
    assert network.progress == 1 and final.progress == 1 + 40 + 30
    result = output.get_product()
    assert np.array_equal(result.object_.get_layer(0), final.object)  # the product holds the last yield
    network_ssim, final_ssim = phase_ssim(network.object, truth), phase_ssim(final.object, truth)
    print(
        f"one-click: network phase SSIM {network_ssim:.3f} after {network.at_s - started:.1f} s, refined "
        f"{final_ssim:.3f} after {final.at_s - started:.1f} s ({seconds:.1f} s in all, {len(yields)} products)"
    )
    assert final_ssim > network_ssim
    assert final_ssim > REFINED_PHASE_SSIM
    assert "Network: 256 patterns in" in messages
    assert "Refinement started from the" in messages and "Poisson NLL per pattern" in messages
    assert "Warm start skipped" not in messages and "Self-supervised training" not in messages
    losses = result.losses
    assert [loss.epoch for loss in losses] == list(range(41, 71))  # refinement's NLL per full-resolution epoch
    assert all(loss.value > 0 for loss in losses) and losses[-1].value < losses[0].value


def test_default_settings_use_the_shipped_model_then_refine(
    model_core: Any, library: Any, tmp_path: Path, yields: list[Yielded]
) -> None:
    """N=64: nothing loaded, default settings → the shipped pretrained model's object, then refinement."""
    product, truth = load_ptychodus_simulated_scan(model_core, tmp_path, n_positions=144, size_px=64)
    configure(library)
    log = _panel_log(model_core)
    started = time.monotonic()
    output = product.reconstruct_local(algorithm=RECONSTRUCT, block=True)
    seconds = time.monotonic() - started
    messages = "\n".join(log.messages())
    print(messages)
    assert "Reconstructing 144 patterns (N=64) with the shipped pretrained model, then refinement" in messages
    assert "Warm start skipped" not in messages and "another architecture" not in messages
    assert "Refinement started from the" in messages
    network_ssim = phase_ssim(yields[0].object, truth)
    final_ssim = phase_ssim(output.get_product().object_.get_layer(0), truth)
    print(
        f"shipped model: network {network_ssim:.3f} after {yields[0].at_s - started:.1f} s, refined {final_ssim:.3f} "
        f"after {seconds:.1f} s"
    )
    assert final_ssim > max(network_ssim, REFINED_PHASE_SSIM)
    assert library.model_slot.source == "the shipped pretrained model"  # loaded: Infer and Save Model work


@pytest.mark.slow  # asserts on wall-clock preview interval and Stop latency
def test_preview_while_refining_then_stop_ends_within_2s_keeping_the_object(
    model_core: Any, library: Any, scene: tuple[Any, Any], n32_model: Any, yields: list[Yielded]
) -> None:
    product, truth = scene
    library.attach_view()  # previews only while a panel shows them (the GUI builds one; batch mode has none)
    configure(library, refine_epochs=5000)
    log = _panel_log(model_core)
    processing = model_core.processing_core.processing_api
    monitor = processing.task_monitor
    snapshot = monitor.get_completed_runs()
    output_index = processing.reconstruct(product_index=product.get_product_index(), algorithm=RECONSTRUCT)
    deadline = time.monotonic() + 120
    while len(yields) < 2 and time.monotonic() < deadline:  # the network's object, then a refinement preview
        time.sleep(0.05)
    assert len(yields) >= 2, "no refinement preview"
    network, preview = yields[0], yields[1]
    assert network.progress == 1 and 1 < preview.progress < 1 + 5000
    preview_after_s = preview.at_s - network.at_s
    assert 1.9 < preview_after_s < 10.0  # the first preview ~2 s after the network's object (Preview Interval: 15 s)
    assert phase_ssim(preview.object, truth) > phase_ssim(network.object, truth)  # the user watches it sharpen
    stop_at = time.monotonic()
    monitor.stop_processing()
    assert monitor.wait_for_completion_after(snapshot, timeout=60)
    latency_s = time.monotonic() - stop_at
    model_core.run_tasks()  # assign the last product (the GUI timer does this)
    monitor.raise_if_failed()
    print(f"first refinement preview {preview_after_s:.1f} s after the network's; run ended {latency_s:.3f} s after Stop")
    assert latency_s < 2.0
    result = model_core.workflow_api.get_product(output_index).get_product()
    obj = result.object_.get_layer(0)
    assert np.isfinite(obj).all() and not np.allclose(obj, 1.0)
    assert phase_ssim(obj, truth) >= phase_ssim(preview.object, truth) - 0.02  # the state reached, not the network's
    # a loss per full-resolution epoch run (the 40 half-resolution ones plot none)
    assert preview.progress - 1 - 40 <= len(result.losses) < 5000
    assert "stopped" in "\n".join(log.messages())


def test_infer_refines_too(model_core: Any, library: Any, scene: tuple[Any, Any], n32_model: Any, yields: list[Yielded]) -> None:
    product, truth = scene
    configure(library, refine_epochs=30)
    processing = model_core.processing_core.processing_api
    processing.set_reconstructor_if_provided(TRAIN_INFER)
    assert processing.is_reconstructor_trainable()
    log = _panel_log(model_core)
    output = product.reconstruct_local(algorithm=TRAIN_INFER, block=True)
    messages = "\n".join(log.messages())
    assert len(yields) >= 2 and yields[0].progress == 1 and yields[-1].progress == 1 + 40 + 30
    network_ssim = phase_ssim(yields[0].object, truth)
    final_ssim = phase_ssim(output.get_product().object_.get_layer(0), truth)
    print(f"infer: network {network_ssim:.3f}, refined {final_ssim:.3f}")
    assert final_ssim > max(network_ssim, REFINED_PHASE_SSIM - 0.1)
    assert "Network: 256 patterns" in messages and "Refinement started from the" in messages


def test_refinement_failure_keeps_the_network_object(
    model_core: Any,
    library: Any,
    scene: tuple[Any, Any],
    n32_model: Any,
    yields: list[Yielded],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ptychodus_pinn.engine.refinement as refinement

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore details")
        yield  # a generator, like the real one

    monkeypatch.setattr(refinement, "refine_steps", out_of_memory)
    product, _ = scene
    configure(library)
    log = _panel_log(model_core)
    output = product.reconstruct_local(algorithm=RECONSTRUCT, block=True)  # no exception: the run succeeds
    messages = list(log.messages())
    assert any(
        "Refinement failed (RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB); the network's object is the result"
        in message
        for message in messages
    ), messages
    assert np.array_equal(output.get_product().object_.get_layer(0), yields[0].object)
    assert yields[-1].progress == 1 + 40 + 30


def test_refinement_off_gives_the_network_object_and_no_model_refines_from_flat(
    model_core: Any, library: Any, scene: tuple[Any, Any], trained_small: Any, yields: list[Yielded]
) -> None:
    product, truth = scene
    library.model_slot.set(trained_small.model, "a test model (N=32)")
    configure(library, refine_epochs=0)
    output = product.reconstruct_local(algorithm=RECONSTRUCT, block=True)
    assert len(yields) == 1 and yields[0].progress == 1
    assert output.get_product().losses == []

    library.model_slot.set(None, "")  # no model for N=32 (none ships): refinement alone, from a flat object
    configure(library, refine_epochs=25)
    yields.clear()
    log = _panel_log(model_core)
    output = product.reconstruct_local(algorithm=RECONSTRUCT, block=True)
    messages = "\n".join(log.messages())
    assert "refinement starts from a flat object" in messages
    assert "Refinement started from the flat object" in messages
    assert phase_ssim(output.get_product().object_.get_layer(0), truth) > 0.5
    assert library.model_slot.get() is None

    configure(library, refine_epochs=0)  # nothing to do: a clear error
    with pytest.raises(ValueError, match="nothing to reconstruct with"):
        product.reconstruct_local(algorithm=RECONSTRUCT, block=True)


def test_refine_probe_puts_the_refined_probe_in_the_product(
    model_core: Any, library: Any, scene: tuple[Any, Any], n32_model: Any
) -> None:
    product, _ = scene
    configure(library, refine_epochs=6, refine_probe=True)
    output = product.reconstruct_local(algorithm=RECONSTRUCT, block=True)
    before = product.get_product().probes.get_probe_no_opr().get_array()
    after = output.get_product().probes.get_probe_no_opr().get_array()
    assert after.shape == before.shape and np.isfinite(after).all()
    assert not np.allclose(after, before)


def test_train_first_names_the_setting_that_blocks_the_warm_start(
    model_core: Any, library: Any, scene: tuple[Any, Any], n32_model: Any
) -> None:
    product, _ = scene
    configure(library, train_first=True, epochs=1, refine_epochs=2, n_filters_scale=2, batch_size=32)
    log = _panel_log(model_core)
    output = product.reconstruct_local(algorithm=RECONSTRUCT, block=True)
    messages = "\n".join(log.messages())
    assert (
        "Warm start skipped: a test model (N=32) has another architecture than the settings; "
        "to start from it set Network Width (n_filters_scale) to 1"
    ) in messages
    assert "Refinement started from the" in messages
    # training, then refinement's full-resolution epochs (after 40 half-resolution ones)
    assert [loss.epoch for loss in output.get_product().losses] == [1, 42, 43]

    library.model_slot.set(n32_model, "a test model (N=32)")
    configure(library, n_filters_scale=1)  # the test model's width (also what the default, 0, gives on a CPU)
    product.reconstruct_local(algorithm=RECONSTRUCT, block=True)
    messages = "\n".join(log.messages())
    assert "Warm start skipped" not in messages and "starting from a test model (N=32)" in messages


def test_train_first_at_width_4_starts_from_the_shipped_width_4_model(model_core: Any, library: Any, tmp_path: Path) -> None:
    """N=64, nothing loaded, Network Width 4 (a GPU's): training starts from the width-4 model that ships for N=64."""
    product, _ = load_ptychodus_simulated_scan(model_core, tmp_path, n_positions=64, size_px=64)
    configure(library, train_first=True, epochs=1, n_filters_scale=4, refine_epochs=1, refine_half_resolution_epochs=0)
    log = _panel_log(model_core)
    product.reconstruct_local(algorithm=RECONSTRUCT, block=True)
    messages = "\n".join(log.messages())
    assert "starting from the shipped pretrained model of width 4" in messages
    assert "Warm start skipped" not in messages


def test_the_shipped_model_in_the_slot_follows_the_runs_width_and_pattern_size(library: Any, n32_model: Any) -> None:
    """A reconstruction puts the shipped model it used into the slot (Infer and Save Model work with it). It is no
    choice of the user's: a later run at another width (another device) or another N takes its own shipped model; a
    model the user loaded stays until another is loaded."""
    from types import SimpleNamespace

    scan_64, scan_128 = SimpleNamespace(size_px=64, count=1), SimpleNamespace(size_px=128, count=1)
    library.model_slot.set(None, "")
    wide = library.model_for(scan_64, 4)  # a GPU's run: Network Width 0 resolves to 4 at N = 64
    assert (wide.config.N, wide.config.n_filters_scale) == (64, 4)
    assert library.model_slot.get() is wide and library.model_slot.source == "the shipped pretrained model of width 4"
    narrow = library.model_for(scan_64, 1)  # the same session on the CPU
    assert narrow.config.n_filters_scale == 1 and library.model_slot.get() is narrow
    assert library.shipped_alternative(narrow, 64, 1) is None  # the shipped model in use competes with no copy of itself
    assert library.model_for(scan_128, 1).config.N == 128  # the N = 128 model, not a flat start
    assert library.model_for(scan_64, 4) is wide  # loaded once
    assert library.model_for(scan_128, 1, loaded_first=True).config.N == 128  # Infer too: the slot's is not the user's
    library.model_slot.set(n32_model, "a test model (N=32)")
    assert library.model_for(scan_64, 4) is None  # the user's model does not fit N = 64: refinement from flat
    assert library.model_slot.get() is n32_model


def test_network_width_0_trains_at_the_loaded_models_width(
    library: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On a GPU Network Width 0 means 4 at N = 64, but training that starts from a loaded width-1 model keeps its width
    (no skipped warm start); an explicit 4 skips it and names the setting. torch's devices are faked (no training runs)."""
    import copy

    from ptychodus_pinn.engine import device
    from ptychodus_pinn.engine.persistence import find_pretrained
    from ptychodus_pinn.plugin.settings import settings_to_run_config

    monkeypatch.setattr(device, "visible_devices", lambda: device.VisibleDevices(cuda_available=True, cuda_count=1))
    trained = copy.deepcopy(find_pretrained(64))
    library.model_slot.set(trained, "trained on 2 scans")
    (reconstructor,) = [entry for entry in library if entry.name == "Reconstruct"]
    values = library.settings.values()
    config = settings_to_run_config(values, N=64)
    assert config.model.n_filters_scale == 4
    initial, source, used = reconstructor._warm_start(64, config, values)
    assert initial is trained and source == "trained on 2 scans" and used.model.n_filters_scale == 1
    explicit = {**values, "n_filters_scale": 4}
    with caplog.at_level(logging.INFO, logger="ptychodus_pinn"):
        initial, _, used = reconstructor._warm_start(64, settings_to_run_config(explicit, N=64), explicit)
    assert initial is None and used.model.n_filters_scale == 4
    assert "Warm start skipped: trained on 2 scans has another architecture" in caplog.text
    assert "set Network Width (n_filters_scale) to 1" in caplog.text
    library.model_slot.set(None, "")
    initial, source, used = reconstructor._warm_start(64, config, values)  # nothing loaded: the GPU's shipped model
    assert initial.config.n_filters_scale == 4 and used.model.n_filters_scale == 4
    assert source == "the shipped pretrained model of width 4"


def test_batch_mode_reconstructs_with_network_and_refinement(
    model_core: Any, library: Any, trained_small: Any, tmp_path: Path
) -> None:
    """``ptychodus -b reconstruct`` (ModelCore.batch_mode_execute): Infer's staged generator, model file from the folder.

    ptychodus writes one numbered product file per yield: the network's (progress 1) and the refined one, no previews.
    """
    from ptychodus.api.io import StandardFileLayout, load_product

    from ptychodus_pinn.engine.persistence import save_model

    inputs = tmp_path / "in"
    outputs = tmp_path / "out"
    inputs.mkdir()
    product, truth = load_ptychodus_simulated_scan(model_core, inputs)  # writes diffraction.h5 there
    assert (inputs / StandardFileLayout.DIFFRACTION).is_file()
    product.save_product(inputs / StandardFileLayout.PRODUCT, file_type="HDF5")
    save_model(trained_small.model, inputs / f"{StandardFileLayout.MODEL_BASENAME}.pinn.pt")
    configure(library, refine_epochs=30)
    model_core.processing_core.algorithm_parameter.set_value(TRAIN_INFER)
    model_core.settings_registry.save_settings(inputs / StandardFileLayout.SETTINGS)
    library.model_slot.set(None, "")
    log = _panel_log(model_core)
    code = model_core.batch_mode_execute("reconstruct", inputs, outputs)
    messages = "\n".join(log.messages())
    assert int(code) == 0, messages
    written = sorted(outputs.glob("product.*.h5"))
    # no previews without a panel; the result after 40 half- and 30 full-resolution epochs
    assert [path.name for path in written] == ["product.000001.h5", "product.000071.h5"]

    network = load_product(written[0]).object_.get_layer(0)
    refined = load_product(written[-1]).object_.get_layer(0)
    assert phase_ssim(refined, truth) > max(phase_ssim(network, truth), REFINED_PHASE_SSIM - 0.1)
    assert "Network: 256 patterns" in messages and "Refinement started from the" in messages


def test_another_models_object_competes_with_the_shipped_ones(
    model_core: Any, library: Any, scene: tuple[Any, Any], n32_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loaded (or trained) model is weighed against the shipped one by the scan's likelihood; the shipped one in
    use, or none shipping for N, costs nothing. No model ships for N = 32, so the scene's 'shipped' one is a stand-in
    (the test model with its weights as initialised: a flat object), passed the way the library passes the real one."""
    import copy

    from ptychodus_pinn.engine.config import SHIPPED_MODEL_NAME
    from ptychodus_pinn.engine.network import PinnGenerator
    from ptychodus_pinn.engine.persistence import find_pretrained

    assert library.shipped_alternative(n32_model, 32) is None  # none ships for N = 32
    assert library.shipped_alternative(None, 64) is None
    shipped = find_pretrained(64)
    assert shipped is not None
    trained_64 = copy.deepcopy(shipped)
    library.model_slot.set(trained_64, "trained on 2 scans")
    name, alternative = library.shipped_alternative(trained_64, 64)
    assert name == SHIPPED_MODEL_NAME and alternative.config.N == 64 and alternative is not trained_64
    library.model_slot.set(shipped, SHIPPED_MODEL_NAME)
    assert library.shipped_alternative(shipped, 64) is None  # the shipped model in use: nothing to weigh it against
    library.model_slot.set(n32_model, "a test model (N=32)")

    stand_in = copy.deepcopy(n32_model)
    stand_in.generator.load_state_dict(PinnGenerator(n32_model.config).state_dict())
    monkeypatch.setattr(library, "shipped_alternative", lambda model, size_px, width: (SHIPPED_MODEL_NAME, stand_in))
    product, _ = scene
    configure(library, refine_epochs=1, refine_half_resolution_epochs=0)
    log = _panel_log(model_core)
    product.reconstruct_local(algorithm=RECONSTRUCT, block=True)
    messages = "\n".join(log.messages())
    assert f"Network: {SHIPPED_MODEL_NAME}'s object fits this scan" in messages
    assert "for the model in use's" in messages
