"""Model and data choices the ptychodus adapter used to make itself: warm-start fit, model files, loss floor."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ptychodus_pinn.engine import physics
from ptychodus_pinn.engine.config import ExecutionConfig, LossKind, ModelConfig, TrainingMode
from ptychodus_pinn.engine.data import ScanError, load_training_scans, save_scan
from ptychodus_pinn.engine.inference import reconstruct_network
from ptychodus_pinn.engine.metrics import compare
from ptychodus_pinn.engine.model import warm_start_mismatches
from ptychodus_pinn.engine.persistence import find_pretrained, model_file_path, pretrained_name
from ptychodus_pinn.engine.simulate import simulate_scan


def test_warm_start_mismatches_name_the_network_shape_fields():
    stored = ModelConfig(N=64, n_filters_scale=1)
    assert warm_start_mismatches(stored, dataclasses.replace(stored, neighbor_count=8, loss=LossKind.MAE)) == {}
    wanted = dataclasses.replace(stored, n_filters_scale=2, gridsize=2, neighbor_count=3)
    assert warm_start_mismatches(stored, wanted) == {"gridsize": (1, 2), "n_filters_scale": (1, 2)}
    assert warm_start_mismatches(stored, ModelConfig(N=32, n_filters_scale=1)) == {"N": (64, 32)}


def test_poisson_nll_floor_is_the_loss_of_a_perfect_fit():
    rng = np.random.default_rng(0)
    patterns = rng.poisson(20.0, (10, 8, 8)).astype(np.float32)
    bad = np.zeros((8, 8), bool)
    bad[2, 3] = True
    counts = torch.from_numpy(patterns).double()
    valid = torch.from_numpy(~bad).double()
    mean_counts = float(patterns.sum(dtype=np.float64) / len(patterns))
    expected = float(physics.poisson_nll(counts, counts, valid, mean_counts))
    assert physics.poisson_nll_floor(patterns, bad, chunk=3) == pytest.approx(expected, rel=1e-9)
    assert physics.poisson_nll_floor(patterns) < physics.poisson_nll_floor(patterns, bad) < 0  # real counts: negative


def test_loss_floor_only_for_losses_with_a_poisson_term():
    patterns = np.full((4, 8, 8), 5.0, np.float32)
    assert physics.loss_floor(ModelConfig(N=64), patterns) == physics.poisson_nll_floor(patterns)
    assert physics.loss_floor(ModelConfig(N=64, loss=LossKind.MAE), patterns) == 0.0
    assert physics.loss_floor(ModelConfig(N=64, mode=TrainingMode.SUPERVISED), patterns) == 0.0
    # distil adds a refined-object term (>= 0) to the Poisson likelihood: the same floor
    assert physics.loss_floor(ModelConfig(N=64, mode=TrainingMode.DISTIL), patterns) == physics.poisson_nll_floor(patterns)


@pytest.mark.parametrize("size_px", [64, 128])
def test_find_pretrained_ships_n64_and_n128(size_px):
    model = find_pretrained(size_px)
    assert model is not None
    assert (model.config.N, model.config.n_filters_scale) == (size_px, 1)
    assert model.record.extra["pretrained_on"].startswith("app.pretrain broad-one-probe corpus")


@pytest.mark.parametrize("kind", ["siemens", "natural"])
def test_the_shipped_n128_network_sees_objects_it_never_trained_on(kind):
    """Seed 5 is in no corpus. Measured: Siemens 0.383 (stage 1 0.211, flat 0.195), natural 0.568 (flat 0.188);
    on 576 patterns 0.815 and 0.921 (benchmarks/results/pretrained-n128-cpu.md)."""
    scan = simulate_scan(kind, photons=1e5, n_positions=100, N=128, seed=5)
    model = find_pretrained(128)
    assert model is not None
    result = reconstruct_network(model, scan, execution=ExecutionConfig(accelerator="cpu"))
    network = compare(result.object, scan.ground_truth, result.illuminated).phase_ssim
    flat = compare(np.ones_like(scan.ground_truth), scan.ground_truth, result.illuminated).phase_ssim
    assert network > flat + 0.15, (network, flat)


def test_find_pretrained_is_none_for_sizes_without_a_shipped_model():
    assert find_pretrained(32) is None and find_pretrained(256) is None


def test_a_width_4_model_ships_for_n64_only():
    """The GPU-width model (docs/quality.md, "Width 4"): found by its width, the same corpus as the CPU one."""
    model = find_pretrained(64, 4)
    assert model is not None
    assert (model.config.N, model.config.n_filters_scale) == (64, 4)
    assert model.record.extra["pretrained_on"].startswith("app.pretrain broad-one-probe corpus")
    assert find_pretrained(128, 4) is None and find_pretrained(64, 2) is None
    assert pretrained_name(64) == "pretrained-n64.pinn.pt" and pretrained_name(64, 4) == "pretrained-n64-w4.pinn.pt"


def test_a_shipped_file_whose_width_disagrees_with_its_name_is_refused(monkeypatch, caplog):
    from ptychodus_pinn.engine import persistence

    width_1_file = persistence.pretrained_path(64)
    monkeypatch.setattr(persistence, "pretrained_path", lambda size_px, width=1: width_1_file)
    with pytest.raises(persistence.ModelFileError, match="holds a network of width 1, its name says 4"):
        persistence.load_pretrained(64, 4)
    with caplog.at_level("WARNING"):
        assert persistence.find_pretrained(64, 4) is None
    assert "its name says 4" in caplog.text


def test_model_file_path(tmp_path):
    assert model_file_path(tmp_path / "m") == tmp_path / "m.pinn.pt"
    assert model_file_path(tmp_path / "m.pinn.pt") == tmp_path / "m.pinn.pt"
    assert model_file_path(tmp_path / "m.npz") == tmp_path / "m.npz.pinn.pt"
    assert model_file_path(tmp_path, folder_basename="model") == tmp_path / "model.pinn.pt"  # an existing folder
    assert model_file_path(tmp_path / "new", folder_basename="model") == tmp_path / "new" / "model.pinn.pt"
    assert model_file_path(tmp_path / "a.pinn.pt", folder_basename="model") == tmp_path / "a.pinn.pt"


def test_load_training_scans_skips_what_it_cannot_use(tmp_path, small_scan):
    save_scan(small_scan, tmp_path / "a.npz")
    (tmp_path / "broken.npz").write_bytes(b"not a scan")
    (tmp_path / "notes.txt").write_text("ignored")
    (scan,) = load_training_scans(tmp_path)
    assert scan.count == small_scan.count
    assert len(load_training_scans(tmp_path / "a.npz")) == 1
    with pytest.raises(ScanError, match="no usable training files"):
        load_training_scans(tmp_path / "broken.npz")
    save_scan(simulate_scan("siemens", photons=1e4, n_positions=16, N=64, seed=1), tmp_path / "b.npz")
    with pytest.raises(ScanError, match="different pattern sizes"):
        load_training_scans(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_training_scans(tmp_path / "missing")


def test_a_gpu_uses_the_widest_shipped_model_and_a_cpu_width_1():
    """The width the settings leave open (Network Width 0, infer, watch, streaming): 4 on a GPU where a width-4 model
    ships (N = 64), else 1; an explicit width without a shipped model falls back to the width every N ships in."""
    from ptychodus_pinn.engine.persistence import device_model_width, shipped_width

    assert [device_model_width(64, kind) for kind in ("cpu", "cuda", "mps")] == [1, 4, 4]
    assert [device_model_width(128, kind) for kind in ("cpu", "cuda")] == [1, 1]  # no width-4 model for N = 128
    assert device_model_width(32, "cuda") == 1  # nothing ships: the engine's narrowest
    assert [shipped_width(64, width) for width in (1, 2, 4)] == [1, 1, 4]
    assert shipped_width(128, 4) == 1
