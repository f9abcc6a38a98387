"""Model files are safe, strict, atomic and self-describing."""

from __future__ import annotations

import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from ptychodus_pinn.engine import persistence
from ptychodus_pinn.engine.config import ModelConfig, TrainingMode
from ptychodus_pinn.engine.persistence import ModelFileError, load_model, save_model


def test_round_trip_rebuilds_the_same_model(tmp_path, trained_small):
    model = trained_small.model
    path = save_model(model, tmp_path / "model ü.pinn.pt")
    loaded = load_model(path)
    assert loaded.config == model.config
    assert loaded.record.intensity_scale == pytest.approx(model.record.intensity_scale)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    probe_input = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(loaded.eval().predict_patches(probe_input), model.eval().predict_patches(probe_input))


def test_file_is_self_describing(tmp_path, trained_small):
    path = save_model(trained_small.model, tmp_path / "m.pinn.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "ptychodus-pinn-model" and payload["format_version"] == persistence.FORMAT_VERSION
    assert payload["model_config"]["N"] == 32
    assert {"torch", "ptychodus_pinn"} <= set(payload["versions"])
    assert payload["constants"]["epochs_trained"] == 2


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_MODEL_FILE",))


def test_file_crafted_to_run_code_is_refused_and_does_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pinn.pt"
    torch.save({"format": "ptychodus-pinn-model", "payload": _RunsCode()}, path)
    with pytest.raises(ModelFileError, match="refused"):
        load_model(path)
    assert not (tmp_path / "PWNED_BY_MODEL_FILE").exists()


def test_plain_pickle_is_refused(tmp_path):
    path = tmp_path / "plain.pinn.pt"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ModelFileError, match="not a ptychodus-pinn model file"):
        load_model(path)


def test_truncated_file_is_a_clear_error(tmp_path, trained_small):
    path = save_model(trained_small.model, tmp_path / "m.pinn.pt")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pinn.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        load_model(truncated)


def test_model_for_another_n_or_gridsize_is_refused_whatever_it_was_trained_with(tmp_path, trained_small):
    path = save_model(trained_small.model, tmp_path / "m.pinn.pt")
    with pytest.raises(ModelFileError, match="N=32 but 64 is needed"):
        load_model(path, expect=ModelConfig(N=64))
    with pytest.raises(ModelFileError, match="gridsize=1 but 2 is needed"):
        load_model(path, expect=ModelConfig(N=32, gridsize=2))
    # the training mode is how the weights were learnt, not what they compute: any mode's model serves
    for mode in TrainingMode:
        assert load_model(path, expect=ModelConfig(N=32, mode=mode)).config.mode is trained_small.model.config.mode


def _rewrite(path, target, change):
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, target)
    return target


def test_newer_format_version_and_mismatched_weights_are_refused(tmp_path, trained_small):
    path = save_model(trained_small.model, tmp_path / "m.pinn.pt")
    newer = _rewrite(path, tmp_path / "newer.pinn.pt", lambda p: p.update(format_version=99))
    with pytest.raises(ModelFileError, match="newer than this"):
        load_model(newer)

    def drop_weight(payload):
        payload["state_dict"].pop(next(k for k in payload["state_dict"] if k.startswith("generator")))

    missing = _rewrite(path, tmp_path / "missing.pinn.pt", drop_weight)
    with pytest.raises(ModelFileError, match="weights do not match"):
        load_model(missing)
    wider = _rewrite(path, tmp_path / "wider.pinn.pt", lambda p: p["model_config"].update(n_filters_scale=2))
    with pytest.raises(ModelFileError, match="weights do not match"):
        load_model(wider)


def test_failed_save_keeps_the_previous_model(tmp_path, trained_small, monkeypatch):
    path = save_model(trained_small.model, tmp_path / "m.pinn.pt")
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_model(trained_small.model, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pinn.pt"]


def test_read_only_folder_is_refused_up_front(tmp_path, trained_small, monkeypatch):
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):
        # root writes anywhere: emulate a read-only mount for this folder
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(folder) else real_access(path, mode))
    try:
        with pytest.raises(PermissionError, match="read-only"):
            save_model(trained_small.model, folder / "m.pinn.pt")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def test_zip_without_model_is_refused(tmp_path):
    path = tmp_path / "other.pinn.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "hi")
    with pytest.raises(ModelFileError):
        load_model(path)
    assert np.isfinite(1.0)
