"""The generator (SPEC §5): shapes, the two heads' ranges, width scaling and gradient flow."""

from __future__ import annotations

import math

import pytest
import torch

from ptychodus_pinn.engine.config import AmplitudeActivation, ModelConfig
from ptychodus_pinn.engine.network import (
    DEPTH,
    PinnGenerator,
    channels_last_on_cpu,
    is_channels_last,
    parameter_count,
    set_convolution_layout,
)


def _generator(**fields) -> PinnGenerator:
    torch.manual_seed(0)
    return PinnGenerator(ModelConfig(**{"N": 32, "n_filters_scale": 1, **fields}))


def _randomize_heads(generator: PinnGenerator, scale: float) -> None:
    """The heads start at zero (every patch amplitude 1, phase 0); give them large random weights."""
    with torch.no_grad():
        for head in (generator.amplitude_head, generator.phase_head):
            head.weight.normal_(0.0, scale)


@pytest.mark.parametrize("gridsize", [1, 2])
@pytest.mark.parametrize("N", [32, 64])
def test_output_is_complex_batch_channels_n_by_n(N, gridsize):
    generator = _generator(N=N, gridsize=gridsize)
    channels = gridsize**2
    with torch.no_grad():
        out = generator(torch.rand(3, channels, N, N))
    assert out.shape == (3, channels, N, N)
    assert out.dtype == torch.complex64
    assert torch.isfinite(out.real).all() and torch.isfinite(out.imag).all()


@pytest.mark.parametrize("activation", list(AmplitudeActivation))
def test_untrained_generator_starts_every_patch_at_amplitude_one_phase_zero(activation):
    generator = _generator(amp_activation=activation)
    with torch.no_grad():
        out = generator(torch.rand(2, 1, 32, 32))
    torch.testing.assert_close(out.abs(), torch.ones(2, 1, 32, 32), atol=0.01, rtol=0)
    assert out.angle().abs().max() == 0


def test_phase_is_pi_tanh_of_the_phase_head():
    """The phase is π·tanh(head): bounded by π and never wrapped (a larger factor would wrap here)."""
    generator = _generator()
    _randomize_heads(generator, 3.0)
    logits: list[torch.Tensor] = []
    generator.phase_head.register_forward_hook(lambda module, inputs, output: logits.append(output))
    with torch.no_grad():
        out = generator(torch.rand(4, 1, 32, 32))
    head = logits[0]
    assert head.abs().max() > 5  # saturated: tanh ≈ ±1 somewhere, so the bound is reached
    expected = math.pi * torch.tanh(head)
    assert expected.abs().max() <= math.pi and expected.abs().max() > 0.99 * math.pi
    lit = out.abs() > 1e-3
    torch.testing.assert_close(torch.polar(torch.ones_like(expected), expected)[lit], (out / out.abs())[lit], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "activation,low,high",
    [
        (AmplitudeActivation.SIGMOID, 0.0, 2.0),  # 2·sigmoid: the intensity scale puts mean |O|² at 1, so above 1 is allowed
        (AmplitudeActivation.SOFTPLUS, 0.0, math.inf),
    ],
)
def test_amplitude_activation_ranges_are_open(activation, low, high):
    generator = _generator(amp_activation=activation)
    logits = torch.linspace(-15, 15, 301, dtype=torch.float64)
    amplitude = generator.amplitude(logits)
    assert (amplitude > low).all() and (amplitude < high).all()
    assert (torch.diff(amplitude) > 0).all()  # strictly increasing: every amplitude is reachable once


def test_silu_amplitude_is_never_negative():
    generator = _generator(amp_activation=AmplitudeActivation.SILU)
    logits = torch.linspace(-15, 15, 301)
    amplitude = generator.amplitude(logits)
    assert (amplitude >= 0).all()
    torch.testing.assert_close(amplitude[logits > 0], torch.nn.functional.silu(logits[logits > 0]))


@pytest.mark.parametrize("activation", list(AmplitudeActivation))
def test_amplitude_activation_bounds_hold_through_the_network(activation):
    generator = _generator(amp_activation=activation)
    _randomize_heads(generator, 3.0)
    with torch.no_grad():
        amplitude = generator(torch.rand(4, 1, 32, 32)).abs()
    assert amplitude.min() >= 0
    if activation is AmplitudeActivation.SIGMOID:
        assert amplitude.max() <= 2.0


def test_probe_big_false_keeps_only_the_central_half():
    generator = _generator(probe_big=False)
    with torch.no_grad():
        amplitude = generator(torch.rand(1, 1, 32, 32)).abs()[0, 0]
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[8:24, 8:24] = True
    assert (amplitude[~inside] == 0).all() and (amplitude[inside] > 0).all()


def test_width_scale_grows_the_parameter_count_quadratically():
    """Every convolution is width × width (× kernel), so the count is a quadratic in n_filters_scale."""
    counts = [parameter_count(_generator(n_filters_scale=scale)) for scale in (1, 2, 3, 4)]
    assert counts == sorted(counts) and len(set(counts)) == 4
    assert counts[3] - 3 * counts[2] + 3 * counts[1] - counts[0] == 0  # third difference of a quadratic
    assert 3.5 < counts[3] / counts[1] < 4.0  # doubling the width almost quadruples the parameters


def test_pattern_size_only_changes_the_bottleneck_mixer():
    """The mixer is one linear map over the (N/8)² bottleneck positions: (P² + P) parameters."""
    small, large = (parameter_count(_generator(N=N)) for N in (32, 64))
    positions = [(N // 2**DEPTH) ** 2 for N in (32, 64)]
    assert large - small == (positions[1] ** 2 + positions[1]) - (positions[0] ** 2 + positions[0])


def test_gridsize_adds_parameters_linearly_in_width():
    """Only the first convolution and the heads see the channels, so the extra count is linear in the width."""
    extra = [
        parameter_count(_generator(gridsize=2, n_filters_scale=scale)) - parameter_count(_generator(n_filters_scale=scale))
        for scale in (1, 2, 3)
    ]
    assert extra[0] > 0 and extra[2] - 2 * extra[1] + extra[0] == 0


def _loss(generator: PinnGenerator, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (generator(inputs) - target).abs().pow(2).mean()


@pytest.mark.parametrize("gridsize", [1, 2])
def test_gradients_reach_every_parameter(gridsize):
    """The heads start at zero, so the first step moves only them; from the second step on, every parameter learns."""
    generator = _generator(gridsize=gridsize)
    channels = gridsize**2
    inputs = torch.rand(2, channels, 32, 32)
    target = torch.polar(torch.rand(2, channels, 32, 32) + 0.5, torch.rand(2, channels, 32, 32) - 0.5)
    optimizer = torch.optim.SGD(generator.parameters(), lr=0.1)
    _loss(generator, inputs, target).backward()
    heads = {"amplitude_head.weight", "amplitude_head.bias", "phase_head.weight", "phase_head.bias"}
    for name, parameter in generator.named_parameters():
        if name in heads:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    optimizer.step()
    optimizer.zero_grad()
    _loss(generator, inputs, target).backward()
    silent = [
        name
        for name, p in generator.named_parameters()
        if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0
    ]
    assert silent == []


def test_channels_last_on_cpu_changes_no_value_and_puts_the_layout_back():
    generator = _generator()
    _randomize_heads(generator, 0.5)
    amplitudes = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        expected = generator(amplitudes)
        with channels_last_on_cpu(generator, torch.device("cpu")):
            assert is_channels_last(generator)
            inside = generator(amplitudes)
    assert not is_channels_last(generator)
    assert all(parameter.is_contiguous() for parameter in generator.parameters())
    torch.testing.assert_close(inside, expected, rtol=1e-4, atol=1e-5)


def test_channels_last_on_cpu_leaves_a_model_already_in_that_layout_so():
    generator = _generator()
    set_convolution_layout(generator, torch.channels_last)
    with channels_last_on_cpu(generator, torch.device("cpu")):
        pass
    assert is_channels_last(generator)  # a model being trained keeps its layout through a preview
    with channels_last_on_cpu(_generator(), torch.device("meta")):
        pass  # other devices: nothing is touched (no error on a device without oneDNN)
