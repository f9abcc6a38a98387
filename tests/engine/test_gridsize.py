"""Gridsize ≥ 2 golden cases (issue 10): a consistent group is a fixed point of the shared canvas.

Patches cut from one known object at a group's true, non-integer and asymmetric positions must
come back from the shared canvas unchanged, their predicted counts must equal the counts simulated
directly from the object, and the training loss (through ``PinnLightningModule``, as training runs
it) must be lowest, with a vanishing gradient, at the truth on noise-free data. The patches are cut
twice: with the engine's ``extract_patches`` and independently with scipy's cubic-spline
interpolation (y = row, x = column; the probe's pixel N//2 sits on the position).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from ptychodus_pinn.engine import physics
from ptychodus_pinn.engine.config import ModelConfig, TrainingConfig, TrainingMode
from ptychodus_pinn.engine.data import Scan
from ptychodus_pinn.engine.datasets import group_items, scan_constants
from ptychodus_pinn.engine.model import PinnModel, TrainingRecord
from ptychodus_pinn.engine.simulate import soft_disk_probe
from ptychodus_pinn.engine.training import PinnLightningModule

N = 32
# one group of four probe positions (y = row, x = column): fractional and asymmetric, so a sign
# flip, a swapped axis or a mirrored sub-pixel shift cannot pass unnoticed
POSITIONS = np.array([[40.3, 41.7], [39.6, 47.45], [46.2, 40.9], [45.85, 48.1]])
SCALE = 1e5 / 200.0


def smooth_object(shape: tuple[int, int] = (96, 96), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)

    def field() -> np.ndarray:
        values = ndimage.gaussian_filter(rng.standard_normal(shape), 2.5)
        return values / values.std()

    return ((0.85 + 0.1 * field()) * np.exp(1j * 0.8 * field())).astype(np.complex64)


def numpy_patches(obj: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Independent cut: patch[r, c] = obj(y - N//2 + r, x - N//2 + c), cubic splines."""
    offsets = np.arange(N) - N // 2
    patches = []
    for y, x in positions:
        rows, cols = np.meshgrid(y + offsets, x + offsets, indexing="ij")
        real = ndimage.map_coordinates(obj.real, [rows, cols], order=3)
        imaginary = ndimage.map_coordinates(obj.imag, [rows, cols], order=3)
        patches.append(real + 1j * imaginary)
    return np.array(patches, np.complex64)


@pytest.fixture(scope="module")
def group():
    obj = smooth_object()
    probe = torch.from_numpy(soft_disk_probe(N, 8))
    return {
        "object": obj,
        "probe": probe,
        "weight": physics.probe_weight(probe),
        "offsets": torch.from_numpy(POSITIONS - POSITIONS.mean(axis=0)).float()[None],
        "engine": physics.extract_patches(torch.from_numpy(obj), POSITIONS, N)[None],
        "numpy": torch.from_numpy(numpy_patches(obj, POSITIONS))[None],
        "direct": physics.expected_counts_on_grid(torch.from_numpy(obj), probe, POSITIONS, SCALE),
    }


def lit(weight: torch.Tensor, level: float = 0.05) -> torch.Tensor:
    return weight > level


def test_engine_patches_match_an_independent_bilinear_cut(group):
    offsets = np.arange(N) - N // 2
    for index, (y, x) in enumerate(POSITIONS):
        rows, cols = np.meshgrid(y + offsets, x + offsets, indexing="ij")
        obj = group["object"]
        expected = ndimage.map_coordinates(obj.real, [rows, cols], order=1) + 1j * ndimage.map_coordinates(
            obj.imag, [rows, cols], order=1
        )
        np.testing.assert_allclose(group["engine"][0, index].numpy(), expected, atol=1e-5)


def test_a_lone_patch_comes_back_unchanged_from_the_canvas(group):
    """Merging must not interpolate a patch's own content (the old centroid-canvas round trip blurred it)."""
    patch = group["engine"][:, :1]
    merged = physics.merge_group_on_canvas(patch, torch.tensor([[[1.3, -2.6]]]), group["weight"])
    core = lit(group["weight"], 1e-3)
    assert float((merged - patch)[..., core].abs().max()) < 1e-5


@pytest.mark.parametrize("cut", ["engine", "numpy"])
def test_a_consistent_group_is_a_fixed_point_of_the_shared_canvas(group, cut):
    patches = group[cut]
    merged = physics.merge_group_on_canvas(patches, group["offsets"], group["weight"])
    core = lit(group["weight"])
    # a neighbour moved once by a bilinear shift differs from the exact cut by ≈ f(1-f)/2 · curvature
    assert float((merged - patches)[..., core].abs().max()) < 0.06
    assert float((merged - patches)[..., core].abs().mean()) < 0.01
    # the same group with its offsets mirrored is far from a fixed point: the test sees signs
    mirrored = physics.merge_group_on_canvas(patches, -group["offsets"], group["weight"])
    assert float((mirrored - patches)[..., core].abs().mean()) > 0.1


def test_counts_from_the_merged_group_equal_the_counts_simulated_from_the_object(group):
    direct = group["direct"]
    cut = group["numpy"][0]
    # independent forward model: numpy's centred unitary FFT of the spline-cut exit waves
    probe = group["probe"].numpy()
    waves = cut.numpy()[:, None] * probe
    spectra = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(waves, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    numpy_counts = SCALE * (np.abs(spectra) ** 2).sum(axis=1)

    def relative(counts) -> float:
        return float(np.abs(np.asarray(counts) - direct.numpy()).sum() / direct.numpy().sum())

    assert relative(numpy_counts) < 1e-3
    merged = physics.merge_group_on_canvas(group["numpy"], group["offsets"], group["weight"])
    assert relative(physics.predicted_counts(merged[0], group["probe"], SCALE)) < 0.02


def _noise_free_module(group, groups: list[list[int]]):
    """The LightningModule with the generator replaced by free patches, on a noise-free scan."""
    obj, probe = group["object"], group["probe"]
    scan = Scan(patterns=group["direct"].numpy().astype(np.float32), positions_yx_px=POSITIONS, probe=probe.numpy(),
                object_shape=obj.shape, ground_truth=obj)  # fmt: skip
    constants = scan_constants(scan)
    batch = group_items(scan, np.array(groups), constants, with_labels=False)
    gridsize = math.isqrt(len(groups[0]))
    config = ModelConfig(N=N, gridsize=gridsize, neighbor_count=3, n_filters_scale=1, mode=TrainingMode.PINN)
    record = TrainingRecord(constants.intensity_scale, constants.input_normalization, constants.mean_total_counts)
    module = PinnLightningModule(PinnModel(config, scan.probe, record), TrainingConfig(), 1, None)
    # the data-derived scale normalises |O|² to 1 under the probe: the truth is the object times this
    amplitude = float(np.sqrt(SCALE / constants.intensity_scale))
    return module, batch, amplitude


def _loss_and_gradient(module, batch, patches: torch.Tensor) -> tuple[float, float]:
    free = patches.clone().requires_grad_(True)
    module.model.predict_patches = lambda network_input: free
    loss = module.loss(batch)
    loss.backward()
    assert free.grad is not None
    return float(loss.detach()), float(free.grad.abs().sum())


def _cut(group, positions: np.ndarray, amplitude: float) -> torch.Tensor:
    return torch.from_numpy(numpy_patches(group["object"], positions))[None] * amplitude


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [2, 0, 3, 1]])
def test_the_training_loss_is_lowest_with_no_gradient_at_the_truth(group, order):
    module, batch, amplitude = _noise_free_module(group, [order])
    positions = POSITIONS[order]
    truth = _cut(group, positions, amplitude)
    at_truth, gradient_at_truth = _loss_and_gradient(module, batch, truth)
    phase_slip = truth.clone()
    phase_slip[0, 0] *= np.exp(0.5j)
    assert _loss_and_gradient(module, batch, phase_slip)[0] > at_truth
    wrong = {
        "shifted 1 px in x": _cut(group, positions + np.array([0.0, 1.0]), amplitude),
        "mirrored about the centroid": _cut(group, 2 * positions.mean(axis=0) - positions, amplitude),
        "channels swapped": truth[:, [1, 0, 2, 3]],
    }
    for name, patches in wrong.items():
        loss, gradient = _loss_and_gradient(module, batch, patches)
        assert loss > at_truth, name
        assert gradient_at_truth < 0.2 * gradient, name
    # the shared canvas costs the truth less than a fifth of what a 0.3-px position error costs
    # (the old centroid-canvas round trip cost 70 % of it)
    alone, single, _ = _noise_free_module(group, [[index] for index in order])
    per_pattern, _ = _loss_and_gradient(alone, single, truth.reshape(4, 1, N, N))
    misplaced, _ = _loss_and_gradient(alone, single, _cut(group, positions + 0.3, amplitude).reshape(4, 1, N, N))
    assert at_truth - per_pattern < 0.2 * (misplaced - per_pattern)
