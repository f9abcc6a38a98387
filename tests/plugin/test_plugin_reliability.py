"""Reliability inside ptychodus (issue 5, plugin cases): faults, queued runs, bad settings files, memory.

Stop mid-training is ``test_workflow.py::test_stop_mid_training_returns_within_2s_with_a_saveable_best_model``.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pinn_scene import load_ptychodus_simulated_scan

import ptychodus_pinn.engine.training as training
from ptychodus_pinn.plugin.settings import FIELDS_BY_KEY, settings_to_run_config

RECONSTRUCT = "ptychopinn (pytorch)_reconstruct"


def configure(library: Any, **values: Any) -> None:
    base = {"accelerator": "cpu", "n_filters_scale": 1, "batch_size": 16, "validation_fraction": 0.0, "seed": 0}
    for key, value in {**base, **values}.items():
        library.settings[key].set_value(value)


class Recorder(logging.Handler):
    """Collects records of one logger (pytest's caplog is off with ``-p no:logging``)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def text(self) -> str:
        return "\n".join(record.getMessage() for record in self.records)


@pytest.fixture
def plugin_log() -> Iterator[Recorder]:
    recorder = Recorder()
    logger = logging.getLogger("ptychodus_pinn")
    logger.addHandler(recorder)
    yield recorder
    logger.removeHandler(recorder)


def _training_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "ptychodus-pinn-training"]


def _wait_for_runs(monitor: Any, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while monitor.get_completed_runs() < count:
        assert time.monotonic() < deadline, "ptychodus's runs did not finish"
        time.sleep(0.05)


def test_engine_exception_reaches_the_log_panel_and_ptychodus_keeps_running(
    model_core: Any, library: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    product, _ = load_ptychodus_simulated_scan(model_core, tmp_path, n_positions=32)
    configure(library, epochs=1, train_first=True)
    real_train = training.train

    def failing_train(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected engine failure")

    monkeypatch.setattr(training, "train", failing_train)
    processing = model_core.processing_core.processing_api
    monitor = processing.task_monitor
    handler = monitor.get_log_handler()
    list(handler.messages())  # drain
    snapshot = monitor.get_completed_runs()
    processing.reconstruct(product_index=product.get_product_index(), algorithm=RECONSTRUCT)  # ptychodus's background task
    assert monitor.wait_for_completion_after(snapshot, timeout=60)
    error = monitor.get_last_error()
    assert isinstance(error, RuntimeError) and "injected engine failure" in str(error)
    panel = "\n".join(handler.messages())
    assert "PtychoPINN (PyTorch) reconstruction failed: RuntimeError: injected engine failure" in panel
    assert not _training_threads()

    monkeypatch.setattr(training, "train", real_train)
    output = product.reconstruct_local(algorithm=RECONSTRUCT, block=True)  # ptychodus still works
    # one training epoch, then refinement's full-resolution epochs (the half-resolution ones plot no loss)
    assert len(output.get_product().losses) == 1 + 30


@pytest.mark.slow
def test_two_reconstructions_queued_one_after_the_other(
    model_core: Any, library: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    product, _ = load_ptychodus_simulated_scan(model_core, tmp_path, n_positions=64)
    configure(library, epochs=2, warm_start=False, train_first=True, refine_epochs=2)
    running = {"now": 0, "most": 0}
    real_train = training.train

    def counting_train(*args: Any, **kwargs: Any) -> Any:
        running["now"] += 1
        running["most"] = max(running["most"], running["now"])
        try:
            return real_train(*args, **kwargs)
        finally:
            running["now"] -= 1

    monkeypatch.setattr(training, "train", counting_train)
    processing = model_core.processing_core.processing_api
    monitor = processing.task_monitor
    snapshot = monitor.get_completed_runs()
    first = processing.reconstruct(product_index=product.get_product_index(), algorithm=RECONSTRUCT)
    second = processing.reconstruct(product_index=product.get_product_index(), algorithm=RECONSTRUCT)
    assert first != second
    _wait_for_runs(monitor, snapshot + 2, timeout_s=300)
    model_core.run_tasks()  # assign the products (the GUI's timer does this)
    monitor.raise_if_failed()
    assert running["most"] == 1  # one after the other, never two trainings at once
    for index in (first, second):
        result = model_core.workflow_api.get_product(index).get_product()
        # training, then refinement's full-resolution epochs (after 40 half-resolution ones)
        assert [loss.epoch for loss in result.losses] == [1, 2, 43, 44]
        assert all(loss.value > 0 for loss in result.losses)  # plotted on ptychodus's log axis
        assert not np.allclose(result.object_.get_layer(0), 1.0)
    assert not _training_threads()


BAD_SETTINGS = """
[PINNTorchPluginExecution]
accelerator = tpu
devices = many
batch_size = -5
seed = abc
deterministic = maybe
no_such_key = 1

[PINNTorchPluginTraining]
epochs = 0
learning_rate = nan

[PINNTorchPluginRefinement]
refine_epochs = -3
refine_start = sideways

[PINNTorchPluginPlugin]
preview_interval_s = 0.01
fill_unilluminated = purple
train_first = perhaps
"""


def test_settings_file_with_unknown_missing_and_out_of_range_values(
    activated: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plugin_log: Recorder
) -> None:
    """ptychodus starts; bad values are refused (default kept) or clamped, each with a message."""
    monkeypatch.setenv("HOME", str(tmp_path))
    from ptychodus.model import ModelCore

    from ptychodus_pinn.plugin.activation import installed_libraries

    path = tmp_path / "bad settings.ini"
    path.write_text(BAD_SETTINGS)
    with ModelCore(path, log_level=logging.WARNING) as model:  # raised ValueError before the fix
        (library,) = installed_libraries(model.processing_core.processing_api)
        values = library.settings.values()
    defaults = {key: FIELDS_BY_KEY[key].default for key in FIELDS_BY_KEY}
    refused_keys = (
        "accelerator",
        "devices",
        "seed",
        "deterministic",
        "learning_rate",
        "fill_unilluminated",
        "refine_start",
        "train_first",
    )
    for refused in refused_keys:
        assert values[refused] == defaults[refused], refused
    assert values["batch_size"] == 1  # clamped to the minimum
    assert values["epochs"] == 1
    assert values["refine_epochs"] == 0
    assert values["preview_interval_s"] == 1.0
    assert values["n_filters_scale"] == defaults["n_filters_scale"]  # missing: default
    settings_to_run_config(values, N=32)  # a usable configuration
    for key in refused_keys:
        assert f"] {key} = " in plugin_log.text and "refused" in plugin_log.text, key
    assert "batch_size = '-5' is outside" in plugin_log.text


def test_no_leak_after_a_run(model_core: Any, library: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a run nothing training-related survives: no thread, no Lightning module, model on the CPU.

    On a CPU-only machine this is what "GPU memory released" can be tested as; the CUDA check is
    ``test_gpu_memory_released_after_a_run``.
    """
    product, _ = load_ptychodus_simulated_scan(model_core, tmp_path, n_positions=32)
    configure(library, epochs=1, warm_start=False, train_first=True, refine_epochs=3)
    modules: list[weakref.ref[Any]] = []
    real_init = training.PinnLightningModule.__init__

    def tracked_init(self: Any, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        modules.append(weakref.ref(self))

    monkeypatch.setattr(training.PinnLightningModule, "__init__", tracked_init)
    threads_before = threading.active_count()
    for _ in range(2):
        product.reconstruct_local(algorithm=RECONSTRUCT, block=True)
    gc.collect()
    assert len(modules) == 2
    assert all(ref() is None for ref in modules), "a Lightning module (trainer, optimiser state) outlived its run"
    assert not _training_threads()
    assert threading.active_count() <= threads_before
    model = library.model_slot.get()
    assert model is not None
    assert {parameter.device.type for parameter in model.parameters()} == {"cpu"}


@pytest.mark.gpu
def test_gpu_memory_released_after_a_run(model_core: Any, library: Any, tmp_path: Path) -> None:
    product, _ = load_ptychodus_simulated_scan(model_core, tmp_path, n_positions=64)
    configure(library, epochs=2, accelerator="cuda", warm_start=False, train_first=True)
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    product.reconstruct_local(algorithm=RECONSTRUCT, block=True)
    gc.collect()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= baseline + 1024  # the kept model lives on the CPU
    assert torch.cuda.memory_reserved() == 0  # cached blocks returned to the driver


@pytest.mark.gpu
def test_one_click_on_a_gpu_uses_the_width_4_model(model_core: Any, library: Any, tmp_path: Path) -> None:
    """Network Width 0 (the default) on a GPU: the shipped width-4 model at N = 64, seen through every symmetry view."""
    product, _ = load_ptychodus_simulated_scan(model_core, tmp_path, n_positions=64, size_px=64)
    configure(library, accelerator="cuda", n_filters_scale=0, refine_epochs=2, refine_half_resolution_epochs=0)
    product.reconstruct_local(algorithm=RECONSTRUCT, block=True)
    model = library.model_slot.get()
    assert model is not None and (model.config.N, model.config.n_filters_scale) == (64, 4)
    assert library.model_slot.source == "the shipped pretrained model of width 4"
