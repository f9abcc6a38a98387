"""The red team's 25 cases (issue 12), one named test each, plus the siblings found on other paths.

Small N = 32 scans and 1-epoch trainings; the cases that used to hang run the CLI in a subprocess
with a timeout.
"""

from __future__ import annotations

import bz2
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ptychodus_pinn.app.cli import main
from ptychodus_pinn.app.outputs import OutputPathError, save_reconstruction
from ptychodus_pinn.engine import data as data_module
from ptychodus_pinn.engine.config import ExecutionConfig, ModelConfig
from ptychodus_pinn.engine.data import DiskFullError, ReadOptions, Scan, ScanError, load_scan, save_scan
from ptychodus_pinn.engine.persistence import ModelFileError, load_model, save_model

FAST = ["--accelerator", "cpu", "--epochs", "1", "--logger", "none", "--no-progress-bar", "--n-filters-scale", "1"]
CLI = [sys.executable, "-m", "ptychodus_pinn.app.cli"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 64-position N = 32 scan, a 1-epoch model trained on it by the CLI, and its checkpoints."""
    folder = tmp_path_factory.mktemp("red team")
    scan = folder / "base.npz"
    assert main(["simulate", "--out", str(scan), "--size", "32", "--n-positions", "64", "--photons", "1e4", "--seed", "5"]) == 0
    model = folder / "m.pinn.pt"
    assert main(["train", "--data", str(scan), "--out", str(model), *FAST]) == 0
    return folder, scan, model


def _one_line_error(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert error and "\n" not in error and "Traceback" not in error, error
    return error


def _rewrite_model(path: Path, target: Path, change) -> Path:
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, target)
    return target


def _scan_without_truth(scan_path: Path, target: Path, change=None) -> Path:
    scan = load_scan(scan_path)
    scan.ground_truth = None
    if change is not None:
        change(scan)
    save_scan(scan, target)
    return target


# ------------------------------------------------------------------------------------------ data loss


def test_case01_train_out_equal_to_data_is_refused_and_the_scan_kept(run, tmp_path, capsys):
    _, scan, model = run
    same = tmp_path / "same.npz"
    shutil.copy(scan, same)
    before = same.read_bytes()
    assert main(["train", "--data", str(same), "--out", str(same), *FAST]) == 2
    assert "would destroy the input" in _one_line_error(capsys)
    # siblings: another spelling, a symbolic link, a hard link, the warm-start model, the losses file
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link.npz"
    link.symlink_to(same)
    hard = tmp_path / "hard.npz"
    os.link(same, hard)
    init = tmp_path / "init.pinn.pt"
    shutil.copy(model, init)
    for out, extra in (
        (tmp_path / "sub" / ".." / "same.npz", []),
        (link, []),
        (hard, []),
        (init, ["--init-model", str(init)]),
    ):
        assert main(["train", "--data", str(same), "--out", str(out), *extra, *FAST]) == 2
        assert "would destroy the input" in _one_line_error(capsys)
    losses_input = tmp_path / "x.pinn.pt.losses.csv"
    shutil.copy(scan, losses_input)
    assert main(["train", "--data", str(losses_input), "--out", str(tmp_path / "x.pinn.pt"), *FAST]) == 2
    assert "would destroy the input" in _one_line_error(capsys)
    assert same.read_bytes() == before and init.read_bytes() == model.read_bytes()


def test_case02_infer_out_folder_holding_the_input_is_refused(run, tmp_path, capsys):
    _, scan, model = run
    folder = tmp_path / "d"
    folder.mkdir()
    shutil.copy(scan, folder / "object.npz")
    before = (folder / "object.npz").read_bytes()
    infer = ["infer", "--out", str(folder), "--accelerator", "cpu"]
    code = main([*infer, "--model", str(model), "--data", str(folder / "object.npz")])
    assert code == 2 and "would destroy the input" in _one_line_error(capsys)
    assert (folder / "object.npz").read_bytes() == before and not (folder / "object.png").exists()
    # sibling: the model file as an output name
    shutil.copy(model, folder / "object.png")
    code = main([*infer, "--model", str(folder / "object.png"), "--data", str(scan)])
    assert code == 2 and "--model" in _one_line_error(capsys)
    # sibling: --out is an existing file
    code = main(["infer", "--model", str(model), "--data", str(scan), "--out", str(scan), "--accelerator", "cpu"])
    assert code == 2 and "not a folder" in _one_line_error(capsys)


# ------------------------------------------------------------------------------------------------ hangs


def test_case03_model_with_batch_size_zero_is_refused_not_looped_on(run, tmp_path):
    _, scan, model = run
    for value in (0, -4):
        broken = _rewrite_model(model, tmp_path / f"batch{value}.pinn.pt", lambda p, v=value: p["constants"].update(batch_size=v))
        with pytest.raises(ModelFileError, match="batch"):
            load_model(broken)  # the GUI's Load Model takes this path too
        result = subprocess.run(
            [*CLI, "infer", "--model", str(broken), "--data", str(scan), "--out", str(tmp_path / "o"), "--accelerator", "cpu"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 2 and "batch" in result.stderr and "Traceback" not in result.stderr
    # siblings: other constants that would poison inference, and a record built in code
    for name, value in (("intensity_scale", 0.0), ("input_normalization", float("nan")), ("mean_total_counts", -1.0)):
        broken = _rewrite_model(model, tmp_path / f"{name}.pinn.pt", lambda p, n=name, v=value: p["constants"].update({n: v}))
        with pytest.raises(ModelFileError, match=name):
            load_model(broken)
    from ptychodus_pinn.engine.model import TrainingRecord

    with pytest.raises(ValueError, match="batch_size"):
        TrainingRecord(intensity_scale=1.0, input_normalization=1.0, mean_total_counts=1.0, batch_size=0)


def test_case04_num_nodes_without_a_cluster_is_refused_at_once(run, tmp_path):
    _, scan, _ = run
    launcher_keys = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "WORLD_SIZE", "RANK", "LOCAL_RANK", "GROUP_RANK",
                     "KUBERNETES_PORT")  # fmt: skip
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SLURM_", "LSB_", "OMPI_", "PMI_", "TORCHELASTIC_")) and key not in launcher_keys
    }
    result = subprocess.run(
        [*CLI, "train", "--data", str(scan), "--out", str(tmp_path / "n.pinn.pt"), *FAST, "--num-nodes", "2"],
        capture_output=True, text=True, timeout=60, env=environment,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "--num-nodes=2 needs a multi-node launch" in result.stderr  # within the subprocess timeout: no training
    assert not (tmp_path / "n.pinn.pt.checkpoints").exists()


# --------------------------------------------------------------------------------------------- security


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_case05_crafted_checkpoint_is_refused_and_resume_still_works(run, tmp_path, monkeypatch, capsys):
    _, scan, _ = run
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # must not matter: the load is explicit
    checkpoints = tmp_path / "evil"
    checkpoints.mkdir()
    torch.save({"state_dict": {}, "epoch": 0, "loops": {}, "payload": _RunsCode()}, checkpoints / "last.ckpt")
    out = tmp_path / "r.pinn.pt"
    argv = ["train", "--data", str(scan), "--out", str(out), *FAST, "--checkpoint-dir", str(checkpoints), "--resume"]
    assert main(argv) == 2
    assert "refused to resume" in _one_line_error(capsys)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists() and not out.exists()
    # a legitimate resume still works, and counts epochs from the first run (case 25)
    good = tmp_path / "good"
    assert main(["train", "--data", str(scan), "--out", str(out), *FAST, "--checkpoint-dir", str(good)]) == 0
    capsys.readouterr()
    argv = ["train", "--data", str(scan), "--out", str(out), *FAST, "--checkpoint-dir", str(good), "--resume"]
    assert main([*argv[:-1], "--epochs", "3", "--resume"]) == 0
    assert "of 3," in capsys.readouterr().out
    assert load_model(out).record.epochs_trained == 3


# --------------------------------------------------------------------------- one line instead of a traceback


def test_case06_raw_npy_is_a_clear_scan_error(tmp_path):
    for name in ("raw.npy", "raw.npz", "raw.npz.bz2"):
        path = tmp_path / name
        content = io.BytesIO()
        np.save(content, np.ones((4, 32, 32), np.float32))
        path.write_bytes(bz2.compress(content.getvalue()) if name.endswith(".bz2") else content.getvalue())
        with pytest.raises(ScanError, match="single array"):
            load_scan(path)


def test_case07_incomplete_cxi_names_the_missing_dataset(tmp_path):
    only_entry = tmp_path / "entry.cxi"
    with h5py.File(only_entry, "w") as handle:
        handle.create_group("entry_1")
    with pytest.raises(ScanError, match="instrument_1/detector_1/data"):
        load_scan(only_entry)
    no_translation = tmp_path / "data only.h5"
    with h5py.File(no_translation, "w") as handle:
        handle.create_dataset("entry_1/instrument_1/detector_1/data", data=np.ones((4, 32, 32), np.float32))
    with pytest.raises(ScanError, match="sample_1/geometry_1/translation"):
        load_scan(no_translation)
    # sibling: an HDF5 scan named .npz is read as HDF5 (found by content, not by name)
    named_npz = tmp_path / "cxi named.npz"
    shutil.copy(no_translation, named_npz)
    with pytest.raises(ScanError, match="translation"):
        load_scan(named_npz)


def test_case08_declared_sizes_are_checked_against_memory_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "available_memory_bytes", lambda: 8 << 30)
    huge = tmp_path / "huge.h5"
    with h5py.File(huge, "w") as handle:
        handle.create_dataset("entry_1/instrument_1/detector_1/data", shape=(1000, 4096, 4096), dtype="f4", chunks=(1, 64, 64))
        handle.create_dataset("entry_1/sample_1/geometry_1/translation", data=np.zeros((1000, 3)))
    assert huge.stat().st_size < 1 << 20
    with pytest.raises(ScanError, match=r"declares .*GiB.*only 8.0 GiB"):
        load_scan(huge)
    # --max-patterns reads only the patterns it keeps (checked against memory as such)
    with pytest.raises(ScanError, match="probe"):  # 2 patterns fit; the file holds no probe
        load_scan(huge, ReadOptions(max_patterns=2))
    # sibling: an .npz whose member header declares a huge array (np.load would allocate it first)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1000, 4096, 4096)})
    npz = tmp_path / "huge.npz"
    with zipfile.ZipFile(npz, "w") as archive:
        archive.writestr("diff3d.npy", header.getvalue() + b"\0" * 64)
    with pytest.raises(ScanError, match="declares"):
        load_scan(npz)
    # sibling: a small .bz2 that decompresses beyond the memory
    monkeypatch.setattr(data_module, "available_memory_bytes", lambda: 3 << 20)
    bomb = tmp_path / "bomb.npz.bz2"
    bomb.write_bytes(bz2.compress(b"PK" + b"\0" * (16 << 20)))
    with pytest.raises(ScanError, match="decompresses to more than"):
        load_scan(bomb)


def test_case09_margin_and_object_grid_are_bounded(run, tmp_path, capsys, monkeypatch):
    _, scan, _ = run
    assert main(["train", "--data", str(scan), "--out", str(tmp_path / "m.pinn.pt"), *FAST, "--margin", "200000"]) == 2
    error = _one_line_error(capsys)
    assert "--margin=200000" in error and "0..4096" in error
    # sibling: positions in the wrong units (metres read as pixels → a huge grid) are refused before allocating
    monkeypatch.setattr(data_module, "available_memory_bytes", lambda: 8 << 30)
    tike = tmp_path / "far.npz"
    positions = np.stack([np.zeros(4), np.arange(4) * 1e6], axis=1)[None]
    np.savez(tike, data=np.ones((1, 4, 32, 32), np.float32), scan=positions, probe=np.ones((1, 1, 1, 1, 32, 32), np.complex64))
    with pytest.raises(ScanError, match="object grid would be"):
        load_scan(tike)


def test_case10_device_indices_on_the_cpu_are_one_line(run, tmp_path, capsys, monkeypatch):
    from ptychodus_pinn.engine.training import AcceleratorUnavailableError, lightning_devices

    _, scan, _ = run
    assert main(["train", "--data", str(scan), "--out", str(tmp_path / "m.pinn.pt"), *FAST, "--devices", "1,"]) == 2
    assert "--devices='1,'" in _one_line_error(capsys)
    assert lightning_devices(ExecutionConfig(accelerator="cpu", devices=2)) == 2
    with pytest.raises(ValueError, match="only GPUs"):
        lightning_devices(ExecutionConfig(accelerator="cpu", devices="0,2"))
    # on a GPU machine: indices become Lightning's list, and an index that does not exist is one line
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert lightning_devices(ExecutionConfig(devices="1,"), "cuda") == [1]
    assert lightning_devices(ExecutionConfig(devices="0,1"), "cuda") == [0, 1]
    with pytest.raises(AcceleratorUnavailableError, match="torch sees 2"):
        lightning_devices(ExecutionConfig(devices="2,"), "cuda")
    with pytest.raises(AcceleratorUnavailableError, match="torch sees 2"):
        lightning_devices(ExecutionConfig(devices=3), "cuda")


def test_case11_missing_logger_package_is_refused_up_front(run, tmp_path, capsys, monkeypatch):
    import importlib.util

    from ptychodus_pinn.engine import training

    _, scan, _ = run
    real = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name.startswith(("tensorboard", "mlflow")) else real(name, *args)

    monkeypatch.setattr(training.importlib.util, "find_spec", find_spec)
    for logger in ("tensorboard", "mlflow"):
        out = tmp_path / f"{logger}.pinn.pt"
        assert main(["train", "--data", str(scan), "--out", str(out), *FAST, "--logger", logger]) == 2
        assert f"pip install {logger}" in _one_line_error(capsys)
        assert not Path(str(out) + ".checkpoints").exists()


def test_case12_damaged_foreign_or_other_model_checkpoints_are_one_line(run, tmp_path, capsys):
    folder, scan, model = run
    good = (folder / "m.pinn.pt.checkpoints" / "last.ckpt").read_bytes()
    cases = {
        "truncated": (good[: len(good) // 3], [], "damaged"),
        "zeroed": (bytes(len(good)), [], "damaged"),
        "foreign": (model.read_bytes(), [], "not a Lightning checkpoint"),
        "text": (b"hello", [], "damaged"),
        "other N": (good, ["--n-filters-scale", "2"], "another model"),
        "finished": (good, ["--epochs", "1"], "already trained 1 epoch"),
    }
    for name, (content, extra, fragment) in cases.items():
        checkpoints = tmp_path / name
        checkpoints.mkdir()
        (checkpoints / "last.ckpt").write_bytes(content)
        argv = ["train", "--data", str(scan), "--out", str(tmp_path / "r.pinn.pt"), *FAST, "--epochs", "3",
                "--checkpoint-dir", str(checkpoints), "--resume", *extra]  # fmt: skip
        assert main(argv) == 2, name
        assert fragment in _one_line_error(capsys), name


def test_case13_full_disk_is_named_in_one_line_and_the_old_file_kept(run, tmp_path, capsys, monkeypatch):
    _, scan, model = run
    out = tmp_path / "m.pinn.pt"
    shutil.copy(model, out)
    before = out.read_bytes()

    real_save = torch.save
    failing = {"checkpoints": False}

    def full_disk(payload, target, *args, **kwargs):
        if isinstance(target, (str, os.PathLike)) or failing["checkpoints"]:
            raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file data/3: "
                               "file write failed")  # fmt: skip
        return real_save(payload, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DiskFullError, match="disk is full"):
        save_model(load_model(model), out)
    assert main(["train", "--data", str(scan), "--out", str(out), *FAST]) == 2
    assert "disk is full" in _one_line_error(capsys)
    assert out.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # sibling: Lightning's own checkpoint writes during training
    failing["checkpoints"] = True
    assert main(["train", "--data", str(scan), "--out", str(out), *FAST]) == 2
    assert "disk is full" in _one_line_error(capsys)
    assert out.read_bytes() == before
    # siblings: numpy writes (scans, reconstructions) fail the same way
    monkeypatch.setattr(np, "savez", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    assert main(["simulate", "--out", str(tmp_path / "s.npz"), "--size", "32", "--n-positions", "16"]) == 2
    assert "disk is full" in _one_line_error(capsys)


def test_case14_output_locations_are_checked_before_training(run, tmp_path, capsys, monkeypatch):
    _, scan, _ = run
    read_only = tmp_path / "readonly"
    read_only.mkdir()
    read_only.chmod(0o500)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == read_only else real_access(p, mode, **k))
    checkpoints = tmp_path / "elsewhere"
    try:
        argv = ["train", "--data", str(scan), "--out", str(read_only / "m.pinn.pt"), *FAST, "--checkpoint-dir", str(checkpoints)]
        assert main(argv) == 2
        assert "read-only" in _one_line_error(capsys)
        assert not checkpoints.exists()  # refused before training started
        infer = ["infer", "--model", str(run[2]), "--data", str(scan), "--out", str(read_only / "o"), "--accelerator", "cpu"]
        assert main(infer) == 2 and "read-only" in _one_line_error(capsys)
    finally:
        read_only.chmod(0o700)
    existing = tmp_path / "existing folder"
    existing.mkdir()
    assert main(["train", "--data", str(scan), "--out", str(existing), *FAST]) == 2
    assert "existing folder" in _one_line_error(capsys)
    assert not (tmp_path / "existing folder.checkpoints").exists()
    # siblings: --checkpoint-dir that is a file, and pretrain's --out
    assert main(["train", "--data", str(scan), "--out", str(tmp_path / "m.pinn.pt"), *FAST, "--checkpoint-dir", str(scan)]) == 2
    assert "not a folder" in _one_line_error(capsys)
    assert main(["pretrain", "--out", str(existing), "--accelerator", "cpu"]) == 2
    assert "existing folder" in _one_line_error(capsys)


def test_case15_ctrl_c_during_train_prints_interrupted_and_exits_130(run, tmp_path, capsys, monkeypatch):
    from ptychodus_pinn.engine.training import PinnLightningModule

    _, scan, _ = run

    def interrupted(self, batch, batch_index):
        raise KeyboardInterrupt

    handler = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(PinnLightningModule, "training_step", interrupted)
    assert main(["train", "--data", str(scan), "--out", str(tmp_path / "m.pinn.pt"), *FAST]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is handler  # Lightning's "ignore Ctrl-C" does not outlive the run
    assert not (tmp_path / "m.pinn.pt").exists()


# ------------------------------------------------------------------------------ unclear or silently wrong


def test_case16_every_detector_pixel_bad_is_a_scan_error(run, tmp_path):
    _, scan_path, _ = run
    scan = load_scan(scan_path)
    with pytest.raises(ScanError, match="every detector pixel is marked bad"):
        Scan(scan.patterns, scan.positions_yx_px, scan.probe, scan.object_shape, bad_pixels=np.ones((32, 32), bool))
    # sibling: photons only where pixels are bad
    mask = np.zeros((32, 32), bool)
    mask[12:20, 12:20] = True
    patterns = scan.patterns.copy()
    patterns[:, ~mask] = 0
    with pytest.raises(ScanError, match=r"good .* pixels hold no photons"):
        Scan(patterns, scan.positions_yx_px, scan.probe, scan.object_shape, bad_pixels=mask)


def test_case17_nan_model_is_refused_and_nan_is_never_written(run, tmp_path, capsys):
    _, scan, model = run

    def poison(payload):
        name = next(key for key in payload["state_dict"] if key.startswith("generator") and key.endswith("weight"))
        payload["state_dict"][name][...] = float("nan")

    broken = _rewrite_model(model, tmp_path / "nan.pinn.pt", poison)
    with pytest.raises(ModelFileError, match="NaN"):
        load_model(broken)
    out = tmp_path / "o"
    assert main(["infer", "--model", str(broken), "--data", str(scan), "--out", str(out), "--accelerator", "cpu"]) == 2
    assert "NaN" in _one_line_error(capsys) and not (out / "object.npz").exists()
    # siblings: a NaN model is never saved; a NaN reconstruction is never written
    loaded = load_model(model)
    with torch.no_grad():
        next(loaded.generator.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        save_model(loaded, tmp_path / "n.pinn.pt")

    class Reconstruction:
        object = np.full((8, 8), np.nan, np.complex64)
        illuminated = np.ones((8, 8), bool)

    with pytest.raises(ValueError, match="NaN"):
        save_reconstruction(Reconstruction(), tmp_path / "object.npz")
    assert not (tmp_path / "object.npz").exists() and not (tmp_path / "n.pinn.pt").exists()


def test_case18_max_patterns_below_one_is_refused(run, tmp_path, capsys):
    _, scan, _ = run
    for value in ("-1", "0"):
        assert main(["train", "--data", str(scan), "--out", str(tmp_path / "m.pinn.pt"), *FAST, "--max-patterns", value]) == 2
        assert f"--max-patterns={value}" in _one_line_error(capsys)


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--crop", "0"], ["--crop=0", "32, 64, 128, 256"]),
        (["--crop", "-32"], ["--crop=-32", "32, 64, 128, 256"]),
        (["--margin", "-500"], ["--margin=-500", "0..4096"]),
        (["--batch-size", "1e29"], ["--batch-size=", "1..1000000"]),
        (["--batch-size", str(10**29)], ["--batch-size=", "1..1000000"]),
        (["--epochs", "1e12"], ["--epochs=", "1..1000000"]),
        (["--seed", str(2**40)], ["--seed=", "0..4294967295"]),
        (["--num-workers", "100000"], ["--num-workers=", "0..1024"]),
    ],
)
def test_case19_flag_errors_name_the_flag_and_its_range(run, tmp_path, capsys, argv, fragments):
    _, scan, _ = run
    assert main(["train", "--data", str(scan), "--out", str(tmp_path / "m.pinn.pt"), *FAST, *argv]) == 2
    error = _one_line_error(capsys)
    assert all(fragment in error for fragment in fragments), error


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--photons", "1e30"], ["--photons=1e+30", "(0, 1e12]"]),
        (["--photons", "0"], ["--photons=0", "(0, 1e12]"]),
        (["--seed", "-1"], ["--seed=-1", "0..4294967295"]),
        (["--n-positions", "0"], ["--n-positions=0", "1..100000"]),
        (["--overlap", "1.5"], ["--overlap=1.5", "[0, 1)"]),
        (["--size", "33"], ["--size=33", "32, 64, 128, 256"]),
    ],
)
def test_case19_simulate_errors_name_the_flag_and_its_range(tmp_path, capsys, argv, fragments):
    assert main(["simulate", "--out", str(tmp_path / "s.npz"), "--size", "32", "--n-positions", "16", *argv]) == 2
    error = _one_line_error(capsys)
    assert all(fragment in error for fragment in fragments), error
    assert not (tmp_path / "s.npz").exists()


def test_case20_a_bad_pattern_names_its_file(run, tmp_path, capsys):
    _, scan, _ = run

    def add_nan(scan_object):
        scan_object.patterns[3, 5, 5] = np.nan

    good = shutil.copy(scan, tmp_path / "good.npz")
    bad = tmp_path / "bad one.npz"
    payload = dict(np.load(scan))
    payload["diff3d"] = payload["diff3d"].copy()
    payload["diff3d"][3, 5, 5] = np.nan
    np.savez(bad, **payload)
    assert main(["train", "--data", str(good), str(bad), "--out", str(tmp_path / "m.pinn.pt"), *FAST]) == 2
    error = _one_line_error(capsys)
    assert "bad one.npz" in error and "NaN" in error


def test_case21_model_file_fields_are_not_reported_as_flags(run, tmp_path, capsys):
    _, scan, model = run
    broken = _rewrite_model(model, tmp_path / "n33.pinn.pt", lambda p: p["model_config"].update(N=33))
    assert main(["infer", "--model", str(broken), "--data", str(scan), "--out", str(tmp_path / "o"), "--accelerator", "cpu"]) == 2
    error = _one_line_error(capsys)
    assert "N=33" in error and "--N" not in error and "model file" in error


def test_case22_text_file_named_npz_is_not_called_pickled(tmp_path):
    for name, content in (("text.npz", b"hello, this is text\n"), ("empty.npz", b""), ("text.h5", b"hello")):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ScanError) as caught:
            load_scan(path)
        assert "pickle" not in str(caught.value) and "cannot read" in str(caught.value)


def test_case23_stale_metrics_are_removed_when_the_new_scan_has_no_truth(run, tmp_path):
    _, scan, model = run
    out = tmp_path / "out"
    assert main(["infer", "--model", str(model), "--data", str(scan), "--out", str(out), "--accelerator", "cpu"]) == 0
    assert json.loads((out / "metrics.json").read_text())["phase_ssim"] is not None
    plain = _scan_without_truth(scan, tmp_path / "no truth.npz")
    assert main(["infer", "--model", str(model), "--data", str(plain), "--out", str(out), "--accelerator", "cpu"]) == 0
    assert (out / "object.npz").exists() and not (out / "metrics.json").exists()


def test_case23_sibling_a_new_training_never_resumes_an_older_runs_checkpoints(run, tmp_path):
    from ptychodus_pinn.engine.training import remove_stale_checkpoints

    for name in ("last.ckpt", "best-007.ckpt", "best-001-v1.ckpt", "notes.txt"):
        (tmp_path / name).write_text("old")
    remove_stale_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_case24_settings_file_empty_bool_and_negative_device_index_are_refused():
    pytest.importorskip("ptychodus")
    from ptychodus_pinn.plugin.settings import FIELDS_BY_KEY, parse_setting, settings_to_run_config

    with pytest.raises(ValueError, match="empty"):
        parse_setting(FIELDS_BY_KEY["object_big"], "")
    assert parse_setting(FIELDS_BY_KEY["object_big"], "false") is False
    for text in ("cuda:-1", "cpu:1", "gpu:-3"):
        with pytest.raises(ValueError, match="index"):
            parse_setting(FIELDS_BY_KEY["accelerator"], text)
    assert parse_setting(FIELDS_BY_KEY["accelerator"], "cuda:1 (NVIDIA H200)") == "cuda:1 (NVIDIA H200)"
    for text in ("0", "-1", ""):
        with pytest.raises(ValueError):
            parse_setting(FIELDS_BY_KEY["devices"], text)
    with pytest.raises(ValueError):
        parse_setting(FIELDS_BY_KEY["strategy"], "")
    # numbers beyond the engine's limits are clamped when read, not refused when a run starts
    assert FIELDS_BY_KEY["epochs"].maximum == 1_000_000 and FIELDS_BY_KEY["seed"].maximum == 2**32 - 1
    values = {key: field.default for key, field in FIELDS_BY_KEY.items()}
    values["accelerator"] = "cuda:-1"
    with pytest.raises(ValueError, match="index"):
        settings_to_run_config(values, N=32)


def test_case24_settings_file_reader_keeps_the_value_on_an_empty_bool():
    pytest.importorskip("ptychodus")
    from ptychodus.api.settings import SettingsRegistry

    from ptychodus_pinn.plugin.settings import PluginSettings

    settings = PluginSettings(SettingsRegistry())
    parameter = settings["object_big"]
    assert parameter.get_value() is True
    parameter.set_value_from_string("")
    assert parameter.get_value() is True
    parameter.set_value_from_string("cuda:-1")  # a bool reading nonsense: refused too
    assert parameter.get_value() is True
    settings["accelerator"].set_value_from_string("cuda:-1")
    assert settings["accelerator"].get_value() == "auto"


def test_case25_stale_temporaries_are_removed_and_links_kept(run, tmp_path):
    _, _, model = run
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "m.pinn.pt"
    stale = tmp_path / f".m.pinn.pt.pinn-{dead.pid}-abcd1234.tmp"
    stale.write_bytes(b"partial")
    legacy = tmp_path / ".m.pinn.pt.k3j2h1g0.tmp"
    legacy.write_bytes(b"partial")
    os.utime(legacy, (time.time() - 7200, time.time() - 7200))
    alive = tmp_path / f".m.pinn.pt.pinn-{os.getppid()}-abcd1234.tmp"  # a live writer's file is left alone
    alive.write_bytes(b"in progress")
    save_model(load_model(model), target)
    assert not stale.exists() and not legacy.exists() and alive.exists()
    # --out through a symbolic link: the link stays, its target gets the new content
    real = tmp_path / "real.pinn.pt"
    real.write_bytes(b"old")
    link = tmp_path / "link.pinn.pt"
    link.symlink_to(real)
    save_model(load_model(model), link)
    assert link.is_symlink() and load_model(real).config.N == 32


def test_case25_temporary_files_get_ordinary_permissions_while_written(tmp_path):
    seen = []

    def write(temporary):
        seen.append(temporary.stat().st_mode & 0o777)
        temporary.write_text("x")

    umask = os.umask(0o022)
    try:
        data_module.atomic_write(tmp_path / "f.txt", write)
    finally:
        os.umask(umask)
    assert seen == [0o644]


def test_sibling_plugin_training_refuses_to_write_its_model_over_a_training_file(tmp_path):
    pytest.importorskip("ptychodus")
    from ptychodus_pinn.plugin.library import check_model_output, model_path_for

    scan = tmp_path / "train.npz.pinn.pt"
    scan.write_bytes(b"x")
    with pytest.raises(OutputPathError, match="destroy the input"):
        check_model_output(model_path_for(tmp_path / "train.npz"), tmp_path)
    check_model_output(model_path_for(tmp_path / "new folder"), tmp_path)  # a new folder is fine


def test_sibling_read_options_and_model_config_limits():
    with pytest.raises(ValueError, match="margin_px"):
        ReadOptions(margin_px=-1)
    with pytest.raises(ValueError, match="crop_px"):
        ReadOptions(crop_px=48)
    with pytest.raises(ValueError, match="neighbor_count"):
        ModelConfig(neighbor_count=10**9)
    with pytest.raises(ValueError, match="seed"):
        ExecutionConfig(seed=2**32)


def test_sibling_pickled_model_never_unpickled_by_resume_helper(tmp_path, monkeypatch):
    from ptychodus_pinn.engine.training import CheckpointError, load_resume_checkpoint

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "plain.ckpt"
    path.write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(CheckpointError):
        load_resume_checkpoint(path)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()
