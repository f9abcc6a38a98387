"""Training batches seen through the probe's square symmetries: exact physics, and only the probe's own."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ptychodus_pinn.engine import physics
from ptychodus_pinn.engine.config import ModelConfig, RunConfig, TrainingConfig, TrainingMode
from ptychodus_pinn.engine.datasets import build_datasets
from ptychodus_pinn.engine.simulate import simulate_scan, soft_disk_probe
from ptychodus_pinn.engine.training import PinnLightningModule, new_model, training_symmetries


def test_each_symmetry_commutes_with_the_far_field_intensity():
    generator = torch.Generator().manual_seed(0)
    waves = torch.randn(3, 32, 32, dtype=torch.complex64, generator=generator)
    for index in range(physics.SQUARE_SYMMETRIES):
        turned_first = physics.abs2(physics.far_field(physics.square_symmetry(waves, index)))
        turned_after = physics.square_symmetry(physics.abs2(physics.far_field(waves)), index)
        torch.testing.assert_close(turned_first, turned_after, rtol=1e-5, atol=1e-5)


def test_the_eight_symmetries_are_distinct_and_keep_the_centre_pixel():
    grid = torch.arange(16 * 16, dtype=torch.float32).reshape(16, 16)
    images = [physics.square_symmetry(grid, index) for index in range(physics.SQUARE_SYMMETRIES)]
    assert len({tuple(image.flatten().tolist()) for image in images}) == 8
    assert all(float(image[8, 8]) == float(grid[8, 8]) for image in images)
    with pytest.raises(ValueError, match=r"not in 0\.\.7"):
        physics.square_symmetry(grid, 8)


def test_probe_symmetries_are_those_the_probe_has():
    round_probe = torch.from_numpy(soft_disk_probe(32, 8.0))
    assert physics.probe_symmetries(round_probe) == tuple(range(8))
    assert physics.probe_symmetries(round_probe * np.exp(0.7j)) == tuple(range(8))  # a constant phase is invisible
    yy, xx = np.mgrid[0:32, 0:32] - 16
    elliptic = torch.from_numpy(np.exp(-(yy**2) / 20.0 - xx**2 / 60.0).astype(np.complex64))
    assert physics.probe_symmetries(elliptic) == (0, 2, 4, 6)  # reflections of either axis, no transposes
    moved_down = torch.roll(round_probe, 3, dims=-2)
    assert physics.probe_symmetries(moved_down) == (0, 4)  # only reversing the columns keeps it


def _module_and_batch(symmetries: tuple[int, ...]) -> tuple[PinnLightningModule, dict[str, torch.Tensor], torch.Tensor]:
    """A distil module on a scan with a probe and a bad-pixel mask that no symmetry keeps."""
    scan = simulate_scan("siemens", 1e5, 36, 32, seed=4, probe=np.roll(soft_disk_probe(32, 7.0), (3, -2), axis=(-2, -1)))
    bad = np.zeros((32, 32), bool)
    bad[5, 20:23] = True
    scan = dataclasses.replace(scan, bad_pixels=bad)
    config = ModelConfig(N=32, n_filters_scale=1, mode=TrainingMode.DISTIL)
    training = TrainingConfig(epochs=1, batch_size=8, validation_fraction=0.0)
    train_set, _ = build_datasets([scan], config, training, seed=0)
    model = new_model([scan], config, 8)
    module = PinnLightningModule(model, training, 1, bad, symmetries=symmetries)
    batch = {key: value[:6] for key, value in train_set.items.items()}
    batch["labels"] = torch.randn(6, 1, 32, 32, dtype=torch.complex64, generator=torch.Generator().manual_seed(1))
    truth = torch.from_numpy(np.asarray(scan.ground_truth, np.complex64))
    true_patches = physics.extract_patches(truth, batch["positions_yx_px"][:, 0].numpy(), 32)[:, None]
    return module, batch, true_patches


def test_a_turned_batch_scores_the_turned_patches_as_the_batch_scores_the_patches():
    module, batch, patches = _module_and_batch(tuple(range(8)))
    with torch.no_grad():
        likelihood = float(module.likelihood_loss(patches, batch))
        labels = float(module.label_loss(patches, batch, align_phase=True))
        for index in range(1, physics.SQUARE_SYMMETRIES):
            seen = {key: physics.square_symmetry(batch[key], index) for key in ("input", "counts", "labels")}
            seen = {**batch, **seen, "symmetry": torch.tensor(index)}
            turned = physics.square_symmetry(patches, index)
            assert float(module.likelihood_loss(turned, seen)) == pytest.approx(likelihood, rel=1e-5)
            assert float(module.label_loss(turned, seen, align_phase=True)) == pytest.approx(labels, rel=1e-5)
            # the probe and the mask turn with the patterns: without them the true patches fit worse
            assert float(module.likelihood_loss(turned, {**seen, "symmetry": torch.tensor(0)})) > likelihood + 1e-3


def test_batches_are_drawn_through_every_symmetry_and_as_measured():
    module, batch, _ = _module_and_batch((0, 2, 5))
    assert module.symmetries == (2, 5)
    torch.manual_seed(0)
    seen = [module.seen_through_symmetry(batch) for _ in range(60)]
    assert {int(one.get("symmetry", 0)) for one in seen} == {0, 2, 5}
    for one in seen:
        index = int(one.get("symmetry", 0))
        for key in ("input", "counts", "labels"):
            torch.testing.assert_close(one[key], physics.square_symmetry(batch[key], index))
    without, _, _ = _module_and_batch(())
    assert without.seen_through_symmetry(batch) is batch


def test_training_uses_the_probes_symmetries_only_when_asked_and_for_gridsize_one():
    scan = simulate_scan("siemens", 1e5, 16, 32, seed=1)
    off = RunConfig(ModelConfig(N=32), TrainingConfig())
    assert training_symmetries([scan], None, off) == ()
    on = RunConfig(ModelConfig(N=32), TrainingConfig(probe_symmetries=True))
    assert training_symmetries([scan], None, on) == tuple(range(8))
    grid = RunConfig(ModelConfig(N=32, gridsize=2), TrainingConfig(probe_symmetries=True))
    assert training_symmetries([scan], None, grid) == ()


def test_each_inverse_undoes_its_symmetry():
    grid = torch.arange(16 * 16, dtype=torch.float32).reshape(16, 16)
    for index, inverse in enumerate(physics.SQUARE_SYMMETRY_INVERSES):
        torch.testing.assert_close(physics.square_symmetry(physics.square_symmetry(grid, index), inverse), grid)


def test_views_that_differ_by_a_constant_phase_average_to_the_first():
    generator = torch.Generator().manual_seed(3)
    first = torch.randn(4, 1, 16, 16, dtype=torch.complex64, generator=generator)
    noise = 0.1 * torch.randn(4, 1, 16, 16, dtype=torch.complex64, generator=generator)
    weight = torch.ones(16, 16)
    torch.testing.assert_close(physics.average_symmetry_views([first, first * np.exp(2.0j)], weight), first)
    averaged = physics.average_symmetry_views([first + noise, (first - noise) * np.exp(-1.0j)], weight)
    assert float((averaged - first).abs().mean()) < 0.2 * float(noise.abs().mean())  # opposite errors cancel


def test_the_network_sees_the_probes_symmetries_as_asked():
    from ptychodus_pinn.engine.config import ExecutionConfig
    from ptychodus_pinn.engine.inference import symmetry_views
    from ptychodus_pinn.engine.persistence import load_pretrained

    model = load_pretrained(64)
    scan = simulate_scan("siemens", 1e5, 16, 64, seed=1)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert symmetry_views(ExecutionConfig(), scan, model, cpu) == (0,)  # a CPU pays a forward pass per view
    assert symmetry_views(ExecutionConfig(), scan, model, gpu) == (0, 6, 2, 4, 1, 7, 3, 5)
    assert symmetry_views(ExecutionConfig(symmetry_views=4), scan, model, cpu) == (0, 6, 2, 4)
    moved = dataclasses.replace(scan, probe=np.roll(scan.probe, 3, axis=-2))
    assert symmetry_views(ExecutionConfig(symmetry_views=8), moved, model, cpu) == (0, 4)
    grouped = new_model([scan], ModelConfig(N=64, gridsize=2), 16)
    assert symmetry_views(ExecutionConfig(symmetry_views=8), scan, grouped, cpu) == (0,)


@pytest.mark.parametrize("kind", ["lines", "siemens"])
def test_eight_views_give_the_shipped_network_a_better_object_than_one(kind):
    from ptychodus_pinn.engine.config import ExecutionConfig
    from ptychodus_pinn.engine.inference import reconstruct_network
    from ptychodus_pinn.engine.metrics import compare
    from ptychodus_pinn.engine.persistence import load_pretrained

    model = load_pretrained(64)
    scan = simulate_scan(kind, 1e5, 196, 64, seed=11)
    scores = {}
    for views in (1, 8):
        network = reconstruct_network(model, scan, execution=ExecutionConfig(symmetry_views=views), confidence=False)
        scores[views] = compare(network.object, scan.ground_truth, network.illuminated).phase_ssim
        assert network.symmetry_views == views  # the simulated probe has all eight
    assert scores[8] > scores[1] + 0.005, scores


def test_the_log_says_how_many_views_the_network_used(caplog):
    from ptychodus_pinn.engine.config import ExecutionConfig, RefinementConfig
    from ptychodus_pinn.engine.inference import reconstruct
    from ptychodus_pinn.engine.persistence import load_pretrained

    model, scan = load_pretrained(64), simulate_scan("siemens", 1e5, 16, 64, seed=1)
    with caplog.at_level("INFO", logger="ptychodus_pinn"):
        reconstruct(model, scan, execution=ExecutionConfig(symmetry_views=4), refinement=RefinementConfig(epochs=0))
    assert "patterns/s, each seen through 4 symmetry views)" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="ptychodus_pinn"):
        reconstruct(model, scan, execution=ExecutionConfig(), refinement=RefinementConfig(epochs=0))  # a CPU: one view
    assert "patterns/s)" in caplog.text and "symmetry views" not in caplog.text
