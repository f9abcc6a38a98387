"""Refine-then-distil training: targets come from refinement (never the truth) and are refreshed as it trains."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ptychodus_pinn.engine import distillation, physics
from ptychodus_pinn.engine.config import (
    ExecutionConfig,
    ModelConfig,
    RefinementConfig,
    RunConfig,
    TrainingConfig,
    TrainingMode,
)
from ptychodus_pinn.engine.datasets import build_datasets
from ptychodus_pinn.engine.device import DeviceSpec
from ptychodus_pinn.engine.distillation import DistillationTargets, target_refinement
from ptychodus_pinn.engine.persistence import load_model, save_model
from ptychodus_pinn.engine.refinement import refine
from ptychodus_pinn.engine.simulate import simulate_scan
from ptychodus_pinn.engine.training import PinnLightningModule, new_model, train

CPU = DeviceSpec("cpu")
QUIET = ExecutionConfig(accelerator="cpu", logger="none", enable_progress_bar=False)
SHORT_REFINEMENT = RefinementConfig(epochs=4)


@pytest.fixture(scope="module")
def scans():
    """Two small scans whose truth is poisoned: a target that read it would not be finite."""
    made = [simulate_scan("siemens", 1e5, 64, 32, seed=seed) for seed in (21, 22)]
    truths = [scan.ground_truth for scan in made]
    poisoned = [dataclasses.replace(scan, ground_truth=np.full_like(scan.ground_truth, np.nan)) for scan in made]
    return poisoned, truths


def distil_targets(scans, refresh_epochs=1):
    model = ModelConfig(N=32, n_filters_scale=1, mode=TrainingMode.DISTIL)
    train_set, val_set = build_datasets(scans, model, TrainingConfig(validation_fraction=0.2), seed=0)
    datasets = [train_set] if val_set is None else [train_set, val_set]
    return DistillationTargets(scans, datasets, SHORT_REFINEMENT, refresh_epochs, CPU), datasets


def test_targets_are_the_scans_refined_from_flat_never_their_truth(scans):
    poisoned, _ = scans
    targets, datasets = distil_targets(poisoned)
    targets.build()
    config = target_refinement(SHORT_REFINEMENT)
    for index, scan in enumerate(poisoned):
        refined = refine(scan, np.ones(scan.object_shape, np.complex64), config).object
        np.testing.assert_allclose(targets.targets[index], refined, atol=1e-5)
        for dataset in datasets:
            items = dataset.items
            rows = torch.nonzero(items["probe_index"] == index).flatten()
            assert rows.numel() > 0
            positions = items["positions_yx_px"][rows].reshape(-1, 2).numpy()
            expected = physics.extract_patches(torch.from_numpy(refined), positions, 32)
            labels = items["labels"][rows].reshape(-1, 32, 32)
            assert bool(torch.isfinite(labels).all())  # the NaN truth was never read
            np.testing.assert_allclose(labels.numpy(), expected.numpy(), atol=1e-5)


def test_a_target_that_fits_better_than_the_networks_object_is_kept(scans):
    poisoned, _ = scans
    targets, datasets = distil_targets(poisoned)
    targets.build()
    before = [target.copy() for target in targets.targets]
    labels_before = datasets[0].items["labels"].clone()
    untrained = new_model(poisoned, ModelConfig(N=32, n_filters_scale=1), 16).train()
    targets.refresh(untrained, epoch=1)
    assert untrained.training  # between epochs: Lightning's training state is left as it was
    assert [refresh.start for refresh in targets.refreshes] == [distillation.KEPT] * 2
    for refresh in targets.refreshes:
        assert refresh.network_nll > refresh.previous_nll == refresh.refreshed_nll
    assert all(np.array_equal(new, old) for new, old in zip(targets.targets, before, strict=True))
    assert torch.equal(datasets[0].items["labels"], labels_before)


def test_a_target_is_refined_again_from_the_networks_object_when_that_fits_better(scans, monkeypatch):
    poisoned, truths = scans
    targets, datasets = distil_targets(poisoned)
    targets.build()
    labels_before = [dataset.items["labels"].clone() for dataset in datasets]
    truth_of = {id(scan): truth for scan, truth in zip(poisoned, truths, strict=True)}
    # a network as good as it gets: its object is the truth (the real one, not the poisoned copy)
    network = lambda model, scan, **options: SimpleNamespace(object=truth_of[id(scan)])  # noqa: E731
    monkeypatch.setattr(distillation, "network_object_of", network)
    model = new_model(poisoned, ModelConfig(N=32, n_filters_scale=1), 16)
    targets.refresh(model, epoch=3)
    assert [refresh.start for refresh in targets.refreshes] == [distillation.NETWORK] * 2
    for refresh in targets.refreshes:
        assert refresh.network_nll < refresh.previous_nll and refresh.refreshed_nll <= refresh.network_nll + 1e-6
    for target, truth in zip(targets.targets, truths, strict=True):  # refined from the truth, it stays near it
        lit = np.abs(target) > 0
        assert np.median(np.abs(np.angle(target[lit] * np.conj(truth[lit])))) < 0.1
    for dataset, before in zip(datasets, labels_before, strict=True):  # the data sets see the new targets
        assert not torch.equal(dataset.items["labels"], before)
        assert bool(torch.isfinite(dataset.items["labels"]).all())


def test_the_distil_loss_is_the_likelihood_plus_the_weighted_label_term(small_scan):
    config = ModelConfig(N=32, n_filters_scale=1, mode=TrainingMode.DISTIL)
    model = new_model([small_scan], config, 16)
    train_set, _ = build_datasets([small_scan], config, TrainingConfig(validation_fraction=0.0), seed=0)
    targets = DistillationTargets([small_scan], [train_set], SHORT_REFINEMENT, 0, CPU)
    targets.build()
    batch = {key: value[:8] for key, value in train_set.items.items()}
    module = PinnLightningModule(model, TrainingConfig(distil_weight=2.5), 1)
    patches = module.patches_for(batch)
    likelihood, labels = module.likelihood_loss(patches, batch), module.label_loss(patches, batch, align_phase=True)
    assert float(labels.detach()) > 0
    torch.testing.assert_close(module.loss(batch), likelihood + 2.5 * labels)


def test_the_label_term_ignores_each_patchs_constant_phase_which_its_pattern_cannot_show(small_scan):
    model = new_model([small_scan], ModelConfig(N=32, n_filters_scale=1), 16)
    module = PinnLightningModule(model, TrainingConfig(), 1)
    labels = physics.extract_patches(torch.from_numpy(small_scan.ground_truth), small_scan.positions_yx_px[:6], 32)[:, None]
    turned = labels * torch.exp(1j * torch.linspace(-3.0, 3.0, 6))[:, None, None, None].to(torch.complex64)
    batch = {"labels": labels}
    assert float(module.label_loss(turned, batch, align_phase=True)) < 1e-5
    assert float(module.label_loss(turned, batch)) > 0.1  # the supervised term (a known object) keeps the phase
    # what is learnable still counts: another object is far from the labels whatever its phase
    other = physics.extract_patches(torch.from_numpy(small_scan.ground_truth), small_scan.positions_yx_px[-6:], 32)[:, None]
    assert float(module.label_loss(other, batch, align_phase=True)) > 0.05


def test_distil_training_refreshes_its_targets_and_records_it(scans, tmp_path):
    poisoned, _ = scans
    config = RunConfig(
        ModelConfig(N=32, n_filters_scale=1, mode=TrainingMode.DISTIL),
        TrainingConfig(epochs=3, batch_size=16, validation_fraction=0.0, target_refresh_epochs=1),
        QUIET,
        SHORT_REFINEMENT,
    )
    result = train(poisoned, config)
    summary = result.extra["distillation"]
    assert summary["target_refinement_epochs"] == 4
    # refreshed before epochs 2 and 3 (never before the first: the network has learnt nothing yet)
    assert [(refresh["epoch"], refresh["scan_index"]) for refresh in summary["refreshes"]] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    path = save_model(result.model, tmp_path / "distilled.pinn.pt")
    loaded = load_model(path)
    assert loaded.config.mode is TrainingMode.DISTIL
    assert loaded.record.extra["distillation_target_refreshes"] == 4


def test_distil_trains_groups_of_the_shared_canvas_too(scans):
    poisoned, _ = scans
    config = RunConfig(
        ModelConfig(N=32, n_filters_scale=1, gridsize=2, mode=TrainingMode.DISTIL),
        TrainingConfig(epochs=1, batch_size=8, validation_fraction=0.0),
        QUIET,
        SHORT_REFINEMENT,
    )
    result = train(poisoned[:1], config)
    assert np.isfinite(result.history[-1].train_loss)
    assert result.extra["distillation"]["refreshes"] == []  # one epoch: nothing to refresh yet
