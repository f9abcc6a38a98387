"""The plugin's ptychodus settings and the one mapping from them to the engine's configs.

Settings live in ptychodus's own settings registry, so they are saved to and read from ptychodus's
``.ini`` files and edited with ptychodus's own widgets. Group names start with ``PINNTorchPlugin``
so they never collide with the in-tree ``PtychoPINN*``/``PtychoPINNTorch*`` groups.

Every field is declared once in :data:`FIELDS`; :func:`settings_to_run_config` and
:func:`run_config_to_settings` are driven by that table, so a field cannot be shown in the panel
and forgotten by the mapping (the round-trip test walks the same table). Optional engine values
(``None``) are stored as ``0`` / ``auto`` because ptychodus parameters cannot hold ``None``; the
tool tips say so.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ptychodus.api.observer import Observable, Observer
from ptychodus.api.parameters import Parameter
from ptychodus.api.settings import SettingsRegistry

from ptychodus_pinn.engine.config import (
    MAX_COUNT,
    MAX_DEVICES,
    MAX_NEIGHBORS,
    MAX_NODES,
    MAX_SEED,
    MAX_WORKERS,
    SUPPORTED_PATTERN_SIZES_PX,
    Accelerator,
    AmplitudeActivation,
    CheckpointMode,
    ExecutionConfig,
    LoggerKind,
    LossKind,
    ModelConfig,
    NoiseModel,
    Precision,
    RefinementConfig,
    RefinementStart,
    RunConfig,
    Scheduler,
    TrainingConfig,
    TrainingMode,
)

GROUP_PREFIX = "PINNTorchPlugin"

logger = logging.getLogger(__name__)


class Section(StrEnum):
    """Settings groups; also the group boxes of the panel."""

    EXECUTION = "Execution"
    REFINEMENT = "Refinement"
    TRAINING = "Training"
    MODEL = "Model"
    ADVANCED = "Advanced"
    PLUGIN = "Plugin"  # adapter behaviour, not part of RunConfig

    @property
    def group_name(self) -> str:
        return f"{GROUP_PREFIX}{self.value}"


class Kind(StrEnum):
    BOOL = "bool"
    INT = "int"
    REAL = "real"
    CHOICE = "choice"
    TEXT = "text"


# How an optional engine value is spelled in a ptychodus parameter.
NONE_INT = 0
AUTO = "auto"


@dataclass(frozen=True)
class Field:
    """One setting: where it lives in ptychodus and which config field it feeds."""

    section: Section
    key: str
    label: str
    kind: Kind
    default: Any
    tool_tip: str
    config: str | None = None  # "model" | "training" | "execution" | "refinement"; None for plugin-only settings
    attribute: str | None = None  # config attribute (defaults to ``key``)
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    optional: bool = False  # engine accepts None, stored as NONE_INT / AUTO

    @property
    def config_attribute(self) -> str:
        return self.attribute or self.key


def _values(enum: type[StrEnum]) -> tuple[str, ...]:
    return tuple(member.value for member in enum)


_M, _T, _E, _R = ModelConfig(), TrainingConfig(), ExecutionConfig(), RefinementConfig()

# The architecture of the shipped pretrained model (resources/pretrained-n64.pinn.pt, trained by
# ``ptychodus_pinn.app.demo.pretrain`` with ``DemoSettings``): the panel's defaults agree with it, so
# "Train On The Scan First" warm-starts from it with default settings (the engine's ModelConfig
# default width is 2). ``tests/plugin/test_settings.py`` checks this against the shipped file.
SHIPPED_MODEL_WIDTH = 1

ACCELERATOR_CHOICES: tuple[str, ...] = _values(Accelerator)

FIELDS: tuple[Field, ...] = (
    # Execution -----------------------------------------------------------------------------------
    Field(
        Section.EXECUTION,
        "accelerator",
        "Accelerator:",
        Kind.CHOICE,
        _E.accelerator.value,
        "Where to train and infer: auto picks a GPU when one is present, else the CPU. "
        "Asking for cuda/gpu/mps without such a device is an error, never a silent CPU run.",
        "execution",
        choices=ACCELERATOR_CHOICES,
    ),
    Field(
        Section.EXECUTION,
        "devices",
        "Devices:",
        Kind.TEXT,
        str(_E.devices),
        "How many devices to use ('auto' or a number); several GPUs train with the strategy below.",
        "execution",
    ),
    Field(
        Section.EXECUTION,
        "precision",
        "Precision:",
        Kind.CHOICE,
        _E.precision.value,
        "Arithmetic precision: 32 is exact; 16-mixed/bf16-mixed are faster on recent GPUs.",
        "execution",
        choices=_values(Precision),
    ),
    Field(
        Section.EXECUTION,
        "batch_size",
        "Batch Size:",
        Kind.INT,
        _T.batch_size,
        "Training samples per optimiser step. Larger uses more GPU memory and is faster per epoch.",
        "training",
        minimum=1,
    ),
    Field(
        Section.EXECUTION,
        "inference_batch_size",
        "Inference Batch Size:",
        Kind.INT,
        NONE_INT,
        "Patterns per forward pass when reconstructing; 0 uses the training batch size.",
        "execution",
        minimum=0,
        optional=True,
    ),
    Field(
        Section.EXECUTION,
        "num_workers",
        "Data Loader Workers:",
        Kind.INT,
        _E.num_workers,
        "Background processes feeding batches; 0 loads in the training thread (safest in the GUI).",
        "execution",
        minimum=0,
    ),
    Field(
        Section.EXECUTION,
        "deterministic",
        "Deterministic:",
        Kind.BOOL,
        _E.deterministic,
        "Reproducible results for a given seed, at some cost in speed.",
        "execution",
    ),
    Field(
        Section.EXECUTION,
        "seed",
        "Seed:",
        Kind.INT,
        _E.seed,
        "Random seed for weights, shuffling and the validation split.",
        "execution",
        minimum=0,
    ),
    # Refinement ----------------------------------------------------------------------------------
    Field(
        Section.REFINEMENT,
        "refine_epochs",
        "Epochs:",
        Kind.INT,
        _R.epochs,
        "Refinement epochs after the network: the object is refined against the likelihood of all "
        "patterns jointly (each epoch visits every pattern once). 0 = network only (no refinement).",
        "refinement",
        attribute="epochs",
        minimum=0,
    ),
    Field(
        Section.REFINEMENT,
        "refine_probe",
        "Refine Probe:",
        Kind.BOOL,
        _R.refine_probe,
        "Refine the probe together with the object. Turn on when the probe is only a guess (e.g. real "
        "data); off keeps the product's probe, which is right for simulated data.",
        "refinement",
    ),
    Field(
        Section.REFINEMENT,
        "refine_batch_size",
        "Batch Size:",
        Kind.INT,
        _R.batch_size,
        "Patterns per refinement update in the first epochs; the mini-batch grows towards the whole "
        "scan as refinement converges.",
        "refinement",
        attribute="batch_size",
        minimum=1,
    ),
    Field(
        Section.REFINEMENT,
        "refine_start",
        "Start:",
        Kind.CHOICE,
        _R.start.value,
        "Where refinement starts: flat (default: safe on object kinds the network never saw); auto = the "
        "network's object or a flat one, whichever fits the data better at the start (faster when the network "
        "knows the object kind, but a hallucinating network can fit better and still end worse); network forces it.",
        "refinement",
        attribute="start",
        choices=_values(RefinementStart),
    ),
    Field(
        Section.REFINEMENT,
        "refine_noise_model",
        "Noise Model:",
        Kind.CHOICE,
        _R.noise_model.value,
        "Likelihood the refinement maximises: poisson for photon counts (recommended), gaussian "
        "(amplitude) for data that are not counts.",
        "refinement",
        attribute="noise_model",
        choices=_values(NoiseModel),
    ),
    # Training ------------------------------------------------------------------------------------
    Field(
        Section.TRAINING,
        "epochs",
        "Epochs:",
        Kind.INT,
        _T.epochs,
        "Training passes over the patterns (Train, and one-click Reconstruct with Train On The Scan "
        "First). Progress is reported per epoch.",
        "training",
        minimum=1,
    ),
    Field(
        Section.TRAINING,
        "learning_rate",
        "Learning Rate:",
        Kind.REAL,
        _E.learning_rate,
        "Initial Adam learning rate (0 < value <= 1).",
        "execution",
        minimum=0.0,
        maximum=1.0,
    ),
    Field(
        Section.TRAINING,
        "scheduler",
        "Scheduler:",
        Kind.CHOICE,
        _E.scheduler.value,
        "Learning-rate schedule: constant, exponential decay, cosine with warm-up, or reduce on plateau.",
        "execution",
        choices=_values(Scheduler),
    ),
    Field(
        Section.TRAINING,
        "warmup_epochs",
        "Warm-up Epochs:",
        Kind.INT,
        _E.warmup_epochs,
        "Epochs of linear learning-rate warm-up before the cosine schedule.",
        "execution",
        minimum=0,
    ),
    Field(
        Section.TRAINING,
        "validation_fraction",
        "Validation Fraction:",
        Kind.REAL,
        _T.validation_fraction,
        "Fraction of the scan area held out for validation (a spatial region, so overlapping "
        "patterns do not leak); 0 trains on everything and monitors the training loss.",
        "training",
        minimum=0.0,
        maximum=0.49,
    ),
    Field(
        Section.TRAINING,
        "early_stop_patience",
        "Early Stop Patience:",
        Kind.INT,
        NONE_INT,
        "Stop after this many epochs without improvement of the monitored loss; 0 never stops early.",
        "execution",
        minimum=0,
        optional=True,
    ),
    Field(
        Section.TRAINING,
        "checkpoint_monitor",
        "Checkpoint Monitor:",
        Kind.CHOICE,
        AUTO,
        "Loss that picks the best epoch (the model kept): auto = validation loss when there is a "
        "validation split, else training loss.",
        "execution",
        choices=(AUTO, "val_loss", "train_loss"),
        optional=True,
    ),
    Field(
        Section.TRAINING,
        "checkpoint_mode",
        "Checkpoint Mode:",
        Kind.CHOICE,
        _E.checkpoint_mode.value,
        "Whether the best checkpoint has the lowest (min) or highest (max) monitored value.",
        "execution",
        choices=_values(CheckpointMode),
    ),
    Field(
        Section.TRAINING,
        "checkpoint_save_top_k",
        "Checkpoints Kept:",
        Kind.INT,
        _E.checkpoint_save_top_k,
        "How many best checkpoints to keep on disk (-1 all, 0 none; the best model is always returned).",
        "execution",
        minimum=-1,
    ),
    # Model ---------------------------------------------------------------------------------------
    Field(
        Section.MODEL,
        "gridsize",
        "Grid Size:",
        Kind.INT,
        _M.gridsize,
        "Patterns per training sample along each axis (gridsize² neighbours share one canvas, so "
        "their overlap constrains the solution); 1 is the per-pattern mode.",
        "model",
        minimum=1,
        maximum=4,
    ),
    Field(
        Section.MODEL,
        "neighbor_count",
        "Neighbours (K):",
        Kind.INT,
        _M.neighbor_count,
        "Nearest neighbours a group is drawn from; at least gridsize² - 1.",
        "model",
        minimum=0,
    ),
    Field(
        Section.MODEL,
        "n_filters_scale",
        "Network Width:",
        Kind.INT,
        SHIPPED_MODEL_WIDTH,
        "Width multiplier of the U-Net (n_filters_scale) for training; 1 is fast on a CPU (and is the "
        "shipped pretrained model's, so training can start from it), 4 suits a GPU. Inference uses "
        "the model's own width.",
        "model",
        minimum=1,
        maximum=16,
    ),
    Field(
        Section.MODEL,
        "amp_activation",
        "Amplitude Activation:",
        Kind.CHOICE,
        _M.amp_activation.value,
        "Output activation of the amplitude head.",
        "model",
        choices=_values(AmplitudeActivation),
    ),
    Field(
        Section.MODEL,
        "loss",
        "Loss:",
        Kind.CHOICE,
        _M.loss.value,
        "Poisson negative log-likelihood of the counts (recommended) or MAE on amplitudes.",
        "model",
        choices=_values(LossKind),
    ),
    Field(
        Section.MODEL,
        "object_big",
        "Object Big:",
        Kind.BOOL,
        _M.object_big,
        "Predict the object on the group's shared canvas rather than per pattern.",
        "model",
    ),
    Field(
        Section.MODEL,
        "probe_big",
        "Probe Big:",
        Kind.BOOL,
        _M.probe_big,
        "Let the probe illuminate the whole predicted patch, not only its centre.",
        "model",
    ),
    Field(
        Section.MODEL,
        "probe_trainable",
        "Train Probe:",
        Kind.BOOL,
        _M.probe_trainable,
        "Train the probe together with the network (training only; see Refinement for refining it).",
        "model",
    ),
    Field(
        Section.MODEL,
        "intensity_scale_trainable",
        "Train Intensity Scale:",
        Kind.BOOL,
        _M.intensity_scale_trainable,
        "Train the counts scale computed from the data.",
        "model",
    ),
    # Advanced ------------------------------------------------------------------------------------
    Field(
        Section.ADVANCED,
        "strategy",
        "Strategy:",
        Kind.TEXT,
        _E.strategy,
        "Lightning distribution strategy (auto, ddp, ddp_spawn, fsdp, ...). In the GUI use auto or "
        "ddp_spawn; ddp needs a launcher.",
        "execution",
    ),
    Field(
        Section.ADVANCED,
        "num_nodes",
        "Nodes:",
        Kind.INT,
        _E.num_nodes,
        "Machines to train on (DDP across nodes needs a cluster launcher).",
        "execution",
        minimum=1,
    ),
    Field(
        Section.ADVANCED,
        "pin_memory",
        "Pin Memory:",
        Kind.BOOL,
        _E.pin_memory,
        "Page-locked host memory for faster host-to-GPU copies.",
        "execution",
    ),
    Field(
        Section.ADVANCED,
        "persistent_workers",
        "Persistent Workers:",
        Kind.BOOL,
        _E.persistent_workers,
        "Keep data-loader workers alive between epochs (needs workers > 0).",
        "execution",
    ),
    Field(
        Section.ADVANCED,
        "prefetch_factor",
        "Prefetch Factor:",
        Kind.INT,
        NONE_INT,
        "Batches each worker loads ahead; 0 = PyTorch's default (needs workers > 0 otherwise).",
        "execution",
        minimum=0,
        optional=True,
    ),
    Field(
        Section.ADVANCED,
        "gradient_clip_val",
        "Gradient Clip:",
        Kind.REAL,
        0.0,
        "Clip gradients to this norm; 0 disables clipping.",
        "execution",
        minimum=0.0,
        optional=True,
    ),
    Field(
        Section.ADVANCED,
        "accumulate_grad_batches",
        "Accumulate Batches:",
        Kind.INT,
        _E.accumulate_grad_batches,
        "Batches whose gradients are summed before one optimiser step.",
        "execution",
        minimum=1,
    ),
    Field(
        Section.ADVANCED,
        "middle_trim",
        "Middle Trim [px]:",
        Kind.INT,
        _E.middle_trim,
        "Pixels cut from each predicted patch edge before stitching.",
        "execution",
        minimum=0,
    ),
    Field(
        Section.ADVANCED,
        "pad_eval",
        "Pad Evaluation:",
        Kind.BOOL,
        _E.pad_eval,
        "Pad patches at evaluation the way they are padded in training.",
        "execution",
    ),
    Field(
        Section.ADVANCED,
        "n_groups",
        "Max Groups:",
        Kind.INT,
        NONE_INT,
        "Cap on training samples (groups) per epoch; 0 uses all.",
        "training",
        minimum=0,
        optional=True,
    ),
    Field(
        Section.ADVANCED,
        "logger",
        "Logger:",
        Kind.CHOICE,
        LoggerKind.NONE.value,
        "Training log written next to checkpoints (csv, tensorboard, mlflow) or none.",
        "execution",
        choices=_values(LoggerKind),
    ),
    Field(
        Section.ADVANCED,
        "enable_progress_bar",
        "Console Progress Bar:",
        Kind.BOOL,
        False,
        "Print Lightning's progress bar to the terminal ptychodus was started from.",
        "execution",
    ),
    # Plugin behaviour (not part of RunConfig) ----------------------------------------------------
    Field(
        Section.PLUGIN,
        "train_first",
        "Train On The Scan First:",
        Kind.BOOL,
        False,
        "One-click Reconstruct: train the network on the selected scan (self-supervised, the Training "
        "settings) before the network and refinement stages. Off: the loaded model, else the shipped "
        "pretrained one, goes straight to the network and refinement stages (seconds, not minutes).",
    ),
    Field(
        Section.PLUGIN,
        "preview_interval_s",
        "Preview Interval [s]:",
        Kind.REAL,
        15.0,
        "Seconds between object previews while training or refining (each preview costs ptychodus's "
        "GUI ~0.65 s; 15 s keeps the GUI busy well under 10 % of a run). The network's object and a "
        "first refinement preview (after ~2 s) are always shown.",
        minimum=1.0,
    ),
    Field(
        Section.PLUGIN,
        "warm_start",
        "Warm Start:",
        Kind.BOOL,
        True,
        "With Train On The Scan First: start training from the loaded model (else the shipped "
        "pretrained one) when its pattern size and architecture fit the settings.",
    ),
    Field(
        Section.PLUGIN,
        "fill_unilluminated",
        "Fill Unilluminated:",
        Kind.CHOICE,
        "input object",
        "What to show where no probe position reached: the input object guess or zero.",
        choices=("input object", "zero"),
    ),
)

# the engine's upper limits, so an out-of-range number in a settings file is clamped when it is read
# rather than refused when a run starts
_CONFIG_MAXIMA: Mapping[str, float] = {
    "batch_size": MAX_COUNT,
    "inference_batch_size": MAX_COUNT,
    "num_workers": MAX_WORKERS,
    "seed": MAX_SEED,
    "epochs": MAX_COUNT,
    "warmup_epochs": MAX_COUNT,
    "early_stop_patience": MAX_COUNT,
    "checkpoint_save_top_k": MAX_COUNT,
    "neighbor_count": MAX_NEIGHBORS,
    "num_nodes": MAX_NODES,
    "prefetch_factor": MAX_WORKERS,
    "accumulate_grad_batches": MAX_COUNT,
    "middle_trim": max(SUPPORTED_PATTERN_SIZES_PX) // 2 - 1,
    "n_groups": 1000 * MAX_COUNT,
    "refine_epochs": MAX_COUNT,
    "refine_batch_size": MAX_COUNT,
}
FIELDS = tuple(
    dataclasses.replace(field, maximum=_CONFIG_MAXIMA[field.key])
    if field.key in _CONFIG_MAXIMA and field.maximum is None
    else field
    for field in FIELDS
)
FIELDS_BY_KEY: Mapping[str, Field] = {field.key: field for field in FIELDS}
# Config attributes that are not settings, and why.
NOT_SETTINGS: Mapping[str, str] = {
    "model.N": "taken from the scan's pattern size",
    "model.mode": "fixed by the chosen reconstructor (self-supervised or supervised)",
    "refinement.probe_start_epoch": "engine default (the probe follows once the object has settled)",
    "refinement.momentum_gain": "engine default; the schedule needs no tuning per scan",
    "refinement.preconditioner_damping": "engine default; the schedule needs no tuning per scan",
    "refinement.seed": "engine default (mini-batch order only)",
}


class PluginSettings(Observable, Observer):
    """All plugin parameters, registered in ptychodus's settings registry (persisted in its .ini)."""

    def __init__(self, registry: SettingsRegistry) -> None:
        super().__init__()
        self.parameters: dict[str, Parameter[Any]] = {}
        groups = {section: registry.create_group(section.group_name) for section in Section}
        for group in groups.values():
            group.add_observer(self)
        for field in FIELDS:
            group = groups[field.section]
            match field.kind:
                case Kind.BOOL:
                    parameter: Parameter[Any] = group.create_boolean_parameter(field.key, bool(field.default))
                case Kind.INT:
                    parameter = group.create_integer_parameter(
                        field.key,
                        int(field.default),
                        minimum=None if field.minimum is None else int(field.minimum),
                        maximum=None if field.maximum is None else int(field.maximum),
                    )
                case Kind.REAL:
                    parameter = group.create_real_parameter(
                        field.key, float(field.default), minimum=field.minimum, maximum=field.maximum
                    )
                case Kind.CHOICE | Kind.TEXT:
                    parameter = group.create_string_parameter(field.key, str(field.default))
            parameter.set_value_from_string = _FileValueReader(field, parameter)  # type: ignore[method-assign,assignment]
            self.parameters[field.key] = parameter

    def __getitem__(self, key: str) -> Parameter[Any]:
        return self.parameters[key]

    def __iter__(self) -> Iterator[tuple[Field, Parameter[Any]]]:
        for field in FIELDS:
            yield field, self.parameters[field.key]

    def values(self) -> dict[str, Any]:
        """Plain snapshot, so a background run never reads parameters the user is editing."""
        return {key: parameter.get_value() for key, parameter in self.parameters.items()}

    def _update(self, observable: Observable) -> None:
        self.notify_observers()


class _FileValueReader:
    """Reads one parameter from ptychodus's ``.ini`` file without ever raising.

    ptychodus calls ``set_value_from_string`` for every key of a settings file while ``ModelCore``
    starts, and its own parameters raise on text they cannot parse, which aborts start-up. For our
    groups, a value that cannot be parsed or is not one of the choices is refused (the current value
    is kept) and an out-of-range number is clamped; both with a warning naming the key and the fix.
    """

    def __init__(self, field: Field, parameter: Parameter[Any]) -> None:
        self._field = field
        self._parameter = parameter

    def __call__(self, text: str) -> None:
        field = self._field
        where = f"settings file [{field.section.group_name}] {field.key} = {text!r}"
        try:
            value = parse_setting(field, text)
        except ValueError as error:
            logger.warning("%s refused (%s); keeping %r", where, error, self._parameter.get_value())
            return
        clamped = clamp_setting(field, value)
        if clamped != value:
            logger.warning("%s is outside [%s, %s]; using %r", where, field.minimum, field.maximum, clamped)
        self._parameter.set_value(clamped)


def parse_setting(field: Field, text: str) -> Any:
    """A setting's value from its text in a settings file; ``ValueError`` says what is expected."""
    text = str(text).strip()
    match field.kind:
        case Kind.BOOL:
            lowered = text.lower()
            if lowered in ("1", "true", "t", "yes", "y", "on"):
                return True
            if lowered in ("0", "false", "f", "no", "n", "off"):
                return False
            # an empty value is not "false": it would silently turn a setting that is on off
            raise ValueError("expected true or false" + (" (the value is empty)" if not lowered else ""))
        case Kind.INT:
            try:
                return int(text)
            except ValueError:
                raise ValueError("expected a whole number") from None
        case Kind.REAL:
            try:
                value = float(text)
            except ValueError:
                raise ValueError("expected a number") from None
            if not math.isfinite(value):
                raise ValueError("expected a finite number")
            return value
        case Kind.CHOICE:
            if field.key == "accelerator":
                check_accelerator_choice(text)
                return text
            if text not in field.choices:
                raise ValueError(f"expected one of {', '.join(field.choices)}")
            return text
        case _:
            if not text:
                raise ValueError("expected a value (the value is empty)")
            _to_config_value(field, text)  # e.g. Devices: 'auto' or a number
            return text


def clamp_setting(field: Field, value: Any) -> Any:
    """A number limited to the field's range (other kinds unchanged)."""
    if field.kind not in (Kind.INT, Kind.REAL):
        return value
    if field.minimum is not None and value < field.minimum:
        value = field.minimum
    if field.maximum is not None and value > field.maximum:
        value = field.maximum
    return int(value) if field.kind is Kind.INT else float(value)


# ------------------------------------------------------------------------------------------ mapping


def _to_config_value(field: Field, value: Any) -> Any:
    if field.key == "devices":
        text = str(value).strip().lower()
        if text == AUTO:
            return AUTO
        try:
            count = int(text)
        except ValueError:
            count = 0
        if not 1 <= count <= MAX_DEVICES:
            raise ValueError(f"Devices={value!r} is not allowed; use 'auto' or a number in 1..{MAX_DEVICES} such as 1 or 2")
        return count
    if field.key == "accelerator":
        return accelerator_from_choice(str(value))[0]
    if field.optional:
        if field.kind is Kind.CHOICE:
            return None if value == AUTO else value
        return None if value == NONE_INT else value
    return value


def _from_config_value(field: Field, value: Any) -> Any:
    if isinstance(value, StrEnum):
        value = value.value
    if field.optional and value is None:
        return AUTO if field.kind is Kind.CHOICE else (0.0 if field.kind is Kind.REAL else NONE_INT)
    if field.kind is Kind.TEXT:
        return str(value)
    return value


def check_accelerator_choice(text: str) -> None:
    """``ValueError`` unless ``text`` is an accelerator, optionally a GPU with a device index >= 0 (``cuda:1``)."""
    kind, index = accelerator_from_choice(text)
    if kind not in ACCELERATOR_CHOICES:
        raise ValueError(f"expected one of {', '.join(ACCELERATOR_CHOICES)} (or a GPU by index, e.g. cuda:0)")
    if index is not None and (index < 0 or kind not in ("cuda", "gpu", "mps") or index >= MAX_DEVICES):
        raise ValueError(f"{text.strip()!r} is not a device: an index is given only for a GPU and counts from 0 (e.g. cuda:0)")


def accelerator_from_choice(choice: str) -> tuple[str, int | None]:
    """Split a combo entry such as ``cuda:1 (NVIDIA H200)`` into (accelerator, device index)."""
    head = choice.strip().split(" ", 1)[0].lower()
    if ":" in head:
        kind, _, index = head.partition(":")
        try:
            return kind, int(index)
        except ValueError:
            return head, None
    return head, None


def settings_to_run_config(
    values: Mapping[str, Any] | PluginSettings,
    *,
    N: int,
    mode: TrainingMode | str = TrainingMode.PINN,
) -> RunConfig:
    """The one place that turns plugin settings into engine configs; ``ValueError`` names the bad field."""
    if isinstance(values, PluginSettings):
        values = values.values()
    try:
        check_accelerator_choice(str(values["accelerator"]))
    except ValueError as error:
        raise ValueError(f"accelerator={values['accelerator']!r} is not allowed: {error}") from None
    kwargs: dict[str, dict[str, Any]] = {
        "model": {"N": N, "mode": mode},
        "training": {},
        "execution": {},
        "refinement": {},
    }
    for field in FIELDS:
        if field.config is None:
            continue
        kwargs[field.config][field.config_attribute] = _to_config_value(field, values[field.key])
    _, device_index = accelerator_from_choice(str(values["accelerator"]))
    if device_index is not None:
        # one GPU picked by index: Lightning's device-index syntax "i," (a bare int would be a count)
        kwargs["execution"]["devices"] = f"{device_index},"
    model = ModelConfig(**kwargs["model"])
    training = TrainingConfig(**kwargs["training"])
    try:
        execution = ExecutionConfig(**kwargs["execution"])
    except ValueError as error:
        if device_index is None or "devices" not in str(error):
            raise
        raise ValueError(
            f"Accelerator {values['accelerator']!r} selects one device by index, which this engine "
            "version does not accept; choose the plain accelerator and set Devices instead"
        ) from error
    refinement = RefinementConfig(**kwargs["refinement"])
    return RunConfig(model=model, training=training, execution=execution, refinement=refinement)


def run_config_to_settings(config: RunConfig, settings: PluginSettings) -> None:
    """Write a RunConfig into the settings (inverse of :func:`settings_to_run_config`)."""
    sections = {
        "model": config.model,
        "training": config.training,
        "execution": config.execution,
        "refinement": config.refinement,
    }
    for field in FIELDS:
        if field.config is None:
            continue
        value = _from_config_value(field, getattr(sections[field.config], field.config_attribute))
        settings[field.key].set_value(value)


def plugin_option(values: Mapping[str, Any], key: str) -> Any:
    """A plugin-only setting (not part of RunConfig)."""
    field = FIELDS_BY_KEY[key]
    if field.config is not None:
        raise KeyError(f"{key} is a RunConfig field; use settings_to_run_config")
    return values[key]


def config_fields() -> dict[str, tuple[str, ...]]:
    """Every RunConfig attribute by section, for the round-trip test."""
    return {
        "model": tuple(f.name for f in dataclasses.fields(ModelConfig)),
        "training": tuple(f.name for f in dataclasses.fields(TrainingConfig)),
        "execution": tuple(f.name for f in dataclasses.fields(ExecutionConfig)),
        "refinement": tuple(f.name for f in dataclasses.fields(RefinementConfig)),
    }


def describe_error(error: Exception) -> str:
    """A one-line message for the log panel."""
    return f"PtychoPINN (PyTorch) settings: {error}"


SettingsFactory = Callable[[SettingsRegistry], PluginSettings]
