"""One place for every knob: frozen dataclasses whose fields describe themselves.

Each field of :class:`ModelConfig`, :class:`TrainingConfig`, :class:`ExecutionConfig` and
:class:`RefinementConfig` carries its metadata (label, help, unit, bounds, choices, whether ``None``
is allowed, its command-line flag, whether the ptychodus panel shows it). :func:`knobs` returns that
metadata as :class:`Knob` records; the CLI builds its arguments from them and the ptychodus
settings panel its widgets, and ``__post_init__`` validates every value against them. Only checks
that involve several fields are written by hand.

An invalid value raises :class:`ConfigError` (a ``ValueError``) naming the config, the field, the
value and what is allowed, so the CLI, the panel and the Python API all report bad input the same
way; the CLI spells the field as its flag.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from types import UnionType
from typing import Any

SHIPPED_MODEL_NAME = "the shipped pretrained model"  # how logs name it, wherever it runs


def shipped_model_name(width: int) -> str:
    """How logs (and the plugin's model slot) name the shipped model of this network width."""
    return SHIPPED_MODEL_NAME if width == 1 else f"{SHIPPED_MODEL_NAME} of width {width}"


SUPPORTED_PATTERN_SIZES_PX: tuple[int, ...] = (32, 64, 128, 256)
# upper limits: far beyond any real run, low enough that a typo (an extra zero, 1e29) is refused up front
# refinement's half-resolution stage runs for N ≥ 32 (at N = 32 its 16-px half is level with full-resolution epochs of
# the same cost; at N = 64 and 128 it is ahead: docs/physics.md, "Half resolution first")
HALF_RESOLUTION_MIN_PX = 32
MAX_COUNT = 1_000_000  # epochs, batch sizes, patience, accumulation, top-k
MAX_WORKERS = 1024
MAX_DEVICES = 4096
MAX_NODES = 10_000
MAX_NEIGHBORS = 1000
MAX_SEED = 2**32 - 1  # Lightning's seed_everything range (it silently replaces larger seeds)


class Accelerator(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    GPU = "gpu"
    CUDA = "cuda"
    MPS = "mps"


class Precision(StrEnum):
    FP32 = "32"
    FP16_MIXED = "16-mixed"
    BF16_MIXED = "bf16-mixed"


class Scheduler(StrEnum):
    CONSTANT = "constant"
    EXPONENTIAL = "exponential"
    COSINE = "cosine"
    PLATEAU = "plateau"


class CheckpointMode(StrEnum):
    MIN = "min"
    MAX = "max"


class MonitoredLoss(StrEnum):
    """The logged loss that picks the best epoch."""

    VAL_LOSS = "val_loss"
    TRAIN_LOSS = "train_loss"


class LoggerKind(StrEnum):
    CSV = "csv"
    TENSORBOARD = "tensorboard"
    MLFLOW = "mlflow"
    NONE = "none"


class AmplitudeActivation(StrEnum):
    SIGMOID = "sigmoid"
    SOFTPLUS = "softplus"
    SILU = "silu"


class LossKind(StrEnum):
    POISSON = "poisson"
    MAE = "mae"


class TrainingMode(StrEnum):
    """What the network learns from: the counts alone (pinn), the counts plus each training scan's refined
    object (distil: refine-then-distil, ``engine/distillation.py``), or a known object (supervised)."""

    PINN = "pinn"
    DISTIL = "distil"
    SUPERVISED = "supervised"


class Preset(StrEnum):
    CPU = "cpu"
    GPU = "gpu"


class NoiseModel(StrEnum):
    POISSON = "poisson"
    GAUSSIAN = "gaussian"


class RefinementStart(StrEnum):
    """Where refinement starts: the data's likelihood decides (``auto``), or forced."""

    AUTO = "auto"
    NETWORK = "network"
    FLAT = "flat"


class Section(StrEnum):
    """Groups of knobs; each section is exactly one config (see :data:`SECTION_CONFIG`)."""

    MODEL = "Model"
    TRAINING = "Training"
    EXECUTION = "Execution"
    REFINEMENT = "Refinement"


# ------------------------------------------------------------------------------------------ errors


class ConfigError(ValueError):
    """An invalid config value: ``config`` (class name), ``field``, ``value`` and ``allowed`` (in words).

    The message reads ``"<config>.<field>=<value!r> is not allowed; it must be <allowed>"`` (or
    ``"<config>.<field>=<value!r> <problem>"`` when a check explains more); :meth:`message_for`
    spells the field another way, e.g. as the command-line flag the user typed.
    """

    def __init__(self, config: str, field: str, value: Any, allowed: str, problem: str | None = None) -> None:
        self.config = config
        self.field = field
        self.value = value
        self.allowed = allowed
        self.problem = problem or f"is not allowed; it must be {allowed}"
        super().__init__(self.message_for(f"{config}.{field}"))

    def message_for(self, name: str) -> str:
        """The message with the field called ``name`` (``--batch-size``, ``the model file's N``, ...)."""
        return f"{name}={self.value!r} {self.problem}"


# ------------------------------------------------------------------------------------------- knobs


@dataclass(frozen=True)
class Knob:
    """What one config field is, for people (label, help, unit) and for checks (type, bounds, choices).

    ``minimum``/``maximum`` are inclusive unless ``exclusive_minimum``/``exclusive_maximum``;
    ``choices`` lists the allowed values when there is a fixed set (the members of ``value_type``
    when it is a ``StrEnum``); ``optional`` means ``None`` is allowed, ``none_means`` says what it
    does. ``cli_flag`` is ``None`` for a field that is not on the command line; ``in_panel`` is
    False for a field the ptychodus panel does not show, and ``advanced`` marks one it shows among
    its section's less common settings.
    """

    name: str
    config: str  # class name, as in ConfigError.config
    run_field: str  # the RunConfig attribute that holds this config: model, training, execution, refinement
    section: Section
    label: str
    help: str
    value_type: type
    default: Any
    unit: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    choices: tuple[Any, ...] = ()
    optional: bool = False
    none_means: str | None = None
    cli_flag: str | None = None
    in_panel: bool = True
    advanced: bool = False
    note: str | None = None  # said after the allowed values, e.g. "crop or bin the patterns to fit"
    custom_allowed: str | None = dataclasses.field(default=None, repr=False)
    custom_check: Callable[[Any], bool] | None = dataclasses.field(default=None, repr=False, compare=False)
    custom_from_text: Callable[[str], Any] | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def enum(self) -> type[StrEnum] | None:
        """The ``StrEnum`` of a choice field, else None."""
        return self.value_type if issubclass(self.value_type, StrEnum) else None

    @property
    def allowed(self) -> str:
        """What is allowed, in words (the end of every ConfigError message about this field)."""
        if self.custom_allowed is not None:
            text = self.custom_allowed
        elif self.value_type is bool:
            text = "True or False"
        elif self.choices:
            text = "one of: " + ", ".join(str(choice) for choice in self.choices)
        elif self.value_type is int:
            low, high = _number(self.minimum), _number(self.maximum)
            text = f"an integer in {low}..{high}" if self.maximum is not None else f"an integer >= {low}"
        elif self.value_type is float:
            if self.maximum is None:
                text = f"a number {'>' if self.exclusive_minimum else '>='} {_number(self.minimum)}"
            else:
                text = (
                    f"a number in {'(' if self.exclusive_minimum else '['}{_number(self.minimum)}, "
                    f"{_number(self.maximum)}{')' if self.exclusive_maximum else ']'}"
                )
        else:
            text = "a non-empty text"
        if self.optional:
            text = f"None ({self.none_means}) or {text}" if self.none_means else f"None or {text}"
        return f"{text} ({self.note})" if self.note else text

    def check(self, value: Any) -> Any:
        """The value as the config stores it (a choice's text becomes its enum); ConfigError if not allowed."""
        if value is None and self.optional:
            return None
        if self.enum is not None:
            try:
                return self.enum(str(value))
            except ValueError:
                raise self.error(value) from None
        if not self._fits(value):
            raise self.error(value)
        return value

    def error(self, value: Any, problem: str | None = None) -> ConfigError:
        """A ConfigError about this field."""
        return ConfigError(self.config, self.name, value, self.allowed, problem)

    def from_text(self, text: str) -> Any:
        """A value from its text (``"2"``, ``"0,2"``, ``"cosine"``); ValueError when it is not one."""
        if self.custom_from_text is not None:
            return self.custom_from_text(text)
        if self.value_type is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{text!r} is not true or false")
        if self.value_type is int:
            return int(text)
        if self.value_type is float:
            return float(text)
        return text

    def _fits(self, value: Any) -> bool:
        if self.custom_check is not None:
            return self.custom_check(value)
        if self.value_type is bool:
            return isinstance(value, bool)
        if self.value_type is int:
            if not _is_int(value):
                return False
        elif self.value_type is float:
            if not _is_real(value):
                return False
        elif self.value_type is str:
            return isinstance(value, str) and bool(value)
        if self.choices:
            return value in self.choices
        if self.minimum is not None and (value <= self.minimum if self.exclusive_minimum else value < self.minimum):
            return False
        return self.maximum is None or (value < self.maximum if self.exclusive_maximum else value <= self.maximum)


def _number(value: float | None) -> str:
    return "?" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_KNOB = "knob"


def knob(
    label: str,
    help: str,
    *,
    unit: str | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
    choices: tuple[Any, ...] = (),
    none_means: str | None = None,
    cli: bool | str = True,
    in_panel: bool = True,
    advanced: bool = False,
    note: str | None = None,
    allowed: str | None = None,
    check: Callable[[Any], bool] | None = None,
    from_text: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """The metadata of a config field, ``field(default=..., metadata=knob(...))``; see :class:`Knob`.

    Type, optional (``None`` in the annotation), default, name and section come from the class.

    ``cli``: True for the flag ``--<name-with-dashes>``, a string for another flag, False for none.
    ``allowed``/``check`` replace the generated check for a field whose values have a special form.
    """
    metadata = {
        "label": label, "help": help, "unit": unit, "minimum": minimum, "maximum": maximum,
        "exclusive_minimum": exclusive_minimum, "exclusive_maximum": exclusive_maximum, "choices": choices,
        "none_means": none_means, "cli": cli, "in_panel": in_panel, "advanced": advanced, "note": note,
        "custom_allowed": allowed, "custom_check": check, "custom_from_text": from_text,
    }  # fmt: skip
    return {_KNOB: metadata}


def knobs(config_class: type) -> tuple[Knob, ...]:
    """The :class:`Knob` of every field of a config class (``ModelConfig``, ``TrainingConfig``, ...), in field order.

    What the CLI (``ptychodus_pinn.app.cli``) and the ptychodus settings panel are built from.
    """
    return _knobs(config_class)


@functools.cache
def _knobs(config_class: Any) -> tuple[Knob, ...]:
    section = SECTION_OF[config_class]
    hints = typing.get_type_hints(config_class)
    result = []
    for item in dataclasses.fields(config_class):
        meta = dict(item.metadata[_KNOB])
        members = typing.get_args(hints[item.name]) if isinstance(hints[item.name], UnionType) else (hints[item.name],)
        types = [member for member in members if member is not type(None)]
        value_type: type = str if len(types) > 1 else types[0]  # int | str (devices) is given as text
        cli = meta.pop("cli")
        choices = meta.pop("choices") or (tuple(value_type) if issubclass(value_type, StrEnum) else ())
        result.append(
            Knob(
                name=item.name,
                config=config_class.__name__,
                run_field=RUN_FIELD_OF[config_class],
                section=section,
                value_type=value_type,
                default=item.default,
                choices=choices,
                optional=type(None) in members,
                cli_flag=None if cli is False else "--" + item.name.replace("_", "-") if cli is True else str(cli),
                **meta,
            )
        )
    return tuple(result)


def knob_of(config_class: type, name: str) -> Knob:
    """One field's :class:`Knob`; KeyError for a name the class does not have."""
    for item in knobs(config_class):
        if item.name == name:
            return item
    raise KeyError(f"{config_class.__name__} has no field {name!r}")


def _validate(instance: Any) -> None:
    """Check every field against its knob (type, bounds, choices, None); store a choice's text as its enum."""
    for item in knobs(type(instance)):
        value = getattr(instance, item.name)
        checked = item.check(value)
        if checked is not value:
            object.__setattr__(instance, item.name, checked)


def _devices_fit(value: Any) -> bool:
    if value == "auto":
        return True
    if _is_int(value):
        return bool(1 <= value <= MAX_DEVICES)
    return isinstance(value, str) and len(value) <= 200 and re.fullmatch(r"\d{1,4}(,\d{1,4})*,?", value) is not None


def _devices_from_text(text: str) -> int | str:
    """'auto', a count ('2') or Lightning device indices ('1,' or '0,2')."""
    return int(text) if text.isdigit() else text


# ----------------------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class ModelConfig:
    """What the network is; stored in every model file so it can rebuild itself."""

    # fmt: off
    N: int = field(default=64, metadata=knob(
        "Pattern Size", "Diffraction pattern size the network takes; taken from the scan (crop or bin to fit).", unit="px",
        choices=SUPPORTED_PATTERN_SIZES_PX, note="crop or bin the patterns to fit", cli=False, in_panel=False))
    gridsize: int = field(default=1, metadata=knob(
        "Grid Size",
        "Patterns per training sample along each axis (gridsize² neighbours share one canvas, so their overlap "
        "constrains the solution); 1 is the per-pattern mode.",
        minimum=1, maximum=4))
    neighbor_count: int = field(default=6, metadata=knob(
        "Neighbours (K)", "Nearest neighbours a group is drawn from; at least gridsize² - 1.", minimum=0, maximum=MAX_NEIGHBORS))
    n_filters_scale: int = field(default=2, metadata=knob(
        "Network Width",
        "Width multiplier of the U-Net: 1 is fast on a CPU, 4 suits a GPU. Inference uses the model's own width.",
        minimum=1, maximum=16))
    amp_activation: AmplitudeActivation = field(default=AmplitudeActivation.SIGMOID, metadata=knob(
        "Amplitude Activation", "Output activation of the amplitude head."))
    object_big: bool = field(default=True, metadata=knob(
        "Object Big", "Merge a group's patches on a shared canvas during training."))
    probe_big: bool = field(default=True, metadata=knob("Probe Big", "Predict the full patch (off: only its central half)."))
    loss: LossKind = field(default=LossKind.POISSON, metadata=knob(
        "Loss", "Poisson negative log-likelihood of the counts (recommended) or MAE on amplitudes."))
    # distil by default: measured better than pinn on the next scan of every kind (benchmarks/results/training-targets-cpu.md)
    mode: TrainingMode = field(default=TrainingMode.DISTIL, metadata=knob(
        "Mode",
        "pinn trains self-supervised on the counts; distil also learns each training scan's refined object (the "
        "refinement's answer, refreshed as training goes); supervised needs the true object of each training scan.",
        in_panel=False))
    intensity_scale_trainable: bool = field(default=False, metadata=knob(
        "Train Intensity Scale", "Learn a correction of the counts scale computed from the data."))
    probe_trainable: bool = field(default=False, metadata=knob(
        "Train Probe", "Train the probe together with the network (training only; refinement can refine it too)."))
    # fmt: on

    def __post_init__(self) -> None:
        _validate(self)
        low = self.gridsize**2 - 1
        if self.neighbor_count < low:
            raise ConfigError(
                "ModelConfig", "neighbor_count", self.neighbor_count,
                f"an integer in {low}..{MAX_NEIGHBORS} (at least gridsize**2 - 1)",
            )  # fmt: skip

    @property
    def channels(self) -> int:
        """Patterns per training sample (C = gridsize²)."""
        return self.gridsize**2


@dataclass(frozen=True)
class TrainingConfig:
    """What training does: epochs, batches, the validation split, the optimiser and which epoch is kept."""

    # fmt: off
    epochs: int = field(default=60, metadata=knob(
        "Epochs", "Training passes over the patterns; progress is reported per epoch.", unit="epochs", minimum=1,
        maximum=MAX_COUNT))
    batch_size: int = field(default=16, metadata=knob(
        "Batch Size", "Training samples per optimiser step; larger uses more memory and is faster per epoch.", unit="samples",
        minimum=1, maximum=MAX_COUNT))
    validation_fraction: float = field(default=0.1, metadata=knob(
        "Validation Fraction",
        "Fraction of the scan area held out for validation (a spatial region, so overlapping patterns do not "
        "leak); 0 trains on everything and monitors the training loss.",
        minimum=0.0, maximum=0.5, exclusive_maximum=True))
    n_groups: int | None = field(default=None, metadata=knob(
        "Max Groups", "Cap on the training samples (groups) per epoch.", unit="samples", minimum=1, maximum=1000 * MAX_COUNT,
        none_means="use all", advanced=True))
    learning_rate: float = field(default=2e-3, metadata=knob(
        "Learning Rate", "Initial Adam learning rate; lower it when training diverges.", minimum=0.0, maximum=1.0,
        exclusive_minimum=True))
    scheduler: Scheduler = field(default=Scheduler.COSINE, metadata=knob(
        "Scheduler", "Learning-rate schedule: constant, exponential decay, cosine with warm-up, or halved on a plateau."))
    warmup_epochs: int = field(default=2, metadata=knob(
        "Warm-up Epochs", "Epochs of linear learning-rate warm-up before the cosine schedule.", unit="epochs", minimum=0,
        maximum=MAX_COUNT))
    gradient_clip_val: float | None = field(default=None, metadata=knob(
        "Gradient Clip", "Clip the gradient norm to this value.", minimum=0.0, exclusive_minimum=True, none_means="no clipping",
        advanced=True))
    accumulate_grad_batches: int = field(default=1, metadata=knob(
        "Accumulate Batches", "Batches whose gradients are summed before one optimiser step.", minimum=1, maximum=MAX_COUNT,
        advanced=True))
    early_stop_patience: int | None = field(default=None, metadata=knob(
        "Early Stop Patience", "Stop after this many epochs without improvement of the monitored loss.", unit="epochs", minimum=1,
        maximum=MAX_COUNT, none_means="never stop early"))
    checkpoint_monitor: MonitoredLoss | None = field(default=None, metadata=knob(
        "Checkpoint Monitor", "Loss that picks the best epoch (the model kept).",
        none_means="val_loss when there is a validation split, else train_loss"))
    checkpoint_mode: CheckpointMode = field(default=CheckpointMode.MIN, metadata=knob(
        "Checkpoint Mode", "Whether the best epoch has the lowest (min) or highest (max) monitored loss."))
    distil_weight: float = field(default=1.0, metadata=knob(
        "Distillation Weight",
        "Weight of the refined-object term against the counts' likelihood in distil training (mode distil).",
        minimum=0.0, maximum=1000.0, advanced=True))
    target_refresh_epochs: int = field(default=10, metadata=knob(
        "Target Refresh", "Every this many epochs distil training compares the network's object on each training scan with "
        "its target by the counts' likelihood, and refines the target again from the network's object where that fits "
        "better.", unit="epochs", minimum=0, maximum=MAX_COUNT,
        note="0 never refreshes", advanced=True))
    probe_symmetries: bool = field(default=False, metadata=knob(
        "Probe Symmetries", "Show each training batch through a rotation or reflection the probe is symmetric under "
        "(a true scan of the turned object: up to 8 views of every pattern); gridsize 1 only.", advanced=True))
    checkpoint_save_top_k: int = field(default=1, metadata=knob(
        "Checkpoints Kept", "How many best checkpoints to keep on disk; the best model is always returned.", minimum=-1,
        maximum=MAX_COUNT, note="-1 keeps all, 0 keeps none"))
    # fmt: on

    def __post_init__(self) -> None:
        _validate(self)


@dataclass(frozen=True)
class ExecutionConfig:
    """How and where to run: mapped onto Lightning's Trainer and torch's DataLoader in one place."""

    # fmt: off
    accelerator: Accelerator = field(default=Accelerator.AUTO, metadata=knob(
        "Accelerator",
        "Where to train and infer: auto picks a GPU when one is present, else the CPU; asking for cuda/gpu/mps "
        "without such a device is an error, never a silent CPU run."))
    devices: int | str = field(default="auto", metadata=knob(
        "Devices", "How many devices to use, or which GPUs by index; several train with the strategy.",
        allowed=f"'auto', an integer in 1..{MAX_DEVICES} (how many), or GPU indices such as '1,' or '0,2'", check=_devices_fit,
        from_text=_devices_from_text))
    strategy: str = field(default="auto", metadata=knob(
        "Strategy",
        "Lightning distribution strategy (auto, ddp, ddp_spawn, fsdp, ...); in the GUI use auto or ddp_spawn, "
        "ddp needs a launcher.",
        allowed="a Lightning strategy name such as auto, ddp, ddp_spawn, fsdp", advanced=True))
    num_nodes: int = field(default=1, metadata=knob(
        "Nodes", "Machines to train on (DDP across nodes needs a cluster launcher).", minimum=1, maximum=MAX_NODES,
        advanced=True))
    precision: Precision = field(default=Precision.FP32, metadata=knob(
        "Precision", "Arithmetic precision: 32 is exact; 16-mixed and bf16-mixed are faster on recent GPUs."))
    deterministic: bool = field(default=False, metadata=knob(
        "Deterministic", "Reproducible results for a given seed, at some cost in speed."))
    num_workers: int = field(default=0, metadata=knob(
        "Data Loader Workers", "Background processes feeding batches; 0 loads in the training thread (safest in the GUI).",
        minimum=0, maximum=MAX_WORKERS))
    pin_memory: bool = field(default=False, metadata=knob(
        "Pin Memory", "Page-locked host memory for faster host-to-GPU copies.", advanced=True))
    persistent_workers: bool = field(default=False, metadata=knob(
        "Persistent Workers", "Keep data-loader workers alive between epochs (needs workers > 0).", advanced=True))
    prefetch_factor: int | None = field(default=None, metadata=knob(
        "Prefetch Factor", "Batches each worker loads ahead (needs workers > 0).", unit="batches", minimum=1, maximum=MAX_WORKERS,
        none_means="PyTorch's default", advanced=True))
    logger: LoggerKind = field(default=LoggerKind.CSV, metadata=knob(
        "Logger", "Training log written next to the checkpoints (csv, tensorboard, mlflow) or none.", advanced=True))
    inference_batch_size: int | None = field(default=None, metadata=knob(
        "Inference Batch Size", "Patterns per forward pass when reconstructing.", unit="patterns", minimum=1, maximum=MAX_COUNT,
        none_means="the training batch size"))
    symmetry_views: int | None = field(default=None, metadata=knob(
        "Symmetry Views", "The network sees each pattern also rotated and reflected, as far as the probe is symmetric, "
        "and averages its patches: a sharper network object for one forward pass per view.", unit="views", minimum=1,
        maximum=8, none_means="all the probe allows (up to 8) on a GPU, 1 on a CPU", advanced=True))
    middle_trim: int = field(default=0, metadata=knob(
        "Middle Trim", "Pixels cut from each predicted patch edge before stitching (less than N/2).", unit="px", minimum=0,
        maximum=max(SUPPORTED_PATTERN_SIZES_PX) // 2 - 1, advanced=True))
    pad_eval: bool = field(default=True, metadata=knob(
        "Pad Evaluation", "Stitch patches that hang over the object-grid edge.", advanced=True))
    seed: int = field(default=0, metadata=knob(
        "Seed", "Random seed for weights, shuffling and the validation split.", minimum=0, maximum=MAX_SEED))
    enable_progress_bar: bool = field(default=True, metadata=knob(
        "Console Progress Bar", "Print progress to the terminal: Lightning's progress bar in training, refinement's "
        "epochs in infer.", cli="--progress-bar", advanced=True))
    # fmt: on

    def __post_init__(self) -> None:
        _validate(self)
        if self.persistent_workers and self.num_workers == 0:
            raise ConfigError(
                "ExecutionConfig", "persistent_workers", self.persistent_workers,
                "False when num_workers is 0 (persistent workers need worker processes)",
            )  # fmt: skip
        if self.prefetch_factor is not None and self.num_workers == 0:
            raise ConfigError(
                "ExecutionConfig", "prefetch_factor", self.prefetch_factor,
                "None when num_workers is 0 (prefetching needs worker processes)",
            )  # fmt: skip


@dataclass(frozen=True)
class RefinementConfig:
    """Joint refinement after the network (``refinement.py``); the defaults need no tuning per scan.

    ``epochs`` 0 turns refinement off (network only). ``batch_size`` is the first epochs'
    mini-batch; batches grow towards the whole scan as refinement converges.
    """

    # fmt: off
    epochs: int = field(default=30, metadata=knob(
        "Epochs",
        "Full-resolution refinement epochs after the network (and the half-resolution ones): the object is refined "
        "against the likelihood of all patterns jointly (each epoch visits every pattern once); 0 = network only. "
        "With the half-resolution epochs, 30 reach LSQML's quality at N = 64 and 0.99-1.05x of it at N = 128 "
        "(phase SSIM; docs/quality.md).",
        unit="epochs", minimum=0, maximum=MAX_COUNT, cli="--refine-epochs"))
    half_resolution_epochs: int = field(default=40, metadata=knob(
        "Half-Resolution Epochs",
        "Epochs before the full-resolution ones on the detector's central half (the object at half resolution, a "
        "quarter of the cost per epoch): they settle the object's large features, which full-resolution epochs "
        "are slowest to fix. 0 = off (also when Epochs is 0).",
        unit="epochs", minimum=0, maximum=MAX_COUNT, cli="--refine-half-resolution-epochs"))
    batch_size: int = field(default=32, metadata=knob(
        "Batch Size",
        "Patterns per refinement update in the first epochs; the mini-batch grows towards the whole scan as "
        "refinement converges.",
        unit="patterns", minimum=1, maximum=MAX_COUNT, cli="--refine-batch-size"))
    # off by default: at 10⁻³ it stopped up to 14 epochs early where refinement had converged (natural images, Siemens
    # stars) and ran 11-31 longer where it had not (circuits, lines, grains), so circuits reached LSQML at N = 64 and
    # 0.996x at N = 128 (was 0.973x), but those took up to ~60 % more time (docs/physics.md, "When to stop")
    stop_tolerance: float = field(default=0.0, metadata=knob(
        "Stop Tolerance",
        "Stop the full-resolution epochs once 5 of them lower the Poisson NLL by less than this fraction of what is "
        "left above a perfect fit (checked every 5 epochs from the 10th); Epochs is then the most that run. 0 = "
        "always run Epochs; 1e-3 was measured to stop where the object had converged.",
        minimum=0.0, maximum=1.0, cli="--refine-stop-tolerance", in_panel=False))
    refine_probe: bool = field(default=False, metadata=knob(
        "Refine Probe",
        "Refine the probe together with the object: on when the probe is only a guess (e.g. real data); off keeps "
        "the scan's probe, which is right for simulated data.",
        cli="--refine-probe"))
    probe_start_epoch: int = field(default=2, metadata=knob(
        "Probe Start Epoch", "Epoch from which the probe follows the object (once the object has settled).", unit="epochs",
        minimum=0, maximum=MAX_COUNT, cli=False, in_panel=False))
    noise_model: NoiseModel = field(default=NoiseModel.POISSON, metadata=knob(
        "Noise Model",
        "Likelihood the refinement maximises: poisson for photon counts (recommended), gaussian (amplitude) for "
        "data that are not counts.",
        cli="--refine-noise-model"))
    # auto by default: measured (benchmarks/results/refinement-cpu.md), starting from the network's object
    # ends level with or above a flat start on all six benchmark scans, also on kinds the shipped model
    # never saw (circuits, grains), once stitching puts the network's object at the fill's global phase
    start: RefinementStart = field(default=RefinementStart.AUTO, metadata=knob(
        "Start",
        "Where refinement starts: auto = the network's object or a flat one, whichever fits the data better at the "
        "start (with a model other than the shipped one in use, the shipped model's object competes too); network "
        "forces the network's (the model in use's); flat skips the network (its object cannot change the result).",
        cli="--refine-start"))
    # 0.8 (was 0.5): equal or better on all 16 measured cells (five kinds at 10⁵, two at 10⁴, lines at 10⁶
    # photons; network and flat starts; +0.001 to +0.013 phase SSIM), 2026-12-06
    momentum_gain: float = field(default=0.8, metadata=knob(
        "Momentum Gain", "Momentum of the refinement updates.", minimum=0.0, maximum=1.0, cli=False, in_panel=False))
    preconditioner_damping: float = field(default=0.1, metadata=knob(
        "Preconditioner Damping", "Damping of the illumination preconditioner.", minimum=0.0, maximum=10.0,
        exclusive_minimum=True, cli=False, in_panel=False))
    seed: int = field(default=0, metadata=knob(
        "Seed", "Random seed of the refinement's mini-batch order.", minimum=0, maximum=MAX_SEED, cli=False, in_panel=False))
    # fmt: on

    def __post_init__(self) -> None:
        _validate(self)

    def half_resolution_epochs_for(self, size_px: int) -> int:
        """The half-resolution epochs refinement runs first for N = ``size_px`` patterns: none when refinement is
        off, N is not a multiple of 4 or below ``HALF_RESOLUTION_MIN_PX``."""
        if self.epochs == 0 or size_px % 4 or size_px < HALF_RESOLUTION_MIN_PX:
            return 0
        return self.half_resolution_epochs

    def total_epochs_for(self, size_px: int) -> int:
        """Every refinement epoch for N = ``size_px`` patterns, half-resolution ones included (a progress goal)."""
        return self.half_resolution_epochs_for(size_px) + self.epochs


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs; what the CLI and the plugin both build."""

    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    refinement: RefinementConfig = field(default_factory=RefinementConfig)


CONFIG_CLASSES: tuple[type, ...] = (ModelConfig, TrainingConfig, ExecutionConfig, RefinementConfig)
SECTION_OF: dict[type, Section] = {
    ModelConfig: Section.MODEL,
    TrainingConfig: Section.TRAINING,
    ExecutionConfig: Section.EXECUTION,
    RefinementConfig: Section.REFINEMENT,
}
SECTION_CONFIG: dict[Section, type] = {section: config for config, section in SECTION_OF.items()}
RUN_FIELD_OF: dict[type, str] = {
    ModelConfig: "model",
    TrainingConfig: "training",
    ExecutionConfig: "execution",
    RefinementConfig: "refinement",
}


def all_knobs() -> tuple[Knob, ...]:
    """Every knob of a RunConfig, section by section (Model, Training, Execution, Refinement)."""
    return tuple(item for config_class in CONFIG_CLASSES for item in knobs(config_class))


def preset_configs(preset: Preset | str, N: int = 64) -> tuple[ModelConfig, TrainingConfig]:
    """Network width and epochs suited to the hardware: narrow and short on a CPU."""
    try:
        preset = Preset(str(preset))
    except ValueError:
        raise ConfigError("Preset", "preset", preset, "one of: " + ", ".join(p.value for p in Preset)) from None
    if preset is Preset.CPU:
        return ModelConfig(N=N, n_filters_scale=1, gridsize=1), TrainingConfig(epochs=40, batch_size=16)
    return ModelConfig(N=N, n_filters_scale=4, gridsize=1), TrainingConfig(epochs=200, batch_size=32)


def replace(config: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` that keeps validation (frozen dataclasses re-run __post_init__)."""
    return dataclasses.replace(config, **changes)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain, JSON-safe dictionary of a config (enums become their string values)."""
    return {key: (value.value if isinstance(value, StrEnum) else value) for key, value in dataclasses.asdict(config).items()}


def model_config_from_dict(values: dict[str, Any]) -> ModelConfig:
    """Rebuild a ModelConfig from a stored dictionary; unknown keys are refused by name."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"model config has unknown fields {unknown}; the file was written by a newer version")
    return ModelConfig(**values)
