"""``ptychodus-pinn``: simulate, train, infer (reconstruct), demo and gui, on shared argument builders."""

from __future__ import annotations

import argparse
import dataclasses
import decimal
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from ptychodus_pinn.app.infer import INFER_OUTPUTS, SCAN_SUFFIXES
from ptychodus_pinn.app.outputs import write_losses_csv
from ptychodus_pinn.engine.config import (
    ConfigError,
    ExecutionConfig,
    Knob,
    ModelConfig,
    Preset,
    RefinementConfig,
    RunConfig,
    TrainingConfig,
    TrainingMode,
    knobs,
    preset_configs,
    replace,
)

EXIT_USAGE = 2


class CliError(Exception):
    """A user error reported in one line with exit code 2."""


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


# ------------------------------------------------------------------------- config flags, from the knobs

# (config class name, field) -> the flag that sets it, for the one-line error message; every subcommand's
# parser holds the flags it has under this name (the configs' flags and the hand-written read flags)
FLAGS_OF = "config_flags"


def _dest(knob: Knob) -> str:
    return f"{knob.run_field}_{knob.name}"  # training_epochs and refinement_epochs are different flags


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value.value if isinstance(value, StrEnum) else value)


def _knob_help(knob: Knob, default: Any, default_text: str | None = None) -> str:
    """Help text from the knob: what it does, what is allowed (with its unit) and the default."""
    text = knob.help
    if knob.value_type is not bool and knob.enum is None:
        allowed = dataclasses.replace(knob, optional=False).allowed  # None is leaving the flag out
        text += f" Allowed: {allowed}" + (f", in {knob.unit}." if knob.unit else ".")
    if default_text is not None:
        text += f" Default: {default_text}."
    elif default is None and knob.optional:
        text += f" Default: {knob.none_means or 'none'}."
    elif default is not None:
        text += f" Default: {_shown(default)}."
    return text.replace("%", "%%")


def add_config_arguments(
    parser: argparse.ArgumentParser,
    config_class: type,
    title: str,
    *,
    only: Sequence[str] | None = None,
    defaults: dict[str, Any] | None = None,
    default_text: dict[str, str] | None = None,
) -> Any:
    """One flag per knob of ``config_class`` that has a ``cli_flag`` (only those named in ``only``); returns the group.

    A flag left out is None, so the config's (or the preset's) default stays, unless ``defaults`` gives the
    subcommand's own; ``default_text`` describes a default that is decided later (e.g. by --preset).
    """
    group = parser.add_argument_group(title)
    defaults, default_text = defaults or {}, default_text or {}
    flags = dict(parser.get_default(FLAGS_OF) or {})
    for knob in knobs(config_class):
        if knob.cli_flag is None or (only is not None and knob.name not in only):
            continue
        flags[(knob.config, knob.name)] = knob.cli_flag
        default = defaults.get(knob.name)
        help_text = _knob_help(knob, default if knob.name in defaults else knob.default, default_text.get(knob.name))
        options: dict[str, Any] = {"dest": _dest(knob), "default": default, "help": help_text}
        if knob.value_type is bool:
            group.add_argument(knob.cli_flag, action=argparse.BooleanOptionalAction, **options)
        elif knob.enum is not None:
            group.add_argument(knob.cli_flag, choices=[member.value for member in knob.enum], **options)
        else:
            convert = _integer if knob.value_type is int else float if knob.value_type is float else knob.from_text
            metavar = "N" if knob.value_type is int else "X" if knob.value_type is float else knob.name.upper()
            group.add_argument(knob.cli_flag, type=convert, metavar=metavar, **options)
    parser.set_defaults(**{FLAGS_OF: flags})
    return group


def config_values(arguments: argparse.Namespace, config_class: type) -> dict[str, Any]:
    """The fields of ``config_class`` given on the command line (or by the subcommand's own defaults)."""
    values = {knob.name: getattr(arguments, _dest(knob), None) for knob in knobs(config_class)}
    return {name: value for name, value in values.items() if value is not None}


READ_FLAGS = {"dc_at_corner": "--dc-at-corner", "margin_px": "--margin", "crop_px": "--crop", "max_patterns": "--max-patterns"}


def add_read_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reading scans")
    group.add_argument("--dc-at-corner", default=None, action=argparse.BooleanOptionalAction,
                       help="patterns have zero frequency at pixel (0, 0) (auto for tike-style files)")  # fmt: skip
    group.add_argument(
        "--margin", type=_integer, default=16, help="object-grid margin (px) for files whose positions are not on a grid"
    )
    group.add_argument("--crop", type=_integer, default=None, help="centre-crop patterns to this size (32, 64, 128, 256)")
    group.add_argument("--max-patterns", type=_integer, default=None, help="use only the first patterns of each file")
    flags = dict(parser.get_default(FLAGS_OF) or {})
    parser.set_defaults(**{FLAGS_OF: flags | {("ReadOptions", name): flag for name, flag in READ_FLAGS.items()}})


def add_execution_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, ExecutionConfig, "execution (how and where to run)")


def add_refinement_arguments(
    parser: argparse.ArgumentParser, title: str = "refinement (after the network, against every pattern)"
) -> None:
    add_config_arguments(parser, RefinementConfig, title)


# set by --preset (chosen by accelerator unless given) when the flag is left out
PRESET_FIELDS = {"epochs": "by --preset", "batch_size": "by --preset", "n_filters_scale": "by --preset"}


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    group = add_config_arguments(parser, TrainingConfig, "training", default_text=PRESET_FIELDS)
    group.add_argument(
        "--preset", choices=[p.value for p in Preset], default=None,
        help="network width, epochs and batch size for a cpu or a gpu (default: by accelerator)",
    )  # fmt: skip
    add_config_arguments(parser, ModelConfig, "model", default_text=PRESET_FIELDS)


def refinement_config_from(arguments: argparse.Namespace) -> RefinementConfig:
    return RefinementConfig(**config_values(arguments, RefinementConfig))


def execution_config_from(arguments: argparse.Namespace) -> ExecutionConfig:
    return ExecutionConfig(**config_values(arguments, ExecutionConfig))


def run_config_from(arguments: argparse.Namespace, N: int) -> RunConfig:
    """Preset (chosen by accelerator unless given), then every explicit flag on top."""
    from ptychodus_pinn.engine.training import resolve_accelerator

    execution = execution_config_from(arguments)
    preset = arguments.preset or (Preset.CPU if resolve_accelerator(execution.accelerator) == "cpu" else Preset.GPU)
    model, training = preset_configs(preset, N)
    model = replace(model, **config_values(arguments, ModelConfig))
    training = replace(training, **config_values(arguments, TrainingConfig))
    return RunConfig(model=model, training=training, execution=execution, refinement=refinement_config_from(arguments))


def config_error_message(error: ConfigError, arguments: argparse.Namespace) -> str:
    """The error in the words the user typed: the flag when the value came from one, else where it came from."""
    flag = (getattr(arguments, FLAGS_OF, None) or {}).get((error.config, error.field))
    if flag is not None:
        return error.message_for(flag)
    # no flag of this command sets it: the value came from a model file or the scans, and no flag may be invented
    return f"{error} (a value in the model file or taken from the scans, not a command-line option)"


def _with_flag(message: str, arguments: argparse.Namespace) -> str:
    """A plain ValueError that starts "<Config>.<field>=" (engine checks not yet raising ConfigError), spelled as the flag."""
    for (config, name), flag in (getattr(arguments, FLAGS_OF, None) or {}).items():
        if message.startswith(f"{config}.{name}="):
            return flag + message[len(config) + len(name) + 1 :]
    return message


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
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in SCAN_SUFFIXES)
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


def check_pattern_size_flag(size_px: int) -> None:
    """``--size`` among the pattern sizes the network is built for, named as typed."""
    from ptychodus_pinn.engine.config import SUPPORTED_PATTERN_SIZES_PX

    if size_px not in SUPPORTED_PATTERN_SIZES_PX:
        sizes = ", ".join(map(str, SUPPORTED_PATTERN_SIZES_PX))
        raise CliError(f"--size={size_px} is not allowed; it must be one of {sizes}")


def check_simulate_arguments(arguments: argparse.Namespace) -> None:
    """Each simulate flag in its range, named as typed (numpy's own words name neither)."""
    import math

    from ptychodus_pinn.engine.data import available_memory_bytes

    for name, (low, low_in, high, high_in, allowed) in SIMULATE_LIMITS.items():
        value = getattr(arguments, name)
        above = value >= low if low_in else value > low
        below = value <= high if high_in else value < high
        if not (math.isfinite(value) and above and below):
            raise CliError(f"--{name.replace('_', '-')}={value:g} is not allowed; it must be {allowed}")
    check_pattern_size_flag(arguments.size)
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
    from ptychodus_pinn.app.infer import (
        RefinementProgress,
        device_width,
        model_path_for,
        shipped_alternative,
        write_infer_outputs,
    )
    from ptychodus_pinn.engine.data import load_scan
    from ptychodus_pinn.engine.inference import reconstruct
    from ptychodus_pinn.engine.persistence import load_model

    refinement = refinement_config_from(arguments)
    (data_path,) = _existing([arguments.data])
    model_path = _existing([arguments.model])[0] if arguments.model else None
    inputs = {data_path: "--data"} if model_path is None else {model_path: "--model", data_path: "--data"}
    check_infer_outputs(Path(arguments.out), inputs)
    scan = load_scan(data_path, read_options_from(arguments))
    execution = execution_config_from(arguments)
    width = device_width(scan.size_px, execution)  # the shipped model's: 4 on a GPU at N = 64, else 1
    model_path = model_path_for(scan.size_px, model_path, refinement, width)
    model = None if model_path is None else load_model(model_path)
    alternative = shipped_alternative(model_path, scan.size_px, refinement, load_model, width)
    # -v logs the same progress; --no-progress-bar keeps the console quiet, as it does for train
    progress = RefinementProgress() if execution.enable_progress_bar and not arguments.verbose else None
    try:
        reconstruction = reconstruct(
            model, scan, execution=execution, refinement=refinement, alternative=alternative, on_refinement_epoch=progress
        )
    finally:
        if progress is not None:
            progress.end()
    print(write_infer_outputs(reconstruction, scan, Path(arguments.out), model_path))
    return 0


def command_demo(arguments: argparse.Namespace) -> int:
    from ptychodus_pinn.app.demo import run_demo

    epochs = config_values(arguments, TrainingConfig).get("epochs")
    run_demo(
        Path(arguments.out), execution_config_from(arguments), quick=arguments.quick, epochs=epochs,
        from_scratch=arguments.from_scratch,
    )  # fmt: skip
    return 0


# stage 1 of the shipped N=64 model: app.pretrain's siemens-lines corpus, 40 epochs at learning rate 3e-3
PRETRAIN_DEFAULTS = {"epochs": 40, "learning_rate": 3e-3}


def command_pretrain(arguments: argparse.Namespace) -> int:
    from ptychodus_pinn.app.outputs import check_output_file, check_outputs_spare_inputs
    from ptychodus_pinn.app.pretrain import run_pretraining
    from ptychodus_pinn.engine.persistence import pretrained_name

    check_pattern_size_flag(arguments.size)
    width = config_values(arguments, ModelConfig).get("n_filters_scale")
    # a wider model's default name is its own (pretrained-nN-wW.pinn.pt): it must never replace the width-1 file
    out = Path(arguments.out if arguments.out is not None else f"resources/{pretrained_name(arguments.size, width or 1)}")
    check_output_file(out, "--out")
    if arguments.initial_model is not None:  # e.g. fine-tuning the shipped model with the default --out
        check_outputs_spare_inputs({out: "--out"}, {Path(arguments.initial_model): "--initial-model"})

    training = config_values(arguments, TrainingConfig)  # PRETRAIN_DEFAULTS unless given
    run_pretraining(
        out, execution_config_from(arguments), epochs=training["epochs"], size_px=arguments.size,
        learning_rate=training["learning_rate"], corpus_name=arguments.corpus, count=arguments.scans,
        n_positions=arguments.positions, mode=TrainingMode(arguments.mode),
        initial_model=None if arguments.initial_model is None else Path(arguments.initial_model),
        width=width, probe_symmetries=training.get("probe_symmetries", False),
    )  # fmt: skip
    return 0


def command_gui(arguments: argparse.Namespace) -> int:
    """Hand the process over to ``python -m ptychodus_pinn.qt`` (the app layer never imports Qt or ptychodus)."""
    missing = [name for name in ("ptychodus", "PyQt5") if importlib.util.find_spec(name) is None]
    if missing:
        raise CliError(f"the GUI needs {' and '.join(missing)}: pip install 'ptychodus-pinn[gui]'")
    command = [sys.executable, "-m", "ptychodus_pinn.qt", *arguments.ptychodus_args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)
    return 0  # not reached: execv replaces this process


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
    add_refinement_arguments(train, "refinement of each training scan (--mode distil: the network learns the refined objects)")
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

    from ptychodus_pinn.app.watch import add_watch_arguments, positive_integer, run_watch

    watch = commands.add_parser("watch", help="reconstruct every scan file that arrives in a folder (OUT/NAME/ each)")
    add_watch_arguments(watch)
    watch.set_defaults(handler=run_watch)

    demo = commands.add_parser("demo", help="simulate, train, reconstruct and score, on CPU in minutes")
    demo.add_argument("--out", default="demo-out", help="folder for metrics.json, demo.png, the model and scans")
    demo.add_argument("--quick", action="store_true", help="a 1-minute smoke run (small scans, few epochs)")
    demo.add_argument("--from-scratch", action="store_true", help="do not start from the shipped pretrained model")
    add_config_arguments(demo, TrainingConfig, "training", only=["epochs"], default_text={"epochs": "the demo's own"})
    add_execution_arguments(demo)
    demo.set_defaults(handler=command_demo)

    pretrain = commands.add_parser(
        "pretrain",
        help="train a starting model on simulated scans: the shipped model's two stages (siemens-lines, then "
        "broad-one-probe distilled from it) or a broad corpus (natural images, circuits, grains, Siemens stars, lines; "
        "several probes, paths and doses; app/pretrain.py)",
    )
    pretrain.add_argument(
        "--corpus", choices=("siemens-lines", "broad", "broad-one-probe"), default="siemens-lines",
        help="siemens-lines: stage 1 of the shipped model (default); broad: five object kinds, three paths, probes and "
        "defoci, 1e3-1e7 photons; broad-one-probe: the same with the default probe, 1e4-1e6 photons (stage 2 of the "
        "shipped model: --mode distil --initial-model STAGE1 --epochs 30 --learning-rate 1e-3; app/pretrain.py)",
    )  # fmt: skip
    pretrain.add_argument(
        "--mode", choices=[mode.value for mode in TrainingMode], default=TrainingMode.PINN.value,
        help="pinn (default): the likelihood alone; distil: refine each corpus scan first and learn its refined "
        "patches too",
    )  # fmt: skip
    pretrain.add_argument("--initial-model", default=None, help="fine-tune this saved model instead of random weights")
    pretrain.add_argument(
        "--out",
        default=None,
        help="default: resources/pretrained-nN.pinn.pt, N from --size (pretrained-nN-wW.pinn.pt with --n-filters-scale W > 1)",
    )
    pretrain.add_argument("--size", type=int, default=64, help="pattern size N in pixels (default 64; models ship for 64, 128)")
    pretrain.add_argument("--scans", type=positive_integer, default=25, help="broad corpus: scans (default 25)")
    pretrain.add_argument("--positions", type=positive_integer, default=400, help="broad corpus: patterns per scan (default 400)")
    add_config_arguments(
        pretrain, TrainingConfig, "training", only=[*PRETRAIN_DEFAULTS, "probe_symmetries"], defaults=PRETRAIN_DEFAULTS
    )
    add_config_arguments(
        pretrain, ModelConfig, "model", only=["n_filters_scale"],
        default_text={"n_filters_scale": "1 (the shipped models), or --initial-model's own"},
    )  # fmt: skip
    add_execution_arguments(pretrain)
    pretrain.set_defaults(handler=command_pretrain)

    gui = commands.add_parser("gui", help="start ptychodus with the plugin active")
    gui.add_argument("ptychodus_args", nargs=argparse.REMAINDER, help="arguments passed to ptychodus")
    gui.set_defaults(handler=command_gui)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    command_at = next((index for index, argument in enumerate(argv) if not argument.startswith("-")), len(argv))
    if argv[command_at : command_at + 1] == ["gui"]:  # ptychodus's own options (-b, --settings, ...) pass as they are
        arguments = parser.parse_args(argv[: command_at + 1])
        rest = argv[command_at + 1 :]
        arguments.ptychodus_args = rest[1:] if rest[:1] == ["--"] else rest
    else:
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
        # "TrainingConfig.learning_rate=-1.0 ..." -> "--learning-rate=-1.0 ..." (the flag the user typed); a
        # problem inside a model file, scan or checkpoint names that file's field, never a flag
        if isinstance(error, ConfigError):
            first_line = config_error_message(error, arguments)
        elif isinstance(error, ValueError):
            first_line = _with_flag(first_line, arguments)
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
