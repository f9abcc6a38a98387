"""The generator: a U-Net from diffraction amplitudes to complex object patches (SPEC §5).

Diffraction and real space are related by a Fourier transform, a global operation, so the
bottleneck mixes all spatial positions with one learned linear map (cheap at N/8 × N/8) besides
the usual local convolutions. Skip connections carry fine detail to the decoder.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ptychodus_pinn.engine.config import AmplitudeActivation, ModelConfig

BASE_FILTERS = 8
DEPTH = 3


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.GroupNorm(min(8, out_channels // 2), out_channels),
        nn.SiLU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.GroupNorm(min(8, out_channels // 2), out_channels),
        nn.SiLU(),
    )


class SpatialMixer(nn.Module):
    """A learned linear map across all positions of a small feature map (global receptive field)."""

    def __init__(self, side_px: int) -> None:
        super().__init__()
        positions = side_px * side_px
        self.mix = nn.Linear(positions, positions)
        nn.init.eye_(self.mix.weight)
        nn.init.zeros_(self.mix.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = features.shape
        mixed = self.mix(features.reshape(batch, channels, height * width))
        return features + mixed.reshape(batch, channels, height, width)


class PinnGenerator(nn.Module):
    """(B, C, N, N) normalised diffraction amplitudes -> (B, C, N, N) complex object patches."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        channels = config.channels
        widths = [BASE_FILTERS * config.n_filters_scale * 2**level for level in range(DEPTH + 1)]
        self.encoders = nn.ModuleList()
        previous = channels
        for width in widths[:-1]:
            self.encoders.append(_conv_block(previous, width))
            previous = width
        self.pool = nn.AvgPool2d(2)
        self.bottleneck = _conv_block(widths[-2], widths[-1])
        self.mixer = SpatialMixer(config.N // 2**DEPTH)
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        previous = widths[-1]
        for width in reversed(widths[:-1]):
            self.upsamplers.append(nn.ConvTranspose2d(previous, width, 2, stride=2))
            self.decoders.append(_conv_block(2 * width, width))
            previous = width
        self.amplitude_head = nn.Conv2d(widths[0], channels, 1)
        self.phase_head = nn.Conv2d(widths[0], channels, 1)
        with torch.no_grad():
            self.phase_head.weight.zero_()
            self.amplitude_head.weight.zero_()
            for bias, value in ((self.phase_head.bias, 0.0), (self.amplitude_head.bias, self._amplitude_bias_for_one())):
                assert bias is not None
                bias.fill_(value)
        if not config.probe_big:
            half = config.N // 4
            support = torch.zeros(config.N, config.N)
            support[half : config.N - half, half : config.N - half] = 1
        else:
            support = torch.ones(config.N, config.N)
        self.register_buffer("support", support, persistent=False)

    def _amplitude_bias_for_one(self) -> float:
        """Start every patch at amplitude 1 (the O(1) scale fixed by the intensity scale)."""
        activation = self.config.amp_activation
        if activation is AmplitudeActivation.SIGMOID:
            return 0.0  # 2·sigmoid(0) = 1
        if activation is AmplitudeActivation.SOFTPLUS:
            return math.log(math.e - 1)  # softplus(x) = 1
        return 1.28  # silu(1.28) ≈ 1

    def amplitude(self, logits: torch.Tensor) -> torch.Tensor:
        activation = self.config.amp_activation
        if activation is AmplitudeActivation.SIGMOID:
            # 2·sigmoid: the intensity scale normalises the mean |O|² to 1, so amplitudes go above 1
            return 2 * torch.sigmoid(logits)
        if activation is AmplitudeActivation.SOFTPLUS:
            return nn.functional.softplus(logits)
        return nn.functional.silu(logits).clamp_min(0)

    def forward(self, amplitudes: torch.Tensor) -> torch.Tensor:
        skips = []
        features = amplitudes
        for encoder in self.encoders:
            features = encoder(features)
            skips.append(features)
            features = self.pool(features)
        features = self.mixer(self.bottleneck(features))
        for upsampler, decoder, skip in zip(self.upsamplers, self.decoders, reversed(skips), strict=True):
            features = decoder(torch.cat([upsampler(features), skip], dim=1))
        amplitude = self.amplitude(self.amplitude_head(features))
        phase = math.pi * torch.tanh(self.phase_head(features))
        support: torch.Tensor = self.support  # type: ignore[assignment]
        return torch.polar(amplitude * support, phase)


def parameter_count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


@contextmanager
def channels_last_on_cpu(module: nn.Module, device: torch.device) -> Iterator[None]:
    """Run ``module``'s convolutions with channels-last weights while on the CPU, then restore the layout.

    oneDNN's CPU convolutions are much faster in that layout (width-1 N = 64 U-Net, 2 threads: 576
    patterns 0.41 → 0.28 s, a training step 40 → 25 ms); values do not change. Weights already in
    it (a model being trained, see ``training.PinnLightningModule``) stay so; other devices are left alone.
    """
    if device.type != "cpu" or is_channels_last(module):
        yield
        return
    set_convolution_layout(module, torch.channels_last)
    try:
        yield
    finally:
        set_convolution_layout(module, torch.contiguous_format)


def set_convolution_layout(module: nn.Module, memory_format: torch.memory_format) -> None:
    """Store the module's 4-D weights in ``memory_format``, in place (the Parameters stay the same
    objects, so an optimizer holding them is unaffected)."""
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.dim() == 4:
                parameter.data = parameter.data.contiguous(memory_format=memory_format)


def is_channels_last(module: nn.Module) -> bool:
    """Whether the module's first 4-D weight (a convolution's) is stored channels-last."""
    for parameter in module.parameters():
        if parameter.dim() == 4 and parameter.shape[1] > 1:
            return parameter.is_contiguous(memory_format=torch.channels_last) and not parameter.is_contiguous()
    return False
