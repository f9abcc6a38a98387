"""One device mapping: the GPU chosen for training is the GPU inference, previews and refinement use."""

from __future__ import annotations

import pytest
import torch

from ptychodus_pinn.engine import inference
from ptychodus_pinn.engine.config import ExecutionConfig, ModelConfig, RefinementConfig, TrainingConfig
from ptychodus_pinn.engine.device import (
    AcceleratorUnavailableError,
    DeviceSpec,
    VisibleDevices,
    device_spec,
    torch_device,
    visible_devices,
)


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine where torch sees two CUDA GPUs (nothing is put on them: the work itself is faked)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_gpu_1_trains_infers_and_refines_on_gpu_1(two_gpus, small_scan, tmp_path, monkeypatch):
    from ptychodus_pinn.engine.training import new_model, trainer_arguments

    execution = ExecutionConfig(accelerator="cuda", devices="1,", logger="none")
    arguments = trainer_arguments(execution, TrainingConfig(epochs=1), "train_loss", tmp_path, [])
    assert arguments["accelerator"] == "cuda" and arguments["devices"] == [1]

    used: list[torch.device] = []
    views_used: list[tuple[int, ...]] = []

    def fake_predict(model, scan, batch_size, device, views=(0,)):
        used.append(torch.device(device))
        views_used.append(views)
        return torch.ones((scan.count, scan.size_px, scan.size_px), dtype=torch.complex64)

    def fake_refine(scan, start, config, *, device="cpu", **_):
        used.append(torch.device(device))
        raise RuntimeError("stop here: the device was recorded")

    monkeypatch.setattr(inference, "predict_patches", fake_predict)
    monkeypatch.setattr(inference, "refine", fake_refine)
    model = new_model([small_scan], ModelConfig(N=32, n_filters_scale=1), 16)
    inference.reconstruct_network(model, small_scan, execution=execution)  # also the plugin's mid-training preview
    with pytest.raises(RuntimeError, match="stop here"):
        inference.refine_reconstruction(small_scan, None, RefinementConfig(epochs=1), execution=execution)
    assert used == [torch.device("cuda:1"), torch.device("cuda:1")]
    assert views_used == [(0, 6, 2, 4, 1, 7, 3, 5)]  # on a GPU the network sees every symmetry view the probe has


# ------------------------------------------------------------------------------- the mapping itself

TWO_GPUS = VisibleDevices(cuda_available=True, cuda_count=2)
CPU_ONLY = VisibleDevices()
APPLE = VisibleDevices(mps_available=True)


def spec(visible: VisibleDevices, **execution) -> DeviceSpec:
    return device_spec(ExecutionConfig(**execution), visible)


def test_gpu_1_by_index_is_gpu_1_for_lightning_and_torch():
    for accelerator in ("cuda", "gpu", "auto"):
        chosen = spec(TWO_GPUS, accelerator=accelerator, devices="1,")
        assert chosen == DeviceSpec("cuda", (1,))
        assert chosen.lightning_accelerator == "cuda" and chosen.lightning_devices == [1]
        assert chosen.torch_device == torch.device("cuda:1") and not chosen.distributed


def test_several_gpus_are_ddp_and_rank_0_device_is_the_first_chosen():
    assert spec(TWO_GPUS, accelerator="cuda", devices="1,0").lightning_devices == [1, 0]
    assert spec(TWO_GPUS, accelerator="cuda", devices="1,0").torch_device == torch.device("cuda:1")
    both = spec(TWO_GPUS, accelerator="cuda", devices=2)
    assert both.lightning_devices == [0, 1] and both.distributed and both.torch_device == torch.device("cuda:0")
    every = spec(TWO_GPUS)  # auto accelerator, auto devices: every GPU, as Lightning's auto
    assert every == DeviceSpec("cuda", (0, 1)) and every.torch_device == torch.device("cuda:0")


def test_cpu_and_auto_without_gpu():
    for execution in ({}, {"accelerator": "cpu"}, {"accelerator": "auto", "devices": 1}):
        chosen = spec(CPU_ONLY, **execution)
        assert chosen == DeviceSpec("cpu", (0,)) and chosen.lightning_devices == 1
        assert chosen.torch_device == torch.device("cpu")
    processes = spec(TWO_GPUS, accelerator="cpu", devices=2)  # cpu asked for: never a GPU, even when present
    assert processes.lightning_accelerator == "cpu" and processes.lightning_devices == 2 and processes.distributed
    assert processes.torch_device == torch.device("cpu")


def test_mps():
    for execution in ({}, {"accelerator": "mps"}, {"accelerator": "mps", "devices": "0,"}):
        chosen = spec(APPLE, **execution)
        assert chosen == DeviceSpec("mps", (0,)) and chosen.lightning_devices == 1
        assert chosen.torch_device == torch.device("mps")
    with pytest.raises(AcceleratorUnavailableError, match=r"asks for mps device 1 but torch sees 1 \(indices 0\.\.0\)"):
        spec(APPLE, accelerator="mps", devices="1,")
    with pytest.raises(AcceleratorUnavailableError, match="accelerator=mps was requested but torch sees no Apple GPU"):
        spec(CPU_ONLY, accelerator="mps")


@pytest.mark.parametrize(
    ("visible", "execution", "error", "message"),
    [
        (TWO_GPUS, {"accelerator": "cuda", "devices": "2,"}, AcceleratorUnavailableError,
         r"devices='2,' asks for cuda device 2 but torch sees 2 \(indices 0\.\.1\); choose an index that exists"),
        (TWO_GPUS, {"accelerator": "cuda", "devices": "0,5"}, AcceleratorUnavailableError, "asks for cuda device 5"),
        (TWO_GPUS, {"accelerator": "cuda", "devices": 3}, AcceleratorUnavailableError,
         "devices=3 asks for 3 cuda device.s. but torch sees 2; lower devices"),
        (TWO_GPUS, {"accelerator": "cuda", "devices": "1,1"}, ValueError, "names a device twice"),
        (CPU_ONLY, {"accelerator": "cuda"}, AcceleratorUnavailableError,
         "accelerator=cuda was requested but torch sees no CUDA GPU"),
        (CPU_ONLY, {"accelerator": "gpu", "devices": "1,"}, AcceleratorUnavailableError,
         "accelerator=gpu was requested but torch sees no CUDA GPU"),
        (CPU_ONLY, {"devices": "1,"}, ValueError, r"ExecutionConfig.devices='1,' lists device indices, which only GPUs have"),
        (TWO_GPUS, {"accelerator": "cpu", "devices": "0,1"}, ValueError, "only GPUs"),
    ],
)  # fmt: skip
def test_impossible_requests_are_one_clear_line(visible, execution, error, message):
    with pytest.raises(error, match=message) as raised:
        spec(visible, **execution)
    assert "\n" not in str(raised.value)


def test_device_spec_is_validated_data():
    with pytest.raises(ValueError, match=r"DeviceSpec\.kind='tpu'"):
        DeviceSpec("tpu", (0,))  # type: ignore[arg-type]
    for indices in ((), (0, 0), (-1,)):
        with pytest.raises(ValueError, match=r"DeviceSpec\.indices"):
            DeviceSpec("cuda", indices)
    with pytest.raises(AttributeError):
        DeviceSpec("cpu").kind = "cuda"  # type: ignore[misc]


def test_visible_devices_is_read_from_torch(two_gpus):
    assert visible_devices().cuda_available and visible_devices().cuda_count == 2
    assert device_spec(ExecutionConfig(accelerator="cuda", devices="1,")).torch_device == torch.device("cuda:1")


def test_torch_device_of_every_kind_of_target(two_gpus):
    execution = ExecutionConfig(accelerator="cuda", devices="1,")
    assert torch_device(execution) == torch_device(DeviceSpec("cuda", (1,))) == torch.device("cuda:1")
    assert torch_device(torch.device("cuda:1")) == torch_device("cuda:1") == torch.device("cuda:1")
    assert torch_device("cpu") == torch.device("cpu")
    assert torch_device("auto") == torch.device("cuda:0")  # an accelerator alone: its first device


def test_preflight_and_trainer_use_the_mapping(two_gpus, tmp_path):
    from ptychodus_pinn.engine.training import preflight, trainer_arguments

    preflight(ExecutionConfig(accelerator="cuda", devices="1,", logger="none"))
    with pytest.raises(AcceleratorUnavailableError, match="torch sees 2"):
        preflight(ExecutionConfig(accelerator="cuda", devices="2,", logger="none"))
    arguments = trainer_arguments(
        ExecutionConfig(devices="0,1", logger="none"), TrainingConfig(epochs=1), "train_loss", tmp_path, []
    )
    assert arguments["accelerator"] == "cuda" and arguments["devices"] == [0, 1]


def test_refinement_runs_on_the_execution_device(two_gpus, small_scan, monkeypatch):
    from ptychodus_pinn.engine import refinement

    used: list[torch.device] = []

    class RecordedError(Exception):
        pass

    def fake_problem(scan, initial_object, device):
        used.append(device)
        raise RecordedError

    monkeypatch.setattr(refinement, "RefinementProblem", fake_problem)
    for target in (ExecutionConfig(accelerator="cuda", devices="1,"), DeviceSpec("cuda", (1,)), "cuda:1"):
        with pytest.raises(RecordedError):
            refinement.refine(small_scan, None, RefinementConfig(epochs=1), device=target)
    assert used == [torch.device("cuda:1")] * 3


def test_refinement_and_reconstruct_run_on_the_cpu_from_an_execution(small_scan):
    from ptychodus_pinn.engine.refinement import refine

    result = refine(small_scan, None, RefinementConfig(epochs=1), device=ExecutionConfig(accelerator="cpu"))
    assert result.object.shape == small_scan.object_shape
    with pytest.raises(ValueError, match="only GPUs"):  # checked before any work, also without a model
        inference.reconstruct(None, small_scan, execution=ExecutionConfig(accelerator="cpu", devices="0,"))


def test_inference_imports_neither_training_nor_lightning():
    import subprocess
    import sys

    code = (
        "import sys, ptychodus_pinn.engine.inference\n"
        "bad = [m for m in sys.modules if m == 'ptychodus_pinn.engine.training' or m.split('.')[0] == 'lightning']\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
