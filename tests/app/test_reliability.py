"""Faults and hostile input: clear errors, correct recovery, nothing lost (issue 5, engine side)."""

from __future__ import annotations

import contextlib
import io
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptychodus_pinn.engine.config import ExecutionConfig, ModelConfig, RunConfig, TrainingConfig
from ptychodus_pinn.engine.data import ScanError, load_scan
from ptychodus_pinn.engine.inference import reconstruct
from ptychodus_pinn.engine.persistence import ModelFileError, load_model
from ptychodus_pinn.engine.simulate import soft_disk_probe
from ptychodus_pinn.engine.training import train

QUIET = ExecutionConfig(accelerator="cpu", logger="none", enable_progress_bar=False)


def test_single_position_scan_trains_and_reconstructs(small_scan):
    single = small_scan.subset(np.array([40]))
    result = train(
        [single], RunConfig(ModelConfig(N=32, n_filters_scale=1), TrainingConfig(epochs=1, validation_fraction=0.0), QUIET)
    )
    reconstruction = reconstruct(result.model, single, execution=QUIET)
    assert np.isfinite(reconstruction.object).all() and reconstruction.illuminated.any()


def test_duplicate_positions_train_and_reconstruct(small_scan):
    duplicated = small_scan.subset(np.repeat(np.arange(10), 3))
    config = RunConfig(ModelConfig(N=32, n_filters_scale=1, gridsize=2), TrainingConfig(epochs=1, validation_fraction=0.0), QUIET)
    result = train([duplicated], config)
    assert np.isfinite(reconstruct(result.model, duplicated, execution=QUIET).object).all()


def test_too_few_patterns_for_the_grid_is_a_clear_error(small_scan):
    config = RunConfig(ModelConfig(N=32, gridsize=2), TrainingConfig(epochs=1, validation_fraction=0.0), QUIET)
    with pytest.raises(ScanError, match="needs 4 per group"):
        train([small_scan.subset(np.arange(3))], config)


def test_killed_training_resumes_from_its_last_checkpoint(tmp_path, small_scan_file):
    model = tmp_path / "killed model.pinn.pt"
    checkpoints = tmp_path / "killed model.pinn.pt.checkpoints"
    command = [sys.executable, "-m", "ptychodus_pinn.app.cli", "train", "--data", str(small_scan_file), "--out", str(model),
               "--accelerator", "cpu", "--n-filters-scale", "1", "--logger", "none", "--no-progress-bar"]  # fmt: skip
    process = subprocess.Popen([*command, "--epochs", "200"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (checkpoints / "last.ckpt").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1.0)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert (checkpoints / "last.ckpt").exists() and not model.exists()
    import torch

    epoch_killed = torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"]
    resumed = subprocess.run(
        [*command, "--epochs", str(epoch_killed + 3), "--resume"], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-1500:]
    losses = (tmp_path / "killed model.pinn.pt.losses.csv").read_text().splitlines()[1:]
    assert next(int(line.split(",")[0]) for line in losses) == epoch_killed + 2
    assert load_model(model).record.epochs_trained >= 1


def test_resume_without_a_checkpoint_says_so(tmp_path, small_scan_file, capsys):
    from ptychodus_pinn.app.cli import main

    code = main(
        ["train", "--data", str(small_scan_file), "--out", str(tmp_path / "m.pinn.pt"), "--resume", "--accelerator", "cpu"]
    )
    assert code == 2 and "no checkpoint to resume from" in capsys.readouterr().err


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


arrays_strategy = st.dictionaries(
    st.sampled_from(["diff3d", "xcoords", "ycoords", "probeGuess", "objectGuess", "bad_pixels", "data", "scan", "probe", "x"]),
    st.one_of(
        st.builds(lambda n: np.ones((n, 32, 32), np.float32), st.integers(0, 3)),
        st.builds(lambda n: np.arange(n, dtype=np.float64), st.integers(0, 5)),
        st.builds(lambda v: np.full((32, 32), v, np.complex64), st.floats(allow_nan=True, allow_infinity=True)),
        st.builds(lambda s: np.zeros(s, np.int16), st.tuples(st.integers(0, 3), st.integers(0, 3))),
        st.just(soft_disk_probe(32, 8)),
    ),
    max_size=7,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrays=arrays_strategy)
def test_fuzzed_scan_files_raise_only_documented_errors(tmp_path, arrays):
    path = tmp_path / "fuzz.npz"
    path.write_bytes(_npz_bytes(arrays))
    with contextlib.suppress(ScanError):
        load_scan(path)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=600))
def test_fuzzed_bytes_raise_only_documented_errors(tmp_path, content):
    for name in ("fuzz.npz", "fuzz.h5", "fuzz.npz.bz2"):
        path = tmp_path / name
        path.write_bytes(content)
        with contextlib.suppress(ScanError):
            load_scan(path)
    model_path = tmp_path / "fuzz.pinn.pt"
    model_path.write_bytes(content)
    with contextlib.suppress(ModelFileError):
        load_model(model_path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=st.dictionaries(st.text("abcdef/._", min_size=1, max_size=12), st.binary(max_size=200), max_size=4))
def test_fuzzed_zip_model_files_are_refused_cleanly(tmp_path, members):
    path = tmp_path / "zip.pinn.pt"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(ModelFileError):
        load_model(path)
