"""A trained PtychoPINN: the generator plus the physics constants it was trained with.

Everything needed to rebuild and apply the model travels with it (config, probe, intensity scale,
input normalisation), so a model file is self-describing (nanoGPT-style).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ptychodus_pinn.engine import physics
from ptychodus_pinn.engine.config import ModelConfig
from ptychodus_pinn.engine.network import PinnGenerator


def network_input(counts: torch.Tensor, input_normalization: torch.Tensor | float) -> torch.Tensor:
    """The network's input for measured counts (SPEC §4): sqrt(counts) × the scan's normalisation scalar."""
    return torch.sqrt(counts.clamp_min(0)) * input_normalization


def input_normalization_for(mean_total_counts: float, size_px: int) -> float:
    """Scalar that makes the mean square of sqrt(counts) · scalar equal to 1 for a dataset.

    Recomputed for every scan at inference, so a model trained at one dose applies to another.
    """
    mean_counts_per_pixel = mean_total_counts / (size_px * size_px)
    if not math.isfinite(mean_counts_per_pixel) or mean_counts_per_pixel <= 0:
        raise ValueError("the scan has no counts; cannot normalise the network input")
    return 1.0 / math.sqrt(mean_counts_per_pixel)


# the network shape: a model warm-starts training only for settings that agree on these
WARM_START_FIELDS = ("N", "gridsize", "n_filters_scale", "amp_activation", "probe_big")


def warm_start_mismatches(stored: ModelConfig, wanted: ModelConfig) -> dict[str, tuple[Any, Any]]:
    """``{field: (stored value, wanted value)}`` for each network-shape field a model (``stored``) does not
    share with the config training asks for (``wanted``); empty when the model can warm-start it."""
    return {
        name: (getattr(stored, name), getattr(wanted, name))
        for name in WARM_START_FIELDS
        if getattr(stored, name) != getattr(wanted, name)
    }


@dataclass
class TrainingRecord:
    """Facts about how the model was trained, kept in the model file."""

    intensity_scale: float
    input_normalization: float
    mean_total_counts: float
    batch_size: int = 16
    epochs_trained: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # inference steps through the patterns batch_size at a time: 0 or less would never end
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"TrainingRecord.batch_size={self.batch_size!r} is not allowed; it must be an integer >= 1")


class PinnModel(nn.Module):
    """Generator + probe + intensity-scale correction, with the forward model that ties them."""

    def __init__(self, config: ModelConfig, probe: np.ndarray | torch.Tensor, record: TrainingRecord) -> None:
        super().__init__()
        probe_tensor = torch.as_tensor(np.asarray(probe), dtype=torch.complex64)
        if probe_tensor.ndim == 2:
            probe_tensor = probe_tensor[None]
        if probe_tensor.shape[-1] != config.N or probe_tensor.shape[-2] != config.N:
            raise ValueError(f"probe is {tuple(probe_tensor.shape[-2:])} but the model expects N={config.N}")
        self.config = config
        self.record = record
        self.generator = PinnGenerator(config)
        self.probe = nn.Parameter(probe_tensor, requires_grad=config.probe_trainable)
        # multiplies every scan's data-derived intensity scale; trainable on request
        self.log_intensity_correction = nn.Parameter(torch.zeros(()), requires_grad=config.intensity_scale_trainable)

    def network_input(self, counts: torch.Tensor, input_normalization: torch.Tensor | float) -> torch.Tensor:
        return network_input(counts, input_normalization)

    def predict_patches(self, network_input: torch.Tensor) -> torch.Tensor:
        return self.generator(network_input)

    def has_generator_of(self, other: PinnModel) -> bool:
        """Whether ``other``'s network computes what this one does (same architecture, equal weights): e.g. the
        shipped model loaded from its file by hand, which need not be weighed against the shipped one."""
        mine, theirs = self.generator.state_dict(), other.generator.state_dict()
        return (
            self.config.N == other.config.N
            and mine.keys() == theirs.keys()
            and all(mine[name].shape == theirs[name].shape and torch.equal(mine[name].cpu(), theirs[name].cpu()) for name in mine)
        )

    def expected_counts(
        self, patches: torch.Tensor, intensity_scale: torch.Tensor | float, probe: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Physics forward model, always in fp32/complex64 (mixed precision never reaches the FFT).

        ``probe``: per-item probes (B, 1, P, N, N) for patches (B, C, N, N) from scans taken with
        different probes (training on a corpus); the model's own probe otherwise.
        """
        device_type = patches.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            scale = torch.exp(self.log_intensity_correction.float()) * intensity_scale
            return physics.predicted_counts(patches.to(torch.complex64), self.probe if probe is None else probe, scale)
