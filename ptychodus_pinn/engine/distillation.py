"""Refine-then-distil training (``TrainingMode.DISTIL``): the network learns each training scan's refined object.

Why: the per-pattern likelihood that ``pinn`` training minimises has wrong optima (a free patch can fit
its one pattern better than the truth does), while refinement of all patterns of a scan jointly
reaches about LSQML's quality. So each training scan is refined first (``engine.refinement``, from a
flat object, the run's refinement settings) and the network learns pattern → refined patch (probe-
weighted complex L1, each patch's constant phase left free) beside the counts' Poisson likelihood.
Every ``target_refresh_epochs`` the network's object on each training scan is compared with the
target by the counts' likelihood; where the network's fits better, the target is refined again from
it, so targets can only fit the counts better as training goes. A target that fits better is kept as
it is: refining an already refined target further was measured to gain ~10⁻⁴ in NLL for ~6 s per
scan (``benchmarks/results/training-targets-cpu.md``).

The ground truth of a training scan is never read: labels come from refinement alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import lightning.pytorch as pl
import numpy as np
import torch

from ptychodus_pinn.engine import physics
from ptychodus_pinn.engine.config import RefinementConfig, RefinementStart, replace
from ptychodus_pinn.engine.data import Scan
from ptychodus_pinn.engine.datasets import GroupDataset
from ptychodus_pinn.engine.device import DeviceKind, DeviceSpec
from ptychodus_pinn.engine.inference import network_object as network_object_of
from ptychodus_pinn.engine.model import PinnModel
from ptychodus_pinn.engine.refinement import RefinementProblem, filled_start, refine, scaled_start

logger = logging.getLogger(__name__)

KEPT = "kept"  # the target fits the counts better than the network's object: unchanged
NETWORK = "network"  # refined again from the network's object, which fitted better


@dataclass(frozen=True)
class TargetRefresh:
    """One target refined again: from which start, and the counts' NLL (dose-normalised) before and after."""

    epoch: int
    scan_index: int
    start: str  # KEPT or NETWORK
    previous_nll: float
    network_nll: float
    refreshed_nll: float
    seconds: float


def target_refinement(refinement: RefinementConfig) -> RefinementConfig:
    """The run's refinement settings as the first targets use them: from a flat object, never 0 epochs
    (refinement off means the reconstruction's, not the targets')."""
    return replace(refinement, epochs=refinement.epochs or RefinementConfig().epochs, start=RefinementStart.FLAT)


class DistillationTargets(pl.Callback):
    """The training scans' refined objects, written as ``labels`` into the data sets, refreshed between epochs.

    ``datasets`` hold groups of every scan (``probe_index`` names the scan, ``positions_yx_px`` where each
    pattern sits); their ``labels`` are rewritten in place (in shared memory, so DataLoader workers see it).
    """

    def __init__(
        self,
        scans: Sequence[Scan],
        datasets: Sequence[GroupDataset],
        refinement: RefinementConfig,
        refresh_epochs: int,
        devices: DeviceSpec,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.scans = list(scans)
        self.datasets = list(datasets)
        self.refinement = target_refinement(refinement)
        self.refresh_epochs = refresh_epochs
        self.devices = devices
        self.should_stop = should_stop
        self.targets: list[np.ndarray] = []
        self.refreshes: list[TargetRefresh] = []
        self.seconds = 0.0

    def _refined(self, scan: Scan, start: np.ndarray | None, device: torch.device) -> np.ndarray:
        """``scan`` refined from ``start`` (taken as it is), or from a flat object for None."""
        config = self.refinement if start is None else replace(self.refinement, start=RefinementStart.NETWORK)
        return refine(scan, start, config, device=device, should_stop=self.should_stop).object

    def build(self) -> None:
        """First targets: each scan refined from a flat object."""
        started = time.perf_counter()
        self.targets = []
        for index, scan in enumerate(self.scans):
            self.targets.append(self._refined(scan, None, self.devices.torch_device))
            logger.info(
                "Distillation target %d/%d: %d refinement epochs (%.1f s so far)",
                index + 1, len(self.scans), self.refinement.total_epochs_for(scan.size_px), time.perf_counter() - started,
            )  # fmt: skip
        for dataset in self.datasets:
            self._write_labels(dataset, range(len(self.scans)))
        self.seconds += time.perf_counter() - started

    def refresh(self, model: PinnModel, epoch: int) -> None:
        """Each target refined again from the network's object where that fits the counts better; else kept."""
        started = time.perf_counter()
        # where this process's model is (under DDP each rank has its own device)
        device = next(model.parameters()).device
        here = DeviceSpec(cast(DeviceKind, device.type), (device.index or 0,))
        changed: list[int] = []
        for index, scan in enumerate(self.scans):
            scan_started = time.perf_counter()
            # the model keeps its training state and its device (a preview's call)
            network_object = filled_start(network_object_of(model, scan, devices=here, release=False).object)
            problem = RefinementProblem(scan, self.targets[index], device)
            _, previous_nll = scaled_start(problem, self.targets[index])
            _, network_nll = scaled_start(problem, network_object)
            from_network = network_nll < previous_nll
            refreshed_nll = previous_nll
            if from_network:
                self.targets[index] = self._refined(scan, network_object, device)
                _, refreshed_nll = scaled_start(problem, self.targets[index])
                changed.append(index)
            refresh = TargetRefresh(
                epoch, index, NETWORK if from_network else KEPT, previous_nll, network_nll, refreshed_nll,
                time.perf_counter() - scan_started,
            )  # fmt: skip
            self.refreshes.append(refresh)
            logger.info(
                "Distillation target %d after epoch %d: %s (NLL: target %.6g, network's object %.6g, now %.6g)",
                index + 1, epoch, "refined from the network's object" if from_network else "kept", previous_nll,
                network_nll, refreshed_nll,
            )  # fmt: skip
        for dataset in self.datasets:
            self._write_labels(dataset, changed)
        self.seconds += time.perf_counter() - started

    def _write_labels(self, dataset: GroupDataset, scan_indices: Sequence[int] | range) -> None:
        items = dataset.items
        groups, channels = items["positions_yx_px"].shape[:2]
        if "labels" not in items:
            size = self.scans[0].size_px
            items["labels"] = torch.zeros((groups, channels, size, size), dtype=torch.complex64).share_memory_()
        for index in scan_indices:
            rows = torch.nonzero(items["probe_index"] == index).flatten()
            if rows.numel() == 0:
                continue
            positions = items["positions_yx_px"][rows].reshape(-1, 2).numpy()
            scan = self.scans[index]
            patches = physics.extract_patches(torch.from_numpy(self.targets[index]), positions, scan.size_px)
            items["labels"][rows] = patches.reshape(rows.numel(), channels, scan.size_px, scan.size_px)

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch  # epochs done so far
        if self.refresh_epochs <= 0 or epoch == 0 or epoch % self.refresh_epochs:
            return
        if self.should_stop is not None and self.should_stop():
            return
        model = getattr(module, "model", None)
        if isinstance(model, PinnModel):
            self.refresh(model, epoch)

    def summary(self) -> dict[str, Any]:
        """What the targets cost and how the refreshes went (TrainResult.extra["distillation"])."""
        return {
            "target_refinement_epochs": self.refinement.epochs,
            "seconds": self.seconds,
            "refreshes": [asdict(refresh) for refresh in self.refreshes],
        }
