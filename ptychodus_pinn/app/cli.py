"""``ptychodus-pinn``: simulate, train, infer (reconstruct), demo and gui, on shared argument builders."""

from __future__ import annotations

import argparse
import decimal
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ptychodus_pinn.app.outputs import save_reconstruction, write_json, write_losses_csv
from ptychodus_pinn.engine.config import (
    AmplitudeActivation,
    CheckpointMode,
    ExecutionConfig,
    LoggerKind,
    LossKind,
    NoiseModel,
    Precision,
    Preset,
    RefinementConfig,
    RefinementStart,
    RunConfig,
    Scheduler,
    TrainingMode,
    preset_configs,
    replace,
)

EXIT_USAGE = 2


class CliError(Exception):
    """A user error reported in one line with exit code 2."""


def _bool_flag(parser: argparse.ArgumentParser, name: str, help_text: str) -> None:
    parser.add_argument(f"--{name}", default=None, action=argparse.BooleanOptionalAction, help=help_text)


def _devices(value: str) -> int | str:
    """'auto', a count ('2') or Lightning device indices ('1,' or '0,2')."""
    return int(value) if value.isdigit() else value


def _integer(text: str) -> int:
    """An integer flag ('1e3' reads as 1000); its allowed range is checked by the configs, which name it."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = decimal.Decimal(text.strip())
    except decimal.InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not value.is_finite() or value != value.to_integral_value():
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
    if value.adjusted() > 40:
        raise argparse.ArgumentTypeError(f"{text!r} is far too large")
    return int(value)


def add_read_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reading scans")
    _bool_flag(group, "dc-at-corner", "patterns have zero frequency at pixel (0, 0) (auto for tike-style files)")  # type: ignore[arg-type]
    group.add_argument(
        "--margin", type=_integer, default=16, help="object-grid margin (px) for files whose positions are not on a grid"
    )
    group.add_argument("--crop", type=_integer, default=None, help="centre-crop patterns to this size (32, 64, 128, 256)")
    group.add_argument("--max-patterns", type=_integer, default=None, help="use only the first patterns of each file")


def add_execution_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("execution")
    group.add_argument("--accelerator", choices=["auto", "cpu", "gpu", "cuda", "mps"], default=None)
    group.add_argument("--devices", type=_devices, default=None, help="number of devices or 'auto'")
    group.add_argument("--strategy", default=None, help="Lightning strategy: auto, ddp, ddp_spawn, fsdp, ...")
    group.add_argument("--num-nodes", type=_integer, default=None)
    group.add_argument("--precision", choices=[p.value for p in Precision], default=None)
    _bool_flag(group, "deterministic", "deterministic kernels where torch has them")  # type: ignore[arg-type]
    group.add_argument("--num-workers", type=_integer, default=None)
    _bool_flag(group, "pin-memory", "pin host memory for faster GPU transfers")  # type: ignore[arg-type]
    _bool_flag(group, "persistent-workers", "keep DataLoader workers between epochs")  # type: ignore[arg-type]
    group.add_argument("--prefetch-factor", type=_integer, default=None)
    group.add_argument("--inference-batch-size", type=_integer, default=None)
    group.add_argument("--middle-trim", type=_integer, default=None, help="pixels cut from each patch edge before stitching")
    _bool_flag(group, "pad-eval", "stitch patches that hang over the object-grid edge")  # type: ignore[arg-type]
    group.add_argument("--seed", type=_integer, default=None)
    _bool_flag(group, "progress-bar", "show a progress bar")  # type: ignore[arg-type]


def add_refinement_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("refinement (after the network, against every pattern)")
    group.add_argument("--refine-epochs", type=_integer, default=None, help="refinement epochs (0 = network only; default 40)")
    _bool_flag(group, "refine-probe", "refine the probe as well (for a probe guess, e.g. real data)")  # type: ignore[arg-type]
    group.add_argument("--refine-batch-size", type=_integer, default=None, help="first mini-batch size (it grows)")
    group.add_argument(
        "--refine-start", choices=[s.value for s in RefinementStart], default=None,
        help="start from the network's object, a flat one, or whichever the data prefer (auto)",
    )  # fmt: skip
    group.add_argument("--refine-noise-model", choices=[m.value for m in NoiseModel], default=None)


REFINEMENT_FLAGS = {
    "refine_epochs": "epochs", "refine_probe": "refine_probe", "refine_batch_size": "batch_size",
    "refine_start": "start", "refine_noise_model": "noise_model",
}  # fmt: skip


def refinement_config_from(arguments: argparse.Namespace) -> RefinementConfig:
    given = {flag: getattr(arguments, flag, None) for flag in REFINEMENT_FLAGS}
    values = {REFINEMENT_FLAGS[flag]: value for flag, value in given.items() if value is not None}
    try:
        return RefinementConfig(**values)
    except ValueError as error:
        # "RefinementConfig.epochs=-1 ..." names the field; the user typed --refine-epochs
        message = str(error)
        for flag, field in REFINEMENT_FLAGS.items():
            message = message.replace(f"RefinementConfig.{field}=", f"--{flag.replace('_', '-')}=")
        raise CliError(message) from None


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    group.add_argument(
        "--preset", choices=[p.value for p in Preset], default=None, help="width/epochs preset (default: by accelerator)"
    )
    group.add_argument("--epochs", type=_integer, default=None)
    group.add_argument("--batch-size", type=_integer, default=None)
    group.add_argument("--validation-fraction", type=float, default=None)
    group.add_argument("--n-groups", type=_integer, default=None)
    group.add_argument("--learning-rate", type=float, default=None)
    group.add_argument("--scheduler", choices=[s.value for s in Scheduler], default=None)
    group.add_argument("--warmup-epochs", type=_integer, default=None)
    group.add_argument("--gradient-clip-val", type=float, default=None)
    group.add_argument("--accumulate-grad-batches", type=_integer, default=None)
    group.add_argument("--checkpoint-save-top-k", type=_integer, default=None)
    group.add_argument("--checkpoint-monitor", choices=["val_loss", "train_loss"], default=None)
    group.add_argument("--checkpoint-mode", choices=[m.value for m in CheckpointMode], default=None)
    group.add_argument("--early-stop-patience", type=_integer, default=None)
    group.add_argument("--logger", choices=[k.value for k in LoggerKind], default=None)
    model = parser.add_argument_group("model")
    model.add_argument("--gridsize", type=_integer, default=None)
    model.add_argument("--neighbor-count", type=_integer, default=None)
    model.add_argument("--n-filters-scale", type=_integer, default=None)
    model.add_argument("--amp-activation", choices=[a.value for a in AmplitudeActivation], default=None)
    _bool_flag(model, "object-big", "merge a group's patches on a shared canvas during training")  # type: ignore[arg-type]
    _bool_flag(model, "probe-big", "predict the full patch (off: only its central half)")  # type: ignore[arg-type]
    model.add_argument("--loss", choices=[k.value for k in LossKind], default=None)
    model.add_argument("--mode", choices=[m.value for m in TrainingMode], default=None)
    _bool_flag(model, "intensity-scale-trainable", "learn a correction of the intensity scale")  # type: ignore[arg-type]
    _bool_flag(model, "probe-trainable", "refine the probe during training")  # type: ignore[arg-type]


def _overrides(arguments: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {name: getattr(arguments, name) for name in names if getattr(arguments, name, None) is not None}


EXECUTION_FIELDS = (
    "accelerator", "devices", "strategy", "num_nodes", "precision", "deterministic", "num_workers", "pin_memory",
    "persistent_workers", "prefetch_factor", "learning_rate", "scheduler", "warmup_epochs", "gradient_clip_val",
    "accumulate_grad_batches", "checkpoint_save_top_k", "checkpoint_monitor", "checkpoint_mode", "early_stop_patience",
    "logger", "inference_batch_size", "middle_trim", "pad_eval", "seed",
)  # fmt: skip
MODEL_FIELDS = (
    "gridsize", "neighbor_count", "n_filters_scale", "amp_activation", "object_big", "probe_big", "loss", "mode",
    "intensity_scale_trainable", "probe_trainable",
)  # fmt: skip
TRAINING_FIELDS = ("epochs", "batch_size", "validation_fraction", "n_groups")


def execution_config_from(arguments: argparse.Namespace) -> ExecutionConfig:
    values = _overrides(arguments, EXECUTION_FIELDS)
    if getattr(arguments, "progress_bar", None) is not None:
        values["enable_progress_bar"] = arguments.progress_bar
    return ExecutionConfig(**values)


def run_config_from(arguments: argparse.Namespace, N: int) -> RunConfig:
    """Preset (chosen by accelerator unless given), then every explicit flag on top."""
    from ptychodus_pinn.engine.training import resolve_accelerator

    execution = execution_config_from(arguments)
    preset = arguments.preset or (Preset.CPU if resolve_accelerator(execution.accelerator) == "cpu" else Preset.GPU)
    model, training = preset_configs(preset, N)
    model = replace(model, **_overrides(arguments, MODEL_FIELDS))
    training = replace(training, **_overrides(arguments, TRAINING_FIELDS))
    return RunConfig(model=model, training=training, execution=execution)


def read_options_from(arguments: argparse.Namespace) -> Any:
    from ptychodus_pinn.engine.data import ReadOptions

    return ReadOptions(
        dc_at_corner=arguments.dc_at_corner,
        margin_px=arguments.margin,
        crop_px=arguments.crop,
        max_patterns=arguments.max_patterns,
    )


def _existing(paths: Sequence[str]) -> list[Path]:
    result = []
    for name in paths:
        path = Path(name)
        if not path.exists():
            raise FileNotFoundError(f"file not found: {path}")
        result.append(path)
    return result


def _scan_files(paths: Sequence[Path]) -> list[Path]:
    """Expand directories into the scan files they hold."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in (".npz", ".h5", ".hdf5", ".cxi", ".bz2"))
            if not found:
                raise CliError(f"{path} holds no scan files (.npz, .h5, .cxi); export training data there first")
            files.extend(found)
        else:
            files.append(path)
    return files


# -------------------------------------------------------------------------------------------- commands


SIMULATE_LIMITS = {
    # flag: (low, low included, high, high included, allowed range in words)
    "photons": (0.0, False, 1e12, True, "a number in (0, 1e12] (mean photons per pattern)"),
    "n_positions": (1, True, 100_000, True, "an integer in 1..100000"),
    "seed": (0, True, 2**32 - 1, True, f"an integer in 0..{2**32 - 1}"),
    "overlap": (0.0, True, 1.0, False, "a number in [0, 1)"),
    "bad_pixel_fraction": (0.0, True, 1.0, False, "a number in [0, 1)"),
}


def check_simulate_arguments(arguments: argparse.Namespace) -> None:
    """Each simulate flag in its range, named as typed (numpy's own words name neither)."""
    import math

    from ptychodus_pinn.engine.config import SUPPORTED_PATTERN_SIZES_PX
    from ptychodus_pinn.engine.data import available_memory_bytes

    for name, (low, low_in, high, high_in, allowed) in SIMULATE_LIMITS.items():
        value = getattr(arguments, name)
        above = value >= low if low_in else value > low
        below = value <= high if high_in else value < high
        if not (math.isfinite(value) and above and below):
            raise CliError(f"--{name.replace('_', '-')}={value:g} is not allowed; it must be {allowed}")
    if arguments.size not in SUPPORTED_PATTERN_SIZES_PX:
        sizes = ", ".join(map(str, SUPPORTED_PATTERN_SIZES_PX))
        raise CliError(f"--size={arguments.size} is not allowed; it must be one of {sizes}")
    need = 16.0 * arguments.n_positions * arguments.size**2  # counts as float64 and float32, and a working copy
    available = available_memory_bytes()
    if available is not None and need > available:
        raise CliError(
            f"--n-positions={arguments.n_positions} patterns of --size={arguments.size} need about {need / 2**30:.1f} GiB "
            f"but {available / 2**30:.1f} GiB of memory is available; simulate fewer or smaller patterns"
        )


def command_simulate(arguments: argparse.Namespace) -> int:
    from ptychodus_pinn.app.outputs import check_output_file
    from ptychodus_pinn.engine.data import save_scan
    from ptychodus_pinn.engine.simulate import simulate_scan

    out = Path(arguments.out)
    check_simulate_arguments(arguments)
    check_output_file(out, "--out")
    scan = simulate_scan(
        arguments.object,
        photons=arguments.photons,
        n_positions=arguments.n_positions,
        N=arguments.size,
        seed=arguments.seed,
        overlap=arguments.overlap,
        path=arguments.path,
        bad_pixel_fraction=arguments.bad_pixel_fraction,
    )
    save_scan(scan, out)
    print(f"wrote {out}: {scan.count} patterns of {scan.size_px}x{scan.size_px}, object {scan.object_shape}, "
          f"{scan.mean_total_counts:.3g} counts/pattern")  # fmt: skip
    return 0


def command_train(arguments: argparse.Namespace) -> int:
    from ptychodus_pinn.app.outputs import check_output_file, check_output_folder, check_outputs_spare_inputs, same_file
    from ptychodus_pinn.engine.data import load_scan
    from ptychodus_pinn.engine.persistence import load_model, save_model
    from ptychodus_pinn.engine.training import preflight, train

    files = _scan_files(_existing(arguments.data))
    out = Path(arguments.out)
    losses = out.with_name(out.name + ".losses.csv")
    checkpoint_dir = Path(arguments.checkpoint_dir) if arguments.checkpoint_dir else out.with_name(out.name + ".checkpoints")
    # every output location is checked before anything is read or trained: a refusal after training would lose it
    check_output_file(out, "--out")
    check_output_file(losses, "--out (its .losses.csv)")
    check_output_folder(checkpoint_dir, "--checkpoint-dir")
    if same_file(out, checkpoint_dir):
        raise CliError(f"--out {out} and --checkpoint-dir {checkpoint_dir} are the same path; give them different names")
    inputs = {path: "--data" for path in files}
    if arguments.init_model:
        inputs[Path(arguments.init_model)] = "--init-model"
    check_outputs_spare_inputs(
        {out: "--out", losses: "--out (its .losses.csv)", checkpoint_dir / "last.ckpt": "--checkpoint-dir"}, inputs
    )
    read_options = read_options_from(arguments)
    preflight(execution_config_from(arguments))
    resume = None
    if arguments.resume:
        resume = checkpoint_dir / "last.ckpt"
        if not resume.exists():
            raise FileNotFoundError(f"no checkpoint to resume from: {resume}")
    scans = [load_scan(path, read_options) for path in files]
    config = run_config_from(arguments, scans[0].size_px)
    initial = load_model(arguments.init_model) if arguments.init_model else None
    result = train(scans, config, initial_model=initial, checkpoint_dir=checkpoint_dir, resume_from=resume)
    if not result.is_global_zero:
        return 0
    save_model(result.model, out)
    write_losses_csv(result.history, losses)
    final = result.history[-1] if result.history else None
    # epochs count from the first run, also after --resume ("best epoch 30 of 38", not "of 8")
    last_epoch = final.epoch if final else result.model.record.epochs_trained
    print(f"wrote {out} (best epoch {result.best_epoch} of {last_epoch}, "
          f"train loss {final.train_loss if final else float('nan'):.4f}, {result.seconds:.1f} s) and {losses}")  # fmt: skip
    return 0


# files infer writes into --out (each checked before the model runs)
INFER_OUTPUTS = ("object.npz", "object.png", "metrics.json")


def check_infer_outputs(out: Path, inputs: dict[Path, str]) -> None:
    """--out must be a writable folder and none of its output files may be an input (they would be overwritten)."""
    from ptychodus_pinn.app.outputs import check_output_file, check_output_folder, check_outputs_spare_inputs

    check_output_folder(out, "--out")
    outputs = {out / name: "--out" for name in INFER_OUTPUTS}
    check_outputs_spare_inputs(outputs, inputs)
    if out.is_dir():
        for path in outputs:
            check_output_file(path, "--out")


def command_infer(arguments: argparse.Namespace) -> int:
    from ptychodus_pinn.app.figures import save_object_png
    from ptychodus_pinn.engine.data import load_scan
    from ptychodus_pinn.engine.inference import reconstruct
    from ptychodus_pinn.engine.metrics import reconstruction_metrics
    from ptychodus_pinn.engine.persistence import load_model, pretrained_path

    refinement = refinement_config_from(arguments)
    (data_path,) = _existing([arguments.data])
    model_path = _existing([arguments.model])[0] if arguments.model else None
    inputs = {data_path: "--data"} if model_path is None else {model_path: "--model", data_path: "--data"}
    check_infer_outputs(Path(arguments.out), inputs)
    scan = load_scan(data_path, read_options_from(arguments))
    if model_path is None:
        model_path = pretrained_path(scan.size_px)
        if model_path is None and refinement.epochs == 0:
            raise CliError(f"no model ships for N={scan.size_px}: give --model, or refine a flat object (--refine-epochs > 0)")
    model = None if model_path is None else load_model(model_path)
    execution = execution_config_from(arguments)
    reconstruction = reconstruct(model, scan, execution=execution, refinement=refinement)
    out = Path(arguments.out)
    out.mkdir(parents=True, exist_ok=True)
    save_reconstruction(reconstruction, out / "object.npz")
    save_object_png(reconstruction.object, reconstruction.illuminated, out / "object.png")
    stages = " + ".join(reconstruction.stages) + ("" if model_path is None else f" ({model_path.name})")
    message = f"wrote {out / 'object.npz'} and {out / 'object.png'}: {stages}, {reconstruction.seconds:.1f} s"
    if scan.ground_truth is not None:
        metrics = reconstruction_metrics(reconstruction, scan.ground_truth)
        write_json(metrics, out / "metrics.json")
        message += f"; phase SSIM {metrics['phase_ssim']:.3f} (flat object {metrics['flat_phase_ssim']:.3f}"
        if "network_phase_ssim" in metrics and "refinement" in reconstruction.stages:
            message += f", network alone {metrics['network_phase_ssim']:.3f}"
        message += ")"
    else:
        (out / "metrics.json").unlink(missing_ok=True)  # an earlier run's metrics must not describe this object
    print(message)
    return 0


def command_demo(arguments: argparse.Namespace) -> int:
    from ptychodus_pinn.app.demo import run_demo

    run_demo(
        Path(arguments.out), execution_config_from(arguments), quick=arguments.quick, epochs=arguments.epochs,
        from_scratch=arguments.from_scratch,
    )  # fmt: skip
    return 0


def command_pretrain(arguments: argparse.Namespace) -> int:
    from ptychodus_pinn.app.demo import run_pretraining
    from ptychodus_pinn.app.outputs import check_output_file

    check_output_file(Path(arguments.out), "--out")

    # the shipped model was trained at learning rate 3e-3 (the other settings are the defaults)
    execution = replace(execution_config_from(arguments), learning_rate=arguments.learning_rate)
    run_pretraining(Path(arguments.out), execution, epochs=arguments.epochs, size_px=arguments.size)
    return 0


def command_gui(arguments: argparse.Namespace) -> int:
    try:
        from ptychodus_pinn.plugin.activation import run_gui
    except ImportError as error:
        raise CliError(f"the GUI needs ptychodus and PyQt5: pip install 'ptychodus-pinn[gui]' ({error})") from error
    return int(run_gui(arguments.ptychodus_args) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptychodus-pinn", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", required=True)

    simulate = commands.add_parser("simulate", help="write a synthetic scan with known truth")
    simulate.add_argument("--out", required=True, help="scan file to write (.npz or .h5)")
    simulate.add_argument("--object", choices=["siemens", "lines", "natural", "circuit", "grains"], default="siemens")
    simulate.add_argument("--photons", type=float, default=1e5, help="mean photons per pattern")
    simulate.add_argument("--n-positions", type=int, default=576)
    simulate.add_argument("--size", type=int, default=64, help="pattern size N (px)")
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--overlap", type=float, default=0.7, help="linear probe overlap (1 - step/diameter)")
    simulate.add_argument("--path", choices=["raster", "jittered", "spiral"], default="jittered")
    simulate.add_argument("--bad-pixel-fraction", type=float, default=0.0)
    simulate.set_defaults(handler=command_simulate)

    train = commands.add_parser("train", help="train a model on scan files (or folders of them)")
    train.add_argument("--data", nargs="+", required=True, help="scan files or folders")
    train.add_argument("--out", required=True, help="model file to write (*.pinn.pt); losses go to OUT.losses.csv")
    train.add_argument("--init-model", default=None, help="warm-start from this model file")
    train.add_argument("--checkpoint-dir", default=None, help="Lightning checkpoints (default OUT.checkpoints)")
    train.add_argument("--resume", action="store_true", help="resume from the last checkpoint of a killed run")
    add_training_arguments(train)
    add_execution_arguments(train)
    add_read_arguments(train)
    train.set_defaults(handler=command_train)

    for name in ("infer", "reconstruct"):
        infer = commands.add_parser(name, help="reconstruct a scan: the network's object, then refinement")
        infer.add_argument("--model", default=None, help="model file (default: the shipped model for the scan's N, if any)")
        infer.add_argument("--data", required=True)
        infer.add_argument("--out", required=True, help="folder for object.npz, object.png, metrics.json")
        add_refinement_arguments(infer)
        add_execution_arguments(infer)
        add_read_arguments(infer)
        infer.set_defaults(handler=command_infer)

    demo = commands.add_parser("demo", help="simulate, train, reconstruct and score, on CPU in minutes")
    demo.add_argument("--out", default="demo-out", help="folder for metrics.json, demo.png, the model and scans")
    demo.add_argument("--quick", action="store_true", help="a 1-minute smoke run (small scans, few epochs)")
    demo.add_argument("--epochs", type=int, default=None, help="override the demo's epoch count")
    demo.add_argument("--from-scratch", action="store_true", help="do not start from the shipped pretrained model")
    add_execution_arguments(demo)
    demo.set_defaults(handler=command_demo)

    pretrain = commands.add_parser(
        "pretrain", help="train the shipped starting model on simulated scans (other seeds than the demo's)"
    )
    pretrain.add_argument("--out", default="resources/pretrained-n64.pinn.pt")
    pretrain.add_argument("--epochs", type=int, default=40)
    pretrain.add_argument("--size", type=int, default=64)
    pretrain.add_argument("--learning-rate", type=float, default=3e-3)
    add_execution_arguments(pretrain)
    pretrain.set_defaults(handler=command_pretrain)

    gui = commands.add_parser("gui", help="start ptychodus with the plugin active")
    gui.add_argument("ptychodus_args", nargs=argparse.REMAINDER, help="arguments passed to ptychodus")
    gui.set_defaults(handler=command_gui)
    return parser


# config fields whose flag is spelled differently
FLAG_NAMES = {"margin_px": "margin", "crop_px": "crop", "enable_progress_bar": "progress-bar"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if arguments.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not arguments.verbose and arguments.command in ("train", "demo", "pretrain"):
        from ptychodus_pinn.engine.training import quiet_lightning

        quiet_lightning()
    try:
        return int(arguments.handler(arguments))
    except FileNotFoundError as error:
        print(f"ptychodus-pinn {arguments.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (CliError, ValueError, RuntimeError, PermissionError, OSError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        # "ExecutionConfig.learning_rate=-1.0 ..." -> "--learning-rate=-1.0 ..." (the flag the user typed); a
        # problem inside a model file, scan or checkpoint names that file's field, never a flag
        if type(error).__name__ not in ("ModelFileError", "ScanError", "CheckpointError"):
            first_line = re.sub(
                r"\b(?:\w+Config|ReadOptions)\.(\w+)=",
                lambda m: "--" + FLAG_NAMES.get(m.group(1), m.group(1).replace("_", "-")) + "=",
                first_line,
            )
        from ptychodus_pinn.engine.training import AcceleratorUnavailableError, TrainingOutOfMemoryError

        if isinstance(error, RuntimeError) and not isinstance(error, (AcceleratorUnavailableError, TrainingOutOfMemoryError)):
            raise  # a bug, not a user error: keep the traceback
        print(f"ptychodus-pinn {arguments.command}: error: {first_line}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"ptychodus-pinn {arguments.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
