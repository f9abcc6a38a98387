"""Every execution knob reaches its target: Trainer argument, DataLoader argument or callback."""

from __future__ import annotations

import itertools
import threading
import time

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from ptychodus_pinn.engine import training
from ptychodus_pinn.engine.config import ExecutionConfig, ModelConfig, RunConfig, Scheduler, TrainingConfig, knobs
from ptychodus_pinn.engine.data import ScanError
from ptychodus_pinn.engine.datasets import spatial_split
from ptychodus_pinn.engine.inference import reconstruct_network
from ptychodus_pinn.engine.network import is_channels_last
from ptychodus_pinn.engine.training import dataloader_arguments, resolve_accelerator, train, trainer_arguments

QUIET = {"accelerator": "cpu", "logger": "none", "enable_progress_bar": False}


TRAINING_FIELDS = {knob.name for knob in knobs(TrainingConfig)}


def run_config(epochs=2, validation_fraction=0.0, model=None, **options):
    """Each option goes to the config that has it (TrainingConfig or ExecutionConfig)."""
    training = {name: value for name, value in options.items() if name in TRAINING_FIELDS}
    execution = {name: value for name, value in options.items() if name not in TRAINING_FIELDS}
    return RunConfig(
        model or ModelConfig(N=32, n_filters_scale=1),
        TrainingConfig(epochs=epochs, batch_size=16, validation_fraction=validation_fraction, **training),
        ExecutionConfig(**{**QUIET, **execution}),
    )


def test_auto_accelerator_picks_gpu_only_when_present():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_accelerator("auto") == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_absent_gpu_is_an_error_never_a_silent_cpu_run(accelerator, small_scan):
    with pytest.raises(RuntimeError, match=f"accelerator={accelerator} was requested but torch sees no CUDA GPU"):
        train([small_scan], run_config(accelerator=accelerator))


def test_trainer_arguments_carry_every_execution_field(tmp_path):
    execution = ExecutionConfig(
        accelerator="cpu", devices=2, strategy="ddp", num_nodes=3, precision="bf16-mixed", deterministic=True,
        logger="csv", enable_progress_bar=False,
    )  # fmt: skip
    training = TrainingConfig(
        epochs=7, gradient_clip_val=0.5, accumulate_grad_batches=4, checkpoint_save_top_k=3, checkpoint_mode="max",
        early_stop_patience=5,
    )  # fmt: skip
    arguments = trainer_arguments(execution, training, "train_loss", tmp_path, [])
    assert arguments["accelerator"] == "cpu" and arguments["devices"] == 2 and arguments["strategy"] == "ddp"
    assert arguments["num_nodes"] == 3 and arguments["precision"] == "bf16-mixed" and arguments["deterministic"] == "warn"
    assert arguments["gradient_clip_val"] == 0.5 and arguments["accumulate_grad_batches"] == 4 and arguments["max_epochs"] == 7
    assert arguments["enable_progress_bar"] is False
    assert isinstance(arguments["logger"], pl.loggers.CSVLogger)
    checkpoint = next(c for c in arguments["callbacks"] if isinstance(c, pl.callbacks.ModelCheckpoint))
    assert checkpoint.save_top_k == 3 and checkpoint.mode == "max" and checkpoint.monitor == "train_loss"
    stopping = next(c for c in arguments["callbacks"] if isinstance(c, pl.callbacks.EarlyStopping))
    assert stopping.patience == 5 and stopping.monitor == "train_loss"
    assert (
        trainer_arguments(
            ExecutionConfig(accelerator="cpu", deterministic=False, logger="none"), TrainingConfig(), "x", tmp_path, []
        )["deterministic"]
        is False
    )


def test_dataloader_arguments_carry_worker_settings():
    execution = ExecutionConfig(num_workers=3, pin_memory=True, persistent_workers=True, prefetch_factor=5, seed=9)
    arguments = dataloader_arguments(execution, 8, shuffle=True)
    assert arguments["num_workers"] == 3 and arguments["pin_memory"] is True
    assert arguments["persistent_workers"] is True and arguments["prefetch_factor"] == 5 and arguments["batch_size"] == 8
    assert "prefetch_factor" not in dataloader_arguments(ExecutionConfig(), 8, shuffle=False)


def test_worker_processes_really_load_the_data(small_scan):
    result = train([small_scan], run_config(epochs=1, num_workers=1, persistent_workers=True, prefetch_factor=2))
    assert np.isfinite(result.history[0].train_loss)


def test_learning_rate_reaches_the_optimizer(small_scan):
    result = train([small_scan], run_config(epochs=1, learning_rate=0.0123, scheduler="constant"))
    assert result.history[0].learning_rate == pytest.approx(0.0123)


@pytest.mark.parametrize("scheduler", list(Scheduler))
def test_every_scheduler_changes_the_learning_rate_over_epochs(scheduler, small_scan):
    learning_rate = 1e-7 if scheduler is Scheduler.PLATEAU else 1e-3
    result = train([small_scan], run_config(epochs=6, scheduler=scheduler, learning_rate=learning_rate, warmup_epochs=2))
    rates = [report.learning_rate for report in result.history]
    if scheduler is Scheduler.CONSTANT:
        assert rates == [pytest.approx(1e-3)] * 6
    elif scheduler is Scheduler.EXPONENTIAL:
        assert all(later < earlier for earlier, later in itertools.pairwise(rates))
    elif scheduler is Scheduler.COSINE:
        assert rates[1] > rates[0] and rates[-1] < max(rates)
    else:
        assert rates[-1] < rates[0]


def test_seeded_deterministic_runs_are_identical(small_scan):
    first = train([small_scan], run_config(epochs=1, deterministic=True, seed=5))
    second = train([small_scan], run_config(epochs=1, deterministic=True, seed=5))
    for key, value in first.model.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[key], value)


def test_checkpoint_top_k_and_best_model_is_the_one_returned(tmp_path, small_scan):
    result = train([small_scan], run_config(epochs=4, checkpoint_save_top_k=2, learning_rate=5e-3), checkpoint_dir=tmp_path)
    best_files = sorted(p.name for p in tmp_path.glob("best-*.ckpt"))
    assert len(best_files) == 2 and (tmp_path / "last.ckpt").exists()
    losses = [report.train_loss for report in result.history]
    assert result.best_epoch == int(np.argmin(losses)) + 1
    best = torch.load(result.best_checkpoint, weights_only=True)["state_dict"]
    for key, value in result.model.state_dict().items():
        torch.testing.assert_close(best[f"model.{key}"], value)


def test_checkpoint_monitor_defaults_to_val_loss_with_a_validation_split(tmp_path, small_scan):
    result = train([small_scan], run_config(epochs=2, validation_fraction=0.2), checkpoint_dir=tmp_path)
    assert all(report.val_loss is not None for report in result.history)
    losses = [report.val_loss for report in result.history]
    assert result.best_epoch == int(np.argmin(losses)) + 1
    with pytest.raises(ValueError, match="needs a validation split"):
        train([small_scan], run_config(epochs=1, checkpoint_monitor="val_loss"))


def test_early_stopping_stops_when_the_metric_stops_improving(small_scan):
    # in "max" mode a falling loss never improves, so patience 1 stops after two epochs
    result = train([small_scan], run_config(epochs=10, early_stop_patience=1, checkpoint_mode="max"))
    assert len(result.history) == 2


def test_csv_logger_writes_metrics_and_none_writes_nothing(tmp_path, small_scan):
    train([small_scan], run_config(epochs=1, logger="csv"), checkpoint_dir=tmp_path / "csv")
    assert list((tmp_path / "csv").rglob("metrics.csv"))
    train([small_scan], run_config(epochs=1, logger="none"), checkpoint_dir=tmp_path / "none")
    assert not list((tmp_path / "none").rglob("metrics.csv"))


def test_bf16_mixed_precision_trains_on_cpu(small_scan):
    result = train([small_scan], run_config(epochs=1, precision="bf16-mixed"))
    assert np.isfinite(result.history[0].train_loss)


def test_validation_split_is_a_spatial_region():
    positions = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0), indexing="ij"), -1).reshape(-1, 2)
    train_idx, val_idx = spatial_split(positions, 0.2)
    assert len(val_idx) == 20 and len(train_idx) == 80
    assert positions[val_idx, 1].min() > positions[train_idx, 1].max()


def test_stop_event_returns_quickly_with_the_best_model_so_far(small_scan):
    stop = threading.Event()
    seen = []

    def on_epoch(report):
        seen.append(report)
        if report.epoch == 2:
            stop.set()

    result = train([small_scan], run_config(epochs=50), on_epoch_end=on_epoch, stop_event=stop)
    assert result.stopped and len(result.history) == 2
    assert result.best_epoch in (1, 2)


@pytest.mark.slow  # asserts on wall-clock latency: a loaded machine stretches it
def test_stop_mid_epoch_takes_effect_within_two_seconds(small_scan):
    stop = threading.Event()
    stopped_at: list[float] = []

    def press_stop():
        time.sleep(3)
        stopped_at.append(time.perf_counter())
        stop.set()

    threading.Thread(target=press_stop, daemon=True).start()
    result = train([small_scan], run_config(epochs=500), stop_event=stop)
    latency = time.perf_counter() - stopped_at[0]
    assert result.stopped and latency < 2.0


def test_resume_continues_from_the_last_checkpoint(tmp_path, small_scan):
    train([small_scan], run_config(epochs=2), checkpoint_dir=tmp_path)
    resumed = train([small_scan], run_config(epochs=4), checkpoint_dir=tmp_path, resume_from=tmp_path / "last.ckpt")
    assert [report.epoch for report in resumed.history] == [3, 4]


def test_cpu_training_runs_channels_last_and_returns_the_default_layout(monkeypatch, small_scan):
    layouts: list[bool] = []
    original_new_model = training.new_model

    def watched_new_model(*arguments):
        model = original_new_model(*arguments)
        model.generator.register_forward_hook(lambda module, inputs, output: layouts.append(is_channels_last(module)))
        return model

    monkeypatch.setattr(training, "new_model", watched_new_model)
    result = train([small_scan], run_config(epochs=1))
    assert layouts and all(layouts)  # every training forward pass ran in the faster layout
    assert all(parameter.is_contiguous() for parameter in result.model.parameters())


def test_inference_batch_size_reaches_the_forward_passes(trained_small, small_scan):
    calls: list[int] = []
    handle = trained_small.model.generator.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    try:
        reconstruct_network(
            trained_small.model, small_scan, execution=ExecutionConfig(accelerator="cpu", inference_batch_size=50)
        )
        assert calls == [50, 50, 44]
        calls.clear()
        reconstruct_network(trained_small.model, small_scan, execution=ExecutionConfig(accelerator="cpu"))
        assert calls[0] == 16  # defaults to the training batch size
    finally:
        handle.remove()


def test_middle_trim_and_pad_eval_change_the_stitched_region(trained_small, small_scan):
    full = reconstruct_network(trained_small.model, small_scan, execution=ExecutionConfig(accelerator="cpu"))
    trimmed = reconstruct_network(trained_small.model, small_scan, execution=ExecutionConfig(accelerator="cpu", middle_trim=10))
    assert trimmed.illuminated.sum() < full.illuminated.sum()
    edge_scan = small_scan.subset(np.arange(small_scan.count))
    edge_scan.positions_yx_px = edge_scan.positions_yx_px.copy()
    edge_scan.positions_yx_px[0] = (2.0, 2.0)
    padded = reconstruct_network(trained_small.model, edge_scan, execution=ExecutionConfig(accelerator="cpu", pad_eval=True))
    unpadded = reconstruct_network(trained_small.model, edge_scan, execution=ExecutionConfig(accelerator="cpu", pad_eval=False))
    assert padded.illuminated[:4, :4].all() and not unpadded.illuminated[:4, :4].any()


def test_warm_start_needs_the_same_network_shape(trained_small, small_scan):
    with pytest.raises(ValueError, match="n_filters_scale=1 but training asks for 2"):
        train([small_scan], run_config(model=ModelConfig(N=32, n_filters_scale=2)), initial_model=trained_small.model)
    warm = train([small_scan], run_config(epochs=1), initial_model=trained_small.model)
    assert warm.history[0].train_loss < trained_small.history[0].train_loss


def test_gridsize_two_with_shared_canvas_and_supervised_mode_train(small_scan):
    grouped = train([small_scan], run_config(epochs=1, model=ModelConfig(N=32, n_filters_scale=1, gridsize=2)))
    assert np.isfinite(grouped.history[0].train_loss)
    reconstruction = reconstruct_network(grouped.model, small_scan, execution=ExecutionConfig(accelerator="cpu"))
    assert reconstruction.object.shape == small_scan.object_shape
    supervised = train([small_scan], run_config(epochs=2, model=ModelConfig(N=32, n_filters_scale=1, mode="supervised")))
    assert supervised.history[1].train_loss < supervised.history[0].train_loss


def test_supervised_mode_needs_an_object(small_scan):
    bare = small_scan.subset(np.arange(small_scan.count))
    bare.ground_truth = None
    bare.object_guess = None
    with pytest.raises(ScanError, match="supervised training needs scans that carry an object"):
        train([bare], run_config(model=ModelConfig(N=32, mode="supervised")))


def test_scan_of_another_size_is_refused(small_scan):
    with pytest.raises(ScanError, match="model is for N=64"):
        train([small_scan], run_config(model=ModelConfig(N=64)))


def _inject_out_of_memory(monkeypatch, above_batch: int) -> list[int]:
    seen: list[int] = []
    original = training.PinnLightningModule.training_step

    def step(self, batch, batch_index):
        seen.append(len(batch["counts"]))
        if len(batch["counts"]) > above_batch:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, batch, batch_index)

    monkeypatch.setattr(training.PinnLightningModule, "training_step", step)
    return seen


def test_out_of_memory_retries_with_a_smaller_batch(monkeypatch, small_scan):
    seen = _inject_out_of_memory(monkeypatch, above_batch=8)
    result = train([small_scan], run_config(epochs=1))
    assert result.extra["batch_size"] == 8 and max(seen[1:]) <= 8


def test_out_of_memory_at_every_batch_stops_with_the_setting_to_lower(monkeypatch, small_scan):
    _inject_out_of_memory(monkeypatch, above_batch=0)
    with pytest.raises(training.TrainingOutOfMemoryError, match=r"batch_size=4; lower the batch size \(--batch-size\)"):
        train([small_scan], run_config(epochs=1))


def test_out_of_memory_during_inference_lowers_the_batch(monkeypatch, trained_small, small_scan):
    generator = trained_small.model.generator
    original = type(generator).forward

    def forward(self, amplitudes):
        if amplitudes.shape[0] > 20:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return original(self, amplitudes)

    monkeypatch.setattr(type(generator), "forward", forward)
    result = reconstruct_network(
        trained_small.model, small_scan, execution=ExecutionConfig(accelerator="cpu", inference_batch_size=64)
    )
    assert np.isfinite(result.object).all()
