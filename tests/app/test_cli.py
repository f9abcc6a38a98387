"""The command line: file contracts, exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ptychodus_pinn.app.cli import main

FAST = ["--accelerator", "cpu", "--epochs", "1", "--logger", "none", "--no-progress-bar", "--n-filters-scale", "1"]


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli run")
    scan = folder / "scan ü.npz"
    assert main(["simulate", "--out", str(scan), "--size", "32", "--n-positions", "100", "--photons", "1e4", "--seed", "4"]) == 0
    model = folder / "model.pinn.pt"
    assert main(["train", "--data", str(scan), "--out", str(model), *FAST]) == 0
    return folder, scan, model


def test_train_writes_model_losses_and_checkpoints(cli_model):
    folder, _, model = cli_model
    assert model.exists()
    losses = (folder / "model.pinn.pt.losses.csv").read_text().splitlines()
    assert losses[0].startswith("epoch,train_loss") and len(losses) == 2
    assert (folder / "model.pinn.pt.checkpoints" / "last.ckpt").exists()


def test_infer_writes_object_on_the_input_grid_png_and_metrics(cli_model):
    folder, scan, model = cli_model
    out = folder / "out dir"
    assert main(["infer", "--model", str(model), "--data", str(scan), "--out", str(out), "--accelerator", "cpu"]) == 0
    with np.load(out / "object.npz") as archive:
        obj = archive["object"]
    with np.load(scan) as archive:
        assert obj.shape == archive["objectGuess"].shape
    assert obj.dtype == np.complex64
    assert (out / "object.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("phase_ssim", "amplitude_ssim", "phase_psnr_db", "amplitude_psnr_db", "frc50", "seconds_train", "seconds_infer",
                "patterns_per_second_infer", "flat_phase_ssim"):  # fmt: skip
        assert key in metrics
    assert main(["reconstruct", "--model", str(model), "--data", str(scan), "--out", str(out), "--accelerator", "cpu"]) == 0


def test_missing_files_exit_2_with_one_line(cli_model, capsys):
    folder, scan, _model = cli_model
    assert main(["infer", "--model", str(folder / "nope.pinn.pt"), "--data", str(scan), "--out", str(folder)]) == 2
    assert main(["train", "--data", str(folder / "missing.npz"), "--out", str(folder / "m.pinn.pt")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 2 and all("not found" in line for line in error)


def test_invalid_values_name_the_flag(cli_model, capsys):
    _, scan, _ = cli_model
    assert main(["train", "--data", str(scan), "--out", "x.pinn.pt", "--learning-rate", "-1", "--accelerator", "cpu"]) == 2
    error = capsys.readouterr().err.strip()
    assert "--learning-rate=-1.0" in error and "\n" not in error
    assert main(["train", "--data", str(scan), "--out", "x.pinn.pt", "--gridsize", "9", "--accelerator", "cpu"]) == 2
    assert "--gridsize=9" in capsys.readouterr().err


def test_directory_without_scans_is_refused(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m.pinn.pt"), *FAST]) == 2
    assert "holds no scan files" in capsys.readouterr().err


def test_model_for_another_n_is_refused_at_infer(cli_model, tmp_path, capsys):
    _, _, model = cli_model
    scan64 = tmp_path / "scan64.npz"
    main(["simulate", "--out", str(scan64), "--size", "64", "--n-positions", "16"])
    assert (
        main(["infer", "--model", str(model), "--data", str(scan64), "--out", str(tmp_path / "o"), "--accelerator", "cpu"]) == 2
    )
    assert "trained for N=32" in capsys.readouterr().err


def test_demo_quick_writes_metrics_for_both_scans_and_a_figure(tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--quick", "--accelerator", "cpu", "--no-progress-bar"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for scan in ("train_scan", "test_scan"):
        assert {"phase_ssim", "amplitude_ssim", "frc50", "seconds_train", "patterns_per_second_infer"} <= set(metrics[scan])
    assert (tmp_path / "demo.png").stat().st_size > 10_000


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_gives_the_same_model_format(cli_model, tmp_path):
    import torch

    _, scan, single = cli_model
    out = tmp_path / "ddp.pinn.pt"
    command = [sys.executable, "-m", "ptychodus_pinn.app.cli", "train", "--data", str(scan), "--out", str(out), *FAST,
               "--devices", "2", "--strategy", "ddp"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    one, two = torch.load(single, weights_only=True), torch.load(out, weights_only=True)
    assert one.keys() == two.keys() and one["model_config"] == two["model_config"]
    assert {k: v.shape for k, v in one["state_dict"].items()} == {k: v.shape for k, v in two["state_dict"].items()}


def test_infer_refines_by_default_and_metrics_hold_both_stages(cli_model, capsys):
    folder, scan, model = cli_model
    out = folder / "refined"
    arguments = ["infer", "--model", str(model), "--data", str(scan), "--out", str(out), "--accelerator", "cpu"]
    assert main([*arguments, "--refine-epochs", "8"]) == 0
    assert "network + refinement" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stages"] == ["network", "refinement"]
    assert metrics["refinement_epochs"] == 8 and metrics["refinement_start"] in ("network", "flat")
    assert metrics["refinement_half_resolution_epochs"] == 40  # the default, before the full-resolution ones
    # a 1-epoch network is a poor start; 8 epochs of refinement must beat what it gives alone
    assert metrics["phase_ssim"] > metrics["network_phase_ssim"]
    with np.load(out / "object.npz") as archive:
        assert list(archive["stages"]) == ["network", "refinement"]
        assert archive["network_object"].shape == archive["object"].shape
        assert archive["probe"].ndim == 3
    assert main([*arguments, "--refine-epochs", "3", "--refine-half-resolution-epochs", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["refinement_epochs"] == 3 and metrics["refinement_half_resolution_epochs"] == 0
    assert main([*arguments, "--refine-epochs", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stages"] == ["network"] and "network_phase_ssim" not in metrics
    assert main([*arguments, "--refine-half-resolution-epochs", "-1"]) == 2  # refused, naming the flag
    assert "--refine-half-resolution-epochs" in capsys.readouterr().err


def test_infer_shows_refinement_progress_unless_told_not_to(cli_model, capsys):
    folder, scan, model = cli_model
    arguments = ["infer", "--model", str(model), "--data", str(scan), "--out", str(folder / "progress"), "--accelerator", "cpu"]
    assert main([*arguments, "--refine-epochs", "10", "--refine-half-resolution-epochs", "10"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("refinement epoch")]
    # not a terminal (pytest captures stderr): a line every 10 % of the 20 epochs, the half-resolution ones named
    assert [line.split(",")[0] for line in lines] == [
        *(f"refinement epoch {epoch}/20 (half resolution)" for epoch in range(2, 11, 2)),
        *(f"refinement epoch {epoch}/20" for epoch in range(12, 21, 2)),
    ]
    assert main([*arguments, "--refine-epochs", "4", "--no-progress-bar"]) == 0
    assert "refinement epoch" not in capsys.readouterr().err


def test_refinement_progress_rewrites_one_line_on_a_terminal():
    import io

    from ptychodus_pinn.app.infer import RefinementProgress
    from ptychodus_pinn.engine.refinement import RefinementReport

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    show = RefinementProgress(terminal)
    for epoch in range(1, 3):  # refinement converged after 2 of its 5 epochs
        show(RefinementReport(epoch=epoch, epochs=5, nll=0.0, seconds=0.5 * epoch))
    show.end()
    show.end()  # one newline ends the line, however often end() is called
    expected = "".join(f"\rrefinement epoch {epoch}/5, {0.5 * epoch:.1f} s\033[K" for epoch in range(1, 3)) + "\n"
    assert terminal.getvalue() == expected  # every epoch, on one line, which end() ends


def test_infer_without_a_model_refines_from_flat_or_says_what_is_missing(cli_model, capsys):
    folder, scan, _model = cli_model
    out = folder / "no model"
    # no model ships for N = 32: refinement alone, from a flat object
    assert main(["infer", "--data", str(scan), "--out", str(out), "--accelerator", "cpu", "--refine-epochs", "5"]) == 0
    assert json.loads((out / "metrics.json").read_text())["stages"] == ["refinement"]
    assert main(["infer", "--data", str(scan), "--out", str(out), "--refine-epochs", "0"]) == 2
    assert "no model ships for N=32" in capsys.readouterr().err
    assert main(["infer", "--data", str(scan), "--out", str(out), "--refine-epochs", "-3"]) == 2
    assert "--refine-epochs=-3" in capsys.readouterr().err


# ---------------------------------------------------------------- flags generated from the config knobs

from ptychodus_pinn.app.cli import build_parser, config_error_message, config_values  # noqa: E402
from ptychodus_pinn.engine.config import (  # noqa: E402
    ConfigError,
    ExecutionConfig,
    Knob,
    ModelConfig,
    RefinementConfig,
    TrainingConfig,
    knobs,
)

# the configs each subcommand builds from its flags (demo and pretrain take only some training flags)
COMMAND_CONFIGS = {
    "train": (ModelConfig, TrainingConfig, ExecutionConfig),
    "infer": (RefinementConfig, ExecutionConfig),
    "reconstruct": (RefinementConfig, ExecutionConfig),
    "demo": (ExecutionConfig,),
    "pretrain": (ExecutionConfig,),
}
PARTIAL = {"demo": {TrainingConfig: ("epochs",)}, "pretrain": {TrainingConfig: ("epochs", "learning_rate")}}
REQUIRED = {"train": ["--data", "s.npz", "--out", "m.pinn.pt"], "infer": ["--data", "s.npz", "--out", "o"]}
REQUIRED["reconstruct"] = REQUIRED["infer"]
BASE = {ExecutionConfig: {"num_workers": 2}}  # worker options need workers


def _flag_cases():
    for command, classes in COMMAND_CONFIGS.items():
        for config_class in classes:
            for knob in knobs(config_class):
                if knob.cli_flag is not None:
                    yield command, config_class, knob
        for config_class, names in PARTIAL.get(command, {}).items():
            for knob in knobs(config_class):
                if knob.name in names:
                    yield command, config_class, knob


def _sample(knob: Knob) -> tuple[list[str], object]:
    """A valid value other than the default, as flags and as the config holds it."""
    if knob.value_type is bool:
        return ([knob.cli_flag] if not knob.default else [f"--no-{knob.cli_flag[2:]}"]), not knob.default
    if knob.enum is not None:
        value = next(member for member in knob.enum if member != knob.default)
        return [knob.cli_flag, value.value], value
    if knob.name == "devices":
        return [knob.cli_flag, "0,2"], "0,2"
    if knob.value_type is str:
        return [knob.cli_flag, "ddp_spawn"], "ddp_spawn"
    if knob.value_type is float:
        value = (knob.minimum + knob.maximum) / 2 if knob.maximum is not None else knob.minimum + 1.5
        return [knob.cli_flag, repr(value)], value
    value = int(knob.minimum) + 1 if knob.default != int(knob.minimum) + 1 else int(knob.minimum) + 2
    return [knob.cli_flag, str(value)], value


def _subcommand(command: str):
    parser = build_parser()
    return next(action for action in parser._actions if action.dest == "command").choices[command]  # type: ignore[index]


def test_every_config_flag_of_today_is_still_accepted():
    old = {
        "train": "--epochs --batch-size --validation-fraction --n-groups --learning-rate --scheduler --warmup-epochs "
        "--gradient-clip-val --accumulate-grad-batches --checkpoint-save-top-k --checkpoint-monitor --checkpoint-mode "
        "--early-stop-patience --logger --gridsize --neighbor-count --n-filters-scale --amp-activation --object-big "
        "--probe-big --loss --mode --intensity-scale-trainable --probe-trainable --preset",
        "infer": "--refine-epochs --refine-probe --refine-batch-size --refine-start --refine-noise-model",
        "demo": "--epochs",
        "pretrain": "--epochs --learning-rate --size",
    }
    execution = (
        "--accelerator --devices --strategy --num-nodes --precision --deterministic --num-workers --pin-memory "
        "--persistent-workers --prefetch-factor --inference-batch-size --middle-trim --pad-eval --seed --progress-bar"
    )
    for command, flags in old.items():
        have = set(_subcommand(command)._option_string_actions)
        missing = [flag for flag in (flags + " " + execution).split() if flag not in have]
        assert not missing, (command, missing)


@pytest.mark.parametrize(
    ("command", "config_class", "knob"),
    list(_flag_cases()),
    ids=[f"{command}{knob.cli_flag}" for command, _, knob in _flag_cases()],
)
def test_every_knob_flag_is_accepted_and_reaches_its_config(command, config_class, knob):
    flags, expected = _sample(knob)
    arguments = build_parser().parse_args([command, *REQUIRED.get(command, []), *flags])
    values = {**BASE.get(config_class, {}), **config_values(arguments, config_class)}
    assert values[knob.name] == expected
    assert getattr(config_class(**values), knob.name) == expected
    help_text = " ".join(_subcommand(command).format_help().split())
    assert " ".join(knob.help.split())[:40] in help_text and "Default:" in help_text


@pytest.mark.parametrize(
    ("command", "config_class", "knob"),
    [case for case in _flag_cases() if case[2].value_type in (int, float) and case[2].name != "devices"],
    ids=lambda value: getattr(value, "cli_flag", None) or str(getattr(value, "__name__", value)),
)
def test_a_bad_flag_value_names_the_flag(command, config_class, knob):
    bad = knob.minimum - 1 if knob.value_type is int else (knob.minimum if knob.exclusive_minimum else knob.minimum - 0.5)
    arguments = build_parser().parse_args([command, *REQUIRED.get(command, []), knob.cli_flag, str(bad)])
    with pytest.raises(ConfigError) as caught:
        config_class(**config_values(arguments, config_class))
    message = config_error_message(caught.value, arguments)
    assert message.startswith(f"{knob.cli_flag}={bad!r} is not allowed; it must be {knob.allowed}")


def test_a_model_file_value_never_becomes_a_flag(cli_model, tmp_path, capsys):
    import torch

    _, scan, model = cli_model
    arguments = build_parser().parse_args(["train", *REQUIRED["train"]])
    with pytest.raises(ConfigError) as caught:
        ModelConfig(N=33)
    message = config_error_message(caught.value, arguments)
    assert "N=33" in message and "--" not in message and "model file" in message
    payload = torch.load(model, weights_only=True)
    payload["model_config"]["N"] = 33
    broken = tmp_path / "n33.pinn.pt"
    torch.save(payload, broken)
    arguments = ["infer", "--model", str(broken), "--data", str(scan), "--out", str(tmp_path / "o"), "--accelerator", "cpu"]
    assert main(arguments) == 2
    error = capsys.readouterr().err.strip()
    assert "N=33" in error and "--N" not in error and "model file" in error and "\n" not in error


@pytest.mark.parametrize(
    "ptychodus_args",
    [["-b", "train", "-i", "wf", "-o", "wf"], ["--settings", "my.ini", "--log-level", "10"], ["-b", "reconstruct", "-i", "in"]],
)
def test_gui_passes_ptychodus_options_as_they_are(ptychodus_args, monkeypatch):
    """``ptychodus-pinn gui -b reconstruct -i IN -o OUT``: batch mode for editable installs (docs/gui.md)."""
    pytest.importorskip("ptychodus")
    pytest.importorskip("PyQt5")
    import os

    started = []
    monkeypatch.setattr(os, "execv", lambda path, command: started.append(command))
    for argv in (["gui", *ptychodus_args], ["-v", "gui", "--", *ptychodus_args]):
        started.clear()
        assert main(argv) == 0
        assert started[0][1:3] == ["-m", "ptychodus_pinn.qt"] and started[0][3:] == ptychodus_args


def test_infer_and_watch_weigh_a_given_model_against_the_shipped_one(tmp_path, caplog):
    """As in ptychodus: a model given by file competes with the shipped one for the scan's N by the scan's
    likelihood (start auto only; the shipped file itself, or no shipped model for N, costs nothing)."""
    import logging

    import torch

    from ptychodus_pinn.app.infer import shipped_alternative
    from ptychodus_pinn.engine.config import SHIPPED_MODEL_NAME, RefinementConfig, RefinementStart
    from ptychodus_pinn.engine.data import save_scan
    from ptychodus_pinn.engine.persistence import load_model, pretrained_path, save_model
    from ptychodus_pinn.engine.simulate import simulate_scan

    shipped_path = pretrained_path(64)
    assert shipped_path is not None
    weaker = load_model(shipped_path)
    with torch.no_grad():
        weaker.generator.phase_head.weight.mul_(0.3)  # a different model: its phases a third as deep
    given = save_model(weaker, tmp_path / "weaker.pinn.pt")
    auto = RefinementConfig()
    assert shipped_alternative(None, 64, auto, load_model) is None
    assert shipped_alternative(shipped_path, 64, auto, load_model) is None
    assert shipped_alternative(given, 32, auto, load_model) is None  # none ships for N = 32
    assert shipped_alternative(given, 64, RefinementConfig(start=RefinementStart.NETWORK), load_model) is None
    name, alternative = shipped_alternative(given, 64, auto, load_model)
    assert name == SHIPPED_MODEL_NAME and alternative.config.N == 64

    def broken(path):
        raise ValueError(f"{path}: the model file is damaged")

    with caplog.at_level(logging.WARNING, logger="ptychodus_pinn"):
        assert shipped_alternative(given, 64, auto, broken) is None  # the given model runs alone
    assert "the shipped pretrained model is unusable (ValueError" in caplog.text

    scan = tmp_path / "scan64.npz"
    save_scan(simulate_scan("siemens", photons=1e5, n_positions=144, N=64, seed=7), scan)
    common = ["--accelerator", "cpu", "--refine-epochs", "0"]
    with caplog.at_level(logging.INFO, logger="ptychodus_pinn"):
        assert main(["infer", "--model", str(given), "--data", str(scan), "--out", str(tmp_path / "o"), *common]) == 0
    assert f"Network: {SHIPPED_MODEL_NAME}'s object fits this scan better" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ptychodus_pinn"):
        assert main(["infer", "--data", str(scan), "--out", str(tmp_path / "p"), *common]) == 0  # the shipped model
    assert "object fits this scan" not in caplog.text
    folder = tmp_path / "incoming"
    folder.mkdir()
    scan.rename(folder / scan.name)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ptychodus_pinn"):
        assert main(["watch", str(folder), "--model", str(given), "--out", str(tmp_path / "w"), "--once", *common]) == 0
    assert f"Network: {SHIPPED_MODEL_NAME}'s object fits this scan better" in caplog.text
    assert (tmp_path / "w" / "scan64" / "object.npz").exists()


def test_infer_and_watch_take_the_shipped_model_of_the_devices_width(monkeypatch):
    """On a GPU infer and watch use the width-4 model where one ships (N = 64), on a CPU the width-1 one, also as the
    given model's competitor; ``--accelerator cpu`` on a GPU machine keeps width 1 (torch's devices faked here)."""
    from ptychodus_pinn.app.infer import device_width, model_path_for, shipped_alternative
    from ptychodus_pinn.engine import device
    from ptychodus_pinn.engine.config import ExecutionConfig, RefinementConfig
    from ptychodus_pinn.engine.persistence import pretrained_path

    refinement = RefinementConfig()
    assert device_width(64, ExecutionConfig(accelerator="cpu")) == 1
    monkeypatch.setattr(device, "visible_devices", lambda: device.VisibleDevices(cuda_available=True, cuda_count=1))
    assert [device_width(N, ExecutionConfig(accelerator="auto")) for N in (64, 128)] == [4, 1]
    assert device_width(64, ExecutionConfig(accelerator="cpu")) == 1
    assert model_path_for(64, None, refinement, 4) == pretrained_path(64, 4)
    assert model_path_for(128, None, refinement, 4) == pretrained_path(128)  # none of width 4 ships for N = 128
    given = pretrained_path(64)
    assert given is not None
    name, alternative = shipped_alternative(given, 64, refinement, lambda path: path, 4)
    assert alternative == pretrained_path(64, 4) and name == "the shipped pretrained model of width 4"
    assert shipped_alternative(pretrained_path(64, 4), 64, refinement, lambda path: path, 4) is None  # itself


def test_infer_says_how_many_symmetry_views_the_network_used(tmp_path, capsys):
    from ptychodus_pinn.engine.data import save_scan
    from ptychodus_pinn.engine.simulate import simulate_scan

    scan = tmp_path / "scan64.npz"
    save_scan(simulate_scan("siemens", photons=1e5, n_positions=64, N=64, seed=3), scan)
    common = ["--data", str(scan), "--accelerator", "cpu", "--refine-epochs", "0"]
    assert main(["infer", *common, "--out", str(tmp_path / "a"), "--symmetry-views", "4"]) == 0
    assert "network (pretrained-n64.pinn.pt, 4 symmetry views)" in capsys.readouterr().out
    assert main(["infer", *common, "--out", str(tmp_path / "b")]) == 0  # a CPU's default: one view, not mentioned
    assert "network (pretrained-n64.pinn.pt), " in capsys.readouterr().out
