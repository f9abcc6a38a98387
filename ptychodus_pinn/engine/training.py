"""Training on Lightning: data sets of pattern groups, the LightningModule, and the one mapping
from configs to Trainer and DataLoader arguments (SPEC §6)."""

from __future__ import annotations

import errno
import importlib.util
import inspect
import logging
import math
import os
import pickle
import signal
import tempfile
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from ptychodus_pinn.engine import physics
from ptychodus_pinn.engine.config import (
    ConfigError,
    ExecutionConfig,
    LoggerKind,
    LossKind,
    ModelConfig,
    RunConfig,
    Scheduler,
    TrainingConfig,
    TrainingMode,
    replace,
)
from ptychodus_pinn.engine.data import DiskFullError, Scan, ScanError, is_disk_full
from ptychodus_pinn.engine.datasets import build_datasets, scan_constants, scan_probes
from ptychodus_pinn.engine.device import (  # the device helpers moved to device.py; still importable from here
    AcceleratorUnavailableError,  # noqa: F401
    device_spec,
    is_out_of_memory,
    lightning_devices,  # noqa: F401
    resolve_accelerator,  # noqa: F401
    torch_device,  # noqa: F401
)
from ptychodus_pinn.engine.model import PinnModel, TrainingRecord, warm_start_mismatches
from ptychodus_pinn.engine.network import set_convolution_layout

logger = logging.getLogger(__name__)

# Lightning's advice that does not apply here (we pass no val loader on purpose, log per epoch, and
# checkpoint into our own folders); silenced so real warnings stand out
for _message in (
    r".*validation_step.*no `val_dataloader`.*",
    r".*smaller than the logging interval.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*LeafSpec.*is deprecated.*",
    r".*does not have many workers.*",
):
    warnings.filterwarnings("ignore", message=_message)


def quiet_lightning() -> None:
    """Keep Lightning's start-up banner (GPU available, tips) out of the user's console."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)


# ------------------------------------------------------------------------------------------- devices


# AcceleratorUnavailableError, resolve_accelerator, lightning_devices, torch_device, is_out_of_memory: engine/device.py,
# the one device mapping (imported above, and importable from here as before)


CLUSTER_HINT = "SLURM, torchrun, LSF, MPI or Kubeflow, or MASTER_ADDR and NODE_RANK set for each node"


def multi_node_launch_detected() -> bool:
    """Whether this process was started by a launcher that gives it the other nodes' rendezvous."""
    from lightning.fabric.plugins import environments

    for name in ("SLURMEnvironment", "TorchElasticEnvironment", "LSFEnvironment", "MPIEnvironment", "KubeflowEnvironment"):
        environment = getattr(environments, name, None)
        try:
            if environment is not None and environment.detect():
                return True
        except Exception:  # a detector that cannot run (e.g. MPI without mpi4py) detects nothing
            continue
    return "MASTER_ADDR" in os.environ and "NODE_RANK" in os.environ


def check_logger_available(kind: LoggerKind) -> None:
    """A logger whose package is missing is refused before training, not after the data are loaded."""
    needs = {LoggerKind.TENSORBOARD: ("tensorboard", "tensorboardX"), LoggerKind.MLFLOW: ("mlflow",)}.get(kind)
    if needs and not any(importlib.util.find_spec(name) is not None for name in needs):
        raise ConfigError(
            "ExecutionConfig", "logger", kind.value, "csv or none",
            f"needs the {needs[0]} package, which is not installed: pip install {needs[0]}, or choose csv or none",
        )  # fmt: skip


def preflight(execution: ExecutionConfig) -> None:
    """Every execution setting that can only fail on this machine, checked before any data are read."""
    device_spec(execution)
    check_logger_available(execution.logger)
    if execution.num_nodes > 1 and not multi_node_launch_detected():
        raise ConfigError(
            "ExecutionConfig", "num_nodes", execution.num_nodes, "1 without a multi-node launch",
            f"needs a multi-node launch ({CLUSTER_HINT}); none was detected, and training would wait for nodes that "
            "never come; on one machine use one node and several devices",
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------- data


def dataloader_arguments(execution: ExecutionConfig, batch_size: int, shuffle: bool) -> dict[str, Any]:
    """The one mapping from ExecutionConfig to DataLoader keyword arguments."""
    arguments: dict[str, Any] = {
        "batch_size": batch_size,
        "shuffle": shuffle,
        "num_workers": execution.num_workers,
        "pin_memory": execution.pin_memory,
        "persistent_workers": execution.persistent_workers,
    }
    if execution.prefetch_factor is not None:
        arguments["prefetch_factor"] = execution.prefetch_factor
    if shuffle:
        arguments["generator"] = torch.Generator().manual_seed(execution.seed)
    return arguments


# ------------------------------------------------------------------------------------------ lightning


def learning_rate_factor(scheduler: Scheduler, epoch: int, epochs: int, warmup_epochs: int) -> float:
    """Multiplier of the base learning rate at an epoch for the epoch-wise schedules."""
    if scheduler is Scheduler.EXPONENTIAL:
        return 0.05 ** (epoch / max(epochs - 1, 1))
    if scheduler is Scheduler.COSINE:
        if epoch < warmup_epochs:
            return (epoch + 1) / (warmup_epochs + 1)
        progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0


def training_symmetries(scans: Sequence[Scan], probes: torch.Tensor | None, config: RunConfig) -> tuple[int, ...]:
    """The square symmetries training shows its batches through (``TrainingConfig.probe_symmetries``): those of
    every training scan's probe, for gridsize 1 (a group's offsets would have to turn too); logged."""
    if not config.training.probe_symmetries:
        return ()
    if config.model.channels > 1:
        logger.info("Probe symmetries are for gridsize 1; training gridsize %d without them", config.model.gridsize)
        return ()
    symmetries = physics.probe_symmetries(torch.from_numpy(np.asarray(scans[0].probe)) if probes is None else probes)
    logger.info("Training sees each batch through %d of the square's 8 symmetries (the probe's)", len(symmetries))
    return symmetries


class PinnLightningModule(pl.LightningModule):
    def __init__(
        self,
        model: PinnModel,
        training: TrainingConfig,
        epochs: int,
        bad_pixels: np.ndarray | None = None,
        probes: torch.Tensor | None = None,
        symmetries: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.model = model
        # square symmetries (physics.square_symmetry) a training batch may be seen through: each one a true scan
        # of the transformed object, with the probe the network will meet (physics.probe_symmetries)
        self.symmetries = tuple(index for index in symmetries if index != 0)
        valid = None if bad_pixels is None else torch.from_numpy(~bad_pixels).float()
        self.register_buffer("valid_pixels", valid, persistent=False)
        # each training scan's probe (datasets.scan_probes) when they differ and the probe is not trained
        use_probes = probes is not None and not model.config.probe_trainable
        self.register_buffer("scan_probes", probes if use_probes else None, persistent=False)
        self.optimisation = training  # learning rate and schedule (``self.training`` is torch's train/eval flag)
        self.epochs = epochs
        self.monitor = "train_loss"

    def on_fit_start(self) -> None:
        # oneDNN's CPU convolutions are ~1.3× faster per epoch with channels-last weights (network.py);
        # _train_once puts the default layout back, so the returned (and saved) model has it; Lightning's
        # mid-training checkpoints hold channels-last tensors, which loading copies into either layout
        if self.device.type == "cpu":
            set_convolution_layout(self.model.generator, torch.channels_last)

    def _weight(self, symmetry: int = 0) -> torch.Tensor:
        return physics.square_symmetry(physics.probe_weight(self.model.probe.detach()), symmetry)

    def seen_through_symmetry(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch seen through one of :attr:`symmetries`, drawn at random (torch's seeded generator); the
        batch itself when there are none. Patterns, labels and (in the loss) probe and bad-pixel mask move
        together, so the likelihood and the labels stay exact."""
        if not self.symmetries:
            return batch
        draw = int(torch.randint(len(self.symmetries) + 1, ()))  # 0: as measured
        if draw == 0:
            return batch
        symmetry = self.symmetries[draw - 1]
        seen = dict(batch)
        for key in ("input", "counts", "labels"):
            if key in seen:
                seen[key] = physics.square_symmetry(seen[key], symmetry)
        seen["symmetry"] = torch.tensor(symmetry)
        return seen

    def patches_for(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        patches = self.model.predict_patches(batch["input"])
        config = self.model.config
        if config.object_big and config.channels > 1:
            patches = physics.merge_group_on_canvas(patches.to(torch.complex64), batch["offsets"], self._weight())
        return patches

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        patches = self.patches_for(batch)
        mode = self.model.config.mode
        if mode is TrainingMode.SUPERVISED:
            return self.label_loss(patches, batch)
        likelihood = self.likelihood_loss(patches, batch)
        if mode is TrainingMode.DISTIL:
            distil = self.label_loss(patches, batch, align_phase=True)
            return likelihood + self.optimisation.distil_weight * distil
        return likelihood

    def label_loss(self, patches: torch.Tensor, batch: dict[str, torch.Tensor], align_phase: bool = False) -> torch.Tensor:
        """Probe-weighted complex L1 between the patches and their labels (a known or a refined object).

        ``align_phase``: each patch is first turned by the constant phase that best matches its label. A
        pattern cannot tell its patch's constant phase (|F(e^{iφ}·O·P)|² does not depend on φ), so a label's
        local phase offset, which a refined object carries from its neighbours, is nothing the network can
        learn from the pattern; it would only blur what it can learn.
        """
        if "labels" not in batch:
            raise ValueError(
                f"mode {self.model.config.mode.value} needs labels (a known object, or the refined targets that "
                "engine.training.train makes for distil); train through engine.training.train"
            )
        weight = self._weight(int(batch.get("symmetry", 0)))
        patches, labels = patches.to(torch.complex64), batch["labels"]
        if align_phase:
            patches = patches * physics.matching_phase(labels, patches, weight).detach()
        difference = (patches - labels).abs() * weight
        return difference.sum(dim=(-2, -1)).mean() / weight.sum()

    def likelihood_loss(self, patches: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The counts' Poisson NLL (or amplitude MAE), each pattern against the probe that lit it."""
        config = self.model.config
        scale = batch["intensity_scale"][:, None, None, None]
        probes: torch.Tensor | None = self.scan_probes  # type: ignore[assignment]
        probe = self.model.probe if probes is None else probes[batch["probe_index"]][:, None]
        valid: torch.Tensor | None = self.valid_pixels  # type: ignore[assignment]
        symmetry = int(batch.get("symmetry", 0))
        if symmetry:
            probe = physics.square_symmetry(probe, symmetry)
            valid = None if valid is None else physics.square_symmetry(valid, symmetry)
        expected = self.model.expected_counts(patches, scale, probe)
        mean_counts = batch["mean_counts"][:, None]
        if config.loss is LossKind.MAE:
            return physics.amplitude_mae(expected, batch["counts"], valid, mean_counts)
        return physics.poisson_nll(expected, batch["counts"], valid, mean_counts)

    def training_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> torch.Tensor:
        loss = self.loss(self.seen_through_symmetry(batch))
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["counts"]), sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["counts"]), sync_dist=True)
        return loss

    def configure_optimizers(self) -> Any:
        parameters = [parameter for parameter in self.parameters() if parameter.requires_grad]
        optimizer = torch.optim.Adam(parameters, lr=self.optimisation.learning_rate)
        scheduler_kind = self.optimisation.scheduler
        if scheduler_kind is Scheduler.PLATEAU:
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=0.5, patience=2, threshold=1e-4, threshold_mode="abs"
            )
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "monitor": self.monitor, "interval": "epoch"}}
        if scheduler_kind is Scheduler.CONSTANT:
            return optimizer
        epochs, warmup = self.epochs, self.optimisation.warmup_epochs
        lambda_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda epoch: learning_rate_factor(scheduler_kind, epoch, epochs, warmup)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lambda_scheduler, "interval": "epoch"}}


@dataclass
class EpochReport:
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float | None
    learning_rate: float
    seconds: float
    # the model as it is at this epoch's end (for previews); not a copy
    model: PinnModel | None = field(default=None, repr=False, compare=False)


class _ProgressAndStop(pl.Callback):
    """Reports each epoch to the caller and turns a stop request into a clean Lightning stop."""

    def __init__(
        self, epochs: int, on_epoch_end: Callable[[EpochReport], None] | None, stop_event: threading.Event | None
    ) -> None:
        self.epochs = epochs
        self.on_epoch_end = on_epoch_end
        self.stop_event = stop_event
        self.history: list[EpochReport] = []
        self.started = time.perf_counter()
        self.stopped = False

    def _check_stop(self, trainer: pl.Trainer) -> None:
        if self.stop_event is not None and self.stop_event.is_set() and not trainer.should_stop:
            self.stopped = True
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._check_stop(trainer)

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._check_stop(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        train_loss = float(metrics["train_loss"]) if "train_loss" in metrics else math.nan
        val_loss = float(metrics["val_loss"]) if "val_loss" in metrics else None
        learning_rate = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else math.nan
        model = getattr(module, "model", None)
        report = EpochReport(
            trainer.current_epoch + 1, self.epochs, train_loss, val_loss, learning_rate, time.perf_counter() - self.started, model
        )
        self.history.append(report)
        if trainer.is_global_zero:  # one line per epoch: what a console (ptychodus -b, ptychodus-pinn -v) shows
            validation = "" if val_loss is None else f", validation loss {val_loss:.6g}"
            logger.info(
                "Training epoch %d/%d: loss %.6g%s, %.1f s", report.epoch, self.epochs, train_loss, validation, report.seconds
            )
        if self.on_epoch_end is not None and trainer.is_global_zero:
            self.on_epoch_end(report)
        self._check_stop(trainer)


def make_logger(kind: LoggerKind, save_dir: Path) -> Any:
    if kind is LoggerKind.NONE:
        return False
    if kind is LoggerKind.CSV:
        return pl.loggers.CSVLogger(save_dir=str(save_dir), name="logs")
    if kind is LoggerKind.TENSORBOARD:
        return pl.loggers.TensorBoardLogger(save_dir=str(save_dir), name="logs")
    return pl.loggers.MLFlowLogger(experiment_name="ptychodus-pinn", tracking_uri=f"file:{save_dir / 'mlruns'}")


def trainer_arguments(
    execution: ExecutionConfig,
    training: TrainingConfig,
    monitor: str,
    checkpoint_dir: Path,
    callbacks: list[pl.Callback],
) -> dict[str, Any]:
    """The one mapping from configs to ``lightning.pytorch.Trainer`` keyword arguments."""
    checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=str(checkpoint_dir),
        filename="best-{epoch:03d}",
        monitor=monitor,
        mode=training.checkpoint_mode.value,
        save_top_k=training.checkpoint_save_top_k,
        save_last=True,
    )
    all_callbacks: list[pl.Callback] = [checkpoint, *callbacks]
    if training.early_stop_patience is not None:
        all_callbacks.append(
            pl.callbacks.EarlyStopping(
                monitor=monitor, mode=training.checkpoint_mode.value, patience=training.early_stop_patience
            )
        )
    devices = device_spec(execution)  # the same mapping gives inference, previews and refinement their device
    return {
        "accelerator": devices.lightning_accelerator,
        "devices": devices.lightning_devices,
        "strategy": execution.strategy,
        "num_nodes": execution.num_nodes,
        "precision": execution.precision.value,
        # "warn": deterministic kernels where torch has them (some CUDA backward kernels have none)
        "deterministic": "warn" if execution.deterministic else False,
        "max_epochs": training.epochs,
        "gradient_clip_val": training.gradient_clip_val,
        "accumulate_grad_batches": training.accumulate_grad_batches,
        "callbacks": all_callbacks,
        "logger": make_logger(execution.logger, checkpoint_dir),
        "enable_progress_bar": execution.enable_progress_bar,
        "enable_model_summary": False,
        "default_root_dir": str(checkpoint_dir),
        "num_sanity_val_steps": 0,
    }


@dataclass
class TrainResult:
    model: PinnModel
    history: list[EpochReport]
    best_epoch: int
    seconds: float
    stopped: bool
    is_global_zero: bool = True
    checkpoint_dir: Path | None = None
    best_checkpoint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def new_model(scans: Sequence[Scan], config: ModelConfig, batch_size: int) -> PinnModel:
    """A fresh model whose constants come from the training data."""
    constants = [scan_constants(scan) for scan in scans]
    modes = {scan.probe.shape[0] for scan in scans}
    if len(modes) > 1:
        raise ScanError(f"the scans have different numbers of probe modes {sorted(modes)}; train on scans with one probe model")
    record = TrainingRecord(
        intensity_scale=float(np.mean([c.intensity_scale for c in constants])),
        input_normalization=float(np.mean([c.input_normalization for c in constants])),
        mean_total_counts=float(np.mean([c.mean_total_counts for c in constants])),
        batch_size=batch_size,
    )
    return PinnModel(config, scans[0].probe, record)


def check_model_fits(model: PinnModel, config: ModelConfig) -> None:
    """A model can warm-start training only for the same network shape."""
    for name, (stored, wanted) in warm_start_mismatches(model.config, config).items():
        raise ValueError(
            f"the initial model has {name}={stored!r} but training asks for {wanted!r}; "
            "train from scratch or change the setting to match the model"
        )


class TrainingOutOfMemoryError(RuntimeError):
    """The accelerator ran out of memory even at the smallest batch tried."""


class CheckpointError(ValueError):
    """A checkpoint to resume from is unsafe, damaged, foreign or for another model; the message says which."""


class TrainingDivergedError(ValueError):
    """Training produced NaN or infinite weights; nothing is returned or saved."""


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:100]


def load_resume_checkpoint(path: Path) -> dict[str, Any]:
    """Open a Lightning checkpoint safely (tensors and plain data only) before Lightning touches it.

    A file crafted to run code on load is refused (``weights_only=True`` never executes it, on any
    supported torch and whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says, as the argument is explicit);
    a truncated, zeroed or foreign file is a :class:`CheckpointError` with one line, not a traceback.
    """
    path = Path(path)
    advice = f"delete {path} (or its folder) and train without --resume"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        if "weights only" in text.lower() or "weights_only" in text or "unsupported global" in text.lower():
            raise CheckpointError(
                f"refused to resume from {path}: it holds objects other than tensors and plain data, which could run "
                f"code on load; {advice}"
            ) from error
        raise CheckpointError(f"cannot resume from {path}: the checkpoint is damaged ({_first_line(error)}); {advice}") from error
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, KeyError, ValueError, TypeError, AttributeError,
            IndexError, MemoryError) as error:  # fmt: skip
        raise CheckpointError(
            f"cannot resume from {path}: the checkpoint is damaged or truncated ({_first_line(error)}); {advice}"
        ) from error
    if not (
        isinstance(checkpoint, dict)
        and isinstance(checkpoint.get("state_dict"), dict)
        and isinstance(checkpoint.get("epoch"), int)
        and "loops" in checkpoint
    ):
        raise CheckpointError(f"cannot resume from {path}: it is not a Lightning checkpoint of a training run; {advice}")
    return checkpoint


def check_resume_checkpoint(checkpoint: dict[str, Any], path: Path, module: pl.LightningModule, epochs: int) -> None:
    """The checkpoint must hold weights of exactly this model and fewer epochs than asked for."""
    expected = module.state_dict()
    stored = checkpoint["state_dict"]
    problems = [f"{name} missing" for name in expected if name not in stored]
    problems += [f"unexpected {name}" for name in stored if name not in expected]
    problems += [
        f"{name} is {tuple(getattr(stored[name], 'shape', ()))}, needs {tuple(value.shape)}"
        for name, value in expected.items()
        if name in stored and tuple(getattr(stored[name], "shape", ())) != tuple(value.shape)
    ]
    if problems:
        raise CheckpointError(
            f"cannot resume from {path}: it was written for another model ({len(problems)} difference(s), first: "
            f"{problems[0]}); resume with the settings of that run (N, gridsize, --n-filters-scale, ...) or train "
            "without --resume"
        )
    done = int(checkpoint["epoch"]) + 1
    if epochs <= done:
        raise CheckpointError(
            f"cannot resume from {path}: it has already trained {done} epoch(s) and --epochs is {epochs}; "
            f"ask for more epochs (--epochs > {done}) to continue"
        )


CHECKPOINT_PATTERNS = ("last.ckpt", "last-v*.ckpt", "best-*.ckpt")


def remove_stale_checkpoints(checkpoint_dir: Path) -> None:
    """A new (not resumed) run starts with no checkpoints of an earlier run: ``--resume`` must never pick them up."""
    for pattern in CHECKPOINT_PATTERNS:
        for stale in checkpoint_dir.glob(pattern):
            if stale.is_file():
                stale.unlink(missing_ok=True)


OOM_RETRIES = 2


def train(
    scans: Sequence[Scan],
    config: RunConfig,
    *,
    initial_model: PinnModel | None = None,
    on_epoch_end: Callable[[EpochReport], None] | None = None,
    stop_event: threading.Event | None = None,
    checkpoint_dir: Path | None = None,
    resume_from: Path | None = None,
) -> TrainResult:
    """Train a PtychoPINN on scans; returns the best model by the monitored metric.

    ``stop_event`` ends training after the current batch and still returns the best model so
    far. ``checkpoint_dir`` keeps Lightning checkpoints (``last.ckpt`` resumes a killed run via
    ``resume_from``); without it they live in a temporary folder. When the accelerator runs out
    of memory the run restarts with half the batch (twice at most), then stops with a message
    that names the settings to lower.
    """
    preflight(config.execution)
    if resume_from is None and checkpoint_dir is not None and checkpoint_dir.is_dir():
        remove_stale_checkpoints(checkpoint_dir)
    batch_size = config.training.batch_size
    for attempt in range(OOM_RETRIES + 1):
        attempt_config = replace(config, training=replace(config.training, batch_size=batch_size))
        try:
            result = _train_once(
                scans,
                attempt_config,
                initial_model,
                on_epoch_end,
                stop_event,
                checkpoint_dir,
                resume_from if attempt == 0 else None,
            )
            result.extra["batch_size"] = batch_size
            return result
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if batch_size == 1 or attempt == OOM_RETRIES:
                raise TrainingOutOfMemoryError(
                    f"the accelerator ran out of memory at batch_size={batch_size}; lower the batch size (--batch-size), "
                    "the network width (--n-filters-scale) or use --precision bf16-mixed"
                ) from error
            logger.warning("out of memory at batch_size=%d; retrying with batch_size=%d", batch_size, batch_size // 2)
            batch_size //= 2
    raise AssertionError("unreachable")


def _train_once(
    scans: Sequence[Scan],
    config: RunConfig,
    initial_model: PinnModel | None,
    on_epoch_end: Callable[[EpochReport], None] | None,
    stop_event: threading.Event | None,
    checkpoint_dir: Path | None,
    resume_from: Path | None,
) -> TrainResult:
    if not scans:
        raise ScanError("no scans to train on")
    started = time.perf_counter()
    model_config, training, execution = config.model, config.training, config.execution
    pl.seed_everything(execution.seed, workers=True, verbose=False)
    train_set, val_set = build_datasets(scans, model_config, training, execution.seed)
    if initial_model is not None:
        check_model_fits(initial_model, model_config)
    model = new_model(scans, model_config, training.batch_size)
    if initial_model is not None:
        model.generator.load_state_dict(initial_model.generator.state_dict())
    probes = scan_probes(scans)
    module = PinnLightningModule(
        model, training, training.epochs, scans[0].bad_pixels, probes, training_symmetries(scans, probes, config)
    )
    distillation = None
    if model_config.mode is TrainingMode.DISTIL:  # labels: the scans refined (engine/distillation.py)
        from ptychodus_pinn.engine.distillation import DistillationTargets

        datasets = [train_set] if val_set is None else [train_set, val_set]
        distillation = DistillationTargets(
            scans, datasets, config.refinement, training.target_refresh_epochs, device_spec(execution),
            None if stop_event is None else stop_event.is_set,
        )  # fmt: skip
        distillation.build()
    has_validation = val_set is not None and len(val_set) > 0
    monitor = str(training.checkpoint_monitor or ("val_loss" if has_validation else "train_loss"))
    if monitor == "val_loss" and not has_validation:
        raise ValueError(
            "checkpoint_monitor=val_loss needs a validation split; set validation_fraction > 0 or monitor train_loss"
        )
    module.monitor = monitor
    progress = _ProgressAndStop(training.epochs, on_epoch_end, stop_event)
    temporary = None
    if checkpoint_dir is None:
        temporary = tempfile.TemporaryDirectory(prefix="pinn-checkpoints-")
        checkpoint_dir = Path(temporary.name)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    fit_options: dict[str, Any] = {}
    if resume_from is not None:
        check_resume_checkpoint(load_resume_checkpoint(resume_from), resume_from, module, training.epochs)
        fit_options["ckpt_path"] = str(resume_from)
        if "weights_only" in inspect.signature(pl.Trainer.fit).parameters:
            fit_options["weights_only"] = True  # Lightning loads it again: never with full unpickling
    callbacks: list[pl.Callback] = [progress] if distillation is None else [distillation, progress]
    trainer = pl.Trainer(**trainer_arguments(execution, training, monitor, checkpoint_dir, callbacks))
    train_loader = DataLoader(train_set, **dataloader_arguments(execution, training.batch_size, shuffle=True))
    val_loader = (
        DataLoader(val_set, **dataloader_arguments(execution, training.batch_size, shuffle=False))
        if val_set is not None and has_validation
        else None
    )
    main_thread = threading.current_thread() is threading.main_thread()
    sigint_handler = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        try:
            trainer.fit(module, train_loader, val_loader, **fit_options)
        except SystemExit as error:
            # Lightning turns Ctrl-C into a graceful stop and sys.exit(1); the caller gets the interrupt back
            if trainer.interrupted:
                raise KeyboardInterrupt from error
            raise
        except (OSError, RuntimeError) as error:
            if is_out_of_memory(error) or not is_disk_full(error, checkpoint_dir):
                raise
            raise DiskFullError(
                errno.ENOSPC,
                f"cannot write checkpoints to {checkpoint_dir}: the disk is full ({_first_line(error)}); free some space "
                "or choose another --checkpoint-dir",
            ) from error
        finally:
            if sigint_handler is not None and signal.getsignal(signal.SIGINT) is not sigint_handler:
                signal.signal(signal.SIGINT, sigint_handler)  # Lightning ignores further Ctrl-C after the first
        checkpoint = trainer.checkpoint_callback
        best_path = getattr(checkpoint, "best_model_path", "") or None
        # epochs are counted from the first run, also after --resume
        last_epoch = progress.history[-1].epoch if progress.history else 0
        best_epoch = last_epoch
        if best_path and Path(best_path).exists():
            best = torch.load(best_path, map_location="cpu", weights_only=True)
            module.load_state_dict(best["state_dict"])
            best_epoch = int(best["epoch"]) + 1
        bad = [name for name, value in module.model.state_dict().items() if not bool(torch.isfinite(value).all())]
        if bad:
            raise TrainingDivergedError(
                f"training diverged: {len(bad)} weight tensor(s) hold NaN or infinite values (first: {bad[0]}); "
                "nothing was saved; lower the learning rate (--learning-rate) or clip gradients (--gradient-clip-val)"
            )
        module.model.record.epochs_trained = last_epoch
        module.model.to("cpu")
        extra: dict[str, Any] = {}
        if distillation is not None:
            extra["distillation"] = distillation.summary()
            module.model.record.extra["distillation_target_refreshes"] = len(distillation.refreshes)
        return TrainResult(
            model=module.model,
            history=progress.history,
            best_epoch=best_epoch,
            seconds=time.perf_counter() - started,
            stopped=progress.stopped,
            is_global_zero=trainer.is_global_zero,
            checkpoint_dir=None if temporary else checkpoint_dir,
            best_checkpoint=None if temporary else best_path,
            extra=extra,
        )
    finally:
        set_convolution_layout(model.generator, torch.contiguous_format)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if temporary is not None:
            temporary.cleanup()
