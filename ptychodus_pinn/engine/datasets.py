"""Training data: the per-scan constants, the groups of neighbouring patterns and the spatial
train/validation split, as tensors the Lightning module consumes (SPEC §4 "Grouping")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ptychodus_pinn.engine import physics
from ptychodus_pinn.engine.config import ModelConfig, TrainingConfig, TrainingMode
from ptychodus_pinn.engine.data import Scan, ScanError
from ptychodus_pinn.engine.model import input_normalization_for, network_input


@dataclass
class ScanTensors:
    """Per-scan constants derived from the data (SPEC §4)."""

    intensity_scale: float
    input_normalization: float
    mean_total_counts: float


def scan_constants(scan: Scan) -> ScanTensors:
    mean_counts = scan.mean_total_counts
    return ScanTensors(
        intensity_scale=physics.intensity_scale_from_data(mean_counts, scan.probe),
        input_normalization=input_normalization_for(mean_counts, scan.size_px),
        mean_total_counts=mean_counts,
    )


class GroupDataset(Dataset[dict[str, torch.Tensor]]):
    """Groups of C = gridsize² neighbouring patterns with everything the loss needs."""

    def __init__(self, items: dict[str, torch.Tensor]) -> None:
        self.items = items

    def __len__(self) -> int:
        return int(self.items["counts"].shape[0])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in self.items.items()}


def group_items(
    scan: Scan, groups: np.ndarray, constants: ScanTensors, with_labels: bool, scan_index: int = 0, with_positions: bool = False
) -> dict[str, torch.Tensor]:
    """Tensors for groups (G, C) of one scan; ``probe_index`` is the index of the training scan (whose probe lit
    them, ``scan_probes``). ``with_positions`` keeps each pattern's position (distillation cuts its labels there)."""
    counts = torch.from_numpy(scan.patterns[groups])
    positions = scan.positions_yx_px[groups]
    offsets = positions - positions.mean(axis=1, keepdims=True)
    count = groups.shape[0]
    items = {
        "counts": counts,
        "input": network_input(counts, constants.input_normalization),
        "offsets": torch.from_numpy(offsets.astype(np.float32)),
        "intensity_scale": torch.full((count,), constants.intensity_scale, dtype=torch.float32),
        "mean_counts": torch.full((count,), constants.mean_total_counts, dtype=torch.float32),
        "probe_index": torch.full((count,), scan_index, dtype=torch.long),
    }
    if with_positions:
        items["positions_yx_px"] = torch.from_numpy(np.asarray(positions, np.float64))
    if with_labels:
        labels_object = scan.ground_truth if scan.ground_truth is not None else scan.object_guess
        if labels_object is None:
            raise ScanError("supervised training needs scans that carry an object (ground_truth or objectGuess)")
        flat = physics.extract_patches(torch.from_numpy(labels_object), positions.reshape(-1, 2), scan.size_px)
        items["labels"] = flat.reshape(count, groups.shape[1], scan.size_px, scan.size_px)
    return items


def scan_probes(scans: Sequence[Scan]) -> torch.Tensor | None:
    """(S, P, N, N) complex64: each training scan's probe, or None when all scans share one probe.

    A corpus of scans taken with different probes (sizes, defocus) trains each pattern against the
    probe that lit it; a model's own probe stands for all of them only when they are equal.
    """
    first = scans[0].probe
    if all(scan.probe.shape == first.shape and np.array_equal(scan.probe, first) for scan in scans[1:]):
        return None
    shapes = {scan.probe.shape for scan in scans}
    if len(shapes) > 1:
        raise ScanError(f"the scans' probes have different shapes {sorted(shapes)}; train on scans with one probe model")
    return torch.from_numpy(np.stack([np.asarray(scan.probe, np.complex64) for scan in scans]))


def spatial_split(positions_yx_px: np.ndarray, validation_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation pattern indices split by region: the right-most stripe validates.

    Overlapping neighbours would leak the validation object into training under a random split.
    """
    count = positions_yx_px.shape[0]
    if validation_fraction <= 0 or count < 4:
        return np.arange(count), np.arange(0)
    columns = positions_yx_px[:, 1]
    threshold = np.quantile(columns, 1 - validation_fraction)
    validation = np.flatnonzero(columns > threshold)
    training = np.flatnonzero(columns <= threshold)
    return training, validation


def build_datasets(
    scans: Sequence[Scan], model: ModelConfig, training: TrainingConfig, seed: int
) -> tuple[GroupDataset, GroupDataset | None]:
    supervised = model.mode is TrainingMode.SUPERVISED
    distil = model.mode is TrainingMode.DISTIL  # labels come later, from refinement (engine/distillation.py)
    train_parts: list[dict[str, torch.Tensor]] = []
    val_parts: list[dict[str, torch.Tensor]] = []
    for index, scan in enumerate(scans):
        if scan.size_px != model.N:
            name = scan.metadata.get("source", f"scan #{index}")
            raise ScanError(f"{name} has {scan.size_px}-px patterns but the model is for N={model.N}")
        constants = scan_constants(scan)
        train_idx, val_idx = spatial_split(scan.positions_yx_px, training.validation_fraction)
        for indices, parts in ((train_idx, train_parts), (val_idx, val_parts)):
            if indices.size < model.channels:
                continue
            groups = physics.group_neighbors(
                scan.positions_yx_px[indices], model.gridsize, model.neighbor_count, None, seed + index
            )
            parts.append(group_items(scan, indices[groups], constants, supervised, index, with_positions=distil))
    if not train_parts:
        raise ScanError(
            f"no training groups: the scans hold too few patterns for gridsize={model.gridsize} "
            f"(needs {model.channels} per group); use gridsize 1 or more patterns"
        )
    train_items = {key: torch.cat([part[key] for part in train_parts]) for key in train_parts[0]}
    if training.n_groups is not None and training.n_groups < len(train_items["counts"]):
        keep = torch.from_numpy(np.random.default_rng(seed).choice(len(train_items["counts"]), training.n_groups, replace=False))
        train_items = {key: value[keep] for key, value in train_items.items()}
    val_dataset = None
    if val_parts:
        val_dataset = GroupDataset({key: torch.cat([part[key] for part in val_parts]) for key in val_parts[0]})
    return GroupDataset(train_items), val_dataset
