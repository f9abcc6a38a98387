"""Shared fixtures: small synthetic scans keep the suite fast on 2 CPU cores."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
torch.set_num_threads(int(os.environ.get("PINN_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def small_scan():
    from ptychodus_pinn.engine.simulate import simulate_scan

    return simulate_scan("siemens", photons=1e5, n_positions=144, N=32, seed=3)


@pytest.fixture(scope="session")
def small_scan_file(tmp_path_factory, small_scan):
    from ptychodus_pinn.engine.data import save_scan

    path = tmp_path_factory.mktemp("scans") / "small scan ü.npz"
    save_scan(small_scan, path)
    return path


@pytest.fixture(scope="session")
def trained_small(small_scan):
    """A tiny model trained for two epochs (shared by tests that need any trained model)."""
    from ptychodus_pinn.engine.config import ExecutionConfig, ModelConfig, RunConfig, TrainingConfig
    from ptychodus_pinn.engine.training import train

    config = RunConfig(
        ModelConfig(N=32, n_filters_scale=1),
        TrainingConfig(epochs=2, batch_size=16, validation_fraction=0.0),
        ExecutionConfig(accelerator="cpu", logger="none", enable_progress_bar=False),
    )
    return train([small_scan], config)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)


@pytest.fixture
def activated() -> Iterator[Any]:
    """The hooks installed with this distribution's entry (as the shim does), undone afterwards."""
    from ptychodus_pinn.plugin.activation import activate, deactivate
    from ptychodus_pinn.qt.entry import reconstructor_plugin

    deactivate()
    assert activate([reconstructor_plugin()])
    yield
    deactivate()
