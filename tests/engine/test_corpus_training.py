"""Training on a corpus of scans taken with different probes: each pattern meets the probe that lit it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptychodus_pinn.engine import physics
from ptychodus_pinn.engine.config import ModelConfig, TrainingConfig, TrainingMode
from ptychodus_pinn.engine.data import ScanError
from ptychodus_pinn.engine.datasets import build_datasets, scan_probes
from ptychodus_pinn.engine.simulate import (
    CORPUS_PHOTOGRAPHS,
    NATURAL_IMAGES,
    make_object,
    simulate_scan,
    soft_disk_probe,
)
from ptychodus_pinn.engine.training import PinnLightningModule, new_model


def two_probe_scans():
    small = simulate_scan("siemens", 1e5, 36, 32, seed=1, probe_radius_px=6.0, probe_curvature_rad=1.0)
    large = simulate_scan("lines", 1e5, 36, 32, seed=2, probe_radius_px=10.0, probe_curvature_rad=4.0)
    return [small, large]


def test_scan_probes_only_when_the_probes_differ():
    same = [simulate_scan("siemens", 1e5, 16, 32, seed=s) for s in (1, 2)]
    assert scan_probes(same) is None
    scans = two_probe_scans()
    bank = scan_probes(scans)
    assert bank is not None and bank.shape == (2, 1, 32, 32)
    np.testing.assert_array_equal(bank[1].numpy(), scans[1].probe)
    modes = simulate_scan("siemens", 1e5, 16, 32, seed=3, probe=np.stack([scans[0].probe[0]] * 2))
    with pytest.raises(ScanError, match="different shapes"):
        scan_probes([scans[0], modes])


def test_each_pattern_is_trained_against_the_probe_that_lit_it():
    scans = two_probe_scans()
    config = ModelConfig(N=32, n_filters_scale=1, mode=TrainingMode.PINN)  # the likelihood alone
    training = TrainingConfig(epochs=1, batch_size=8, validation_fraction=0.0)
    train_set, _ = build_datasets(scans, config, training, seed=0)
    model = new_model(scans, config, 8)
    module = PinnLightningModule(model, training, 1, probes=scan_probes(scans))
    items = train_set.items
    second = torch.nonzero(items["probe_index"] == 1).flatten()[:4]
    batch = {key: value[second] for key, value in items.items()}

    def nll(probe: np.ndarray) -> float:
        patches = model.predict_patches(batch["input"])
        expected = physics.predicted_counts(
            patches.to(torch.complex64), torch.from_numpy(probe), batch["intensity_scale"][:, None, None, None]
        )
        return float(physics.poisson_nll(expected, batch["counts"], None, batch["mean_counts"][:, None]))

    with torch.no_grad():
        loss = float(module.loss(batch))
        assert loss == pytest.approx(nll(scans[1].probe), rel=1e-5)
        assert abs(loss - nll(scans[0].probe)) > 1e-3  # the model's own probe (scan 0's) would be another loss
    # a trainable probe is one probe for every scan: the bank steps aside
    trainable = new_model(scans, ModelConfig(N=32, n_filters_scale=1, probe_trainable=True), 8)
    assert PinnLightningModule(trainable, training, 1, probes=scan_probes(scans)).scan_probes is None


def test_corpus_photographs_are_not_the_benchmarks_and_defaults_are_unchanged():
    assert not set(CORPUS_PHOTOGRAPHS) & set(NATURAL_IMAGES)
    default = make_object("natural", (48, 48), seed=5)
    assert np.array_equal(default, make_object("natural", (48, 48), seed=5, photographs=NATURAL_IMAGES))
    assert not np.allclose(default, make_object("natural", (48, 48), seed=5, photographs=CORPUS_PHOTOGRAPHS))
    with pytest.raises(ValueError, match="at least two photographs"):
        make_object("natural", (48, 48), seed=5, photographs=("cat",))
    np.testing.assert_array_equal(simulate_scan("siemens", 1e5, 4, 32, seed=0).probe, soft_disk_probe(32, 8.0))
