"""The plugin's ptychodus settings and the one mapping from them to the engine's configs.

Settings live in ptychodus's settings registry, so they are saved to and read from its ``.ini`` files
and edited with its widgets. Every engine setting is generated from the config field it feeds (label,
help, unit, bounds and choices: :func:`ptychodus_pinn.engine.config.knobs`), so a field cannot be shown
in the panel and forgotten by the mapping; only the plugin's own settings are written here.

Group names start with ``PINNTorchPlugin`` (never colliding with the in-tree ``PtychoPINN*`` and
``PtychoPINNTorch*`` groups); groups and keys are those of earlier versions, so their ``.ini`` files
still load. ptychodus parameters cannot hold ``None``: an optional number is stored as ``0`` and an
optional choice as ``auto``; the tool tips say what that means.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ptychodus.api.observer import Observable, Observer
from ptychodus.api.parameters import Parameter
from ptychodus.api.settings import SettingsRegistry

from ptychodus_pinn.engine.config import (
    MAX_DEVICES,
    Accelerator,
    ConfigError,
    ExecutionConfig,
    Knob,
    LoggerKind,
    ModelConfig,
    RefinementConfig,
    RunConfig,
    TrainingConfig,
    TrainingMode,
    all_knobs,
    knobs,
)

GROUP_PREFIX = "PINNTorchPlugin"

logger = logging.getLogger(__name__)


class Section(StrEnum):
    """Settings groups; also the group boxes of the panel."""

    EXECUTION = "Execution"
    REFINEMENT = "Refinement"
    TRAINING = "Training"
    MODEL = "Model"
    ADVANCED = "Advanced"  # every config's less common settings (Knob.advanced)
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
    """One setting: where it lives in ptychodus and, through its knob, which config field it feeds."""

    section: Section
    key: str
    label: str
    kind: Kind
    default: Any
    tool_tip: str
    knob: Knob | None = None  # None for plugin-only settings
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    @property
    def config(self) -> str | None:
        """The RunConfig attribute this setting feeds (model, training, execution, refinement), if any."""
        return None if self.knob is None else self.knob.run_field

    @property
    def config_attribute(self) -> str:
        assert self.knob is not None, f"{self.key} is a plugin-only setting"
        return self.knob.name

    @property
    def optional(self) -> bool:
        return self.knob is not None and self.knob.optional


ACCELERATOR_CHOICES: tuple[str, ...] = tuple(accelerator.value for accelerator in Accelerator)
# Network Width 0 (the default): the width of the shipped model for the run's device and N, chosen per run
# (engine.persistence.device_model_width: 4 on a GPU at N = 64, else 1, the width every N ships in), so
# the one-click entry and "Train On The Scan First" use the same network and training warm-starts from it.
AUTO_WIDTH = 0
# panel defaults that differ from the engine's, and why (said in the tool tip)
PANEL_DEFAULTS: Mapping[str, tuple[Any, str]] = {
    "n_filters_scale": (
        AUTO_WIDTH,
        "0 = the shipped pretrained model's width for the device and pattern size: 4 on a GPU at N = 64, else 1 (a loaded "
        "model's own width when training starts from it).",
    ),
    "logger": (LoggerKind.NONE, "The GUI writes no training log unless asked to."),
    "enable_progress_bar": (False, "Off in the GUI: the terminal ptychodus was started from."),
}
# the training batch size sits with the execution settings: it is what a device's memory limits
_SECTION_OF_KEY = {"batch_size": Section.EXECUTION}
# the refinement group's order: what changes most first
_REFINEMENT_ORDER = (
    "refine_epochs",
    "refine_half_resolution_epochs",
    "refine_probe",
    "refine_batch_size",
    "refine_start",
    "refine_noise_model",
)


def _stored(kind: Kind, value: Any) -> Any:
    """A config value as a ptychodus parameter holds it."""
    if value is None:
        return AUTO if kind is Kind.CHOICE else 0.0 if kind is Kind.REAL else NONE_INT
    if isinstance(value, StrEnum):
        return value.value
    return str(value) if kind is Kind.TEXT else value


def _engine_field(knob: Knob) -> Field:
    key = f"refine_{knob.name}" if knob.run_field == "refinement" and not knob.name.startswith("refine_") else knob.name
    kind = Kind.CHOICE if knob.enum else {bool: Kind.BOOL, int: Kind.INT, float: Kind.REAL}.get(knob.value_type, Kind.TEXT)
    default, note = PANEL_DEFAULTS.get(key, (knob.default, ""))
    tool_tip = " ".join(filter(None, (knob.help, note)))
    if knob.optional:
        tool_tip += f" {AUTO if kind is Kind.CHOICE else 0} = {knob.none_means}."
    unit = f" [{knob.unit}]" if knob.unit and knob.unit not in knob.label.lower() else ""
    choices = ((AUTO,) if knob.optional else ()) + tuple(str(choice) for choice in knob.choices) if kind is Kind.CHOICE else ()
    return Field(
        Section.ADVANCED if knob.advanced else _SECTION_OF_KEY.get(key, Section(knob.section.value)),
        key,
        f"{knob.label}{unit}:",
        kind,
        _stored(kind, default),
        tool_tip,
        knob,
        choices,
        minimum=0 if (knob.optional and kind in (Kind.INT, Kind.REAL)) or key == "n_filters_scale" else knob.minimum,
        maximum=knob.maximum,
    )


# fmt: off
PLUGIN_FIELDS: tuple[Field, ...] = (
    Field(Section.PLUGIN, "train_first", "Train On The Scan First:", Kind.BOOL, False,
          "One-click Reconstruct: train the network on the selected scan (self-supervised, the Training settings) before "
          "the network and refinement stages. Off: the loaded model, else the shipped pretrained one, goes straight to the "
          "network and refinement stages (seconds, not minutes)."),
    Field(Section.PLUGIN, "preview_updates", "Preview Updates:", Kind.BOOL, True,
          "Show the object while training and refining, every Preview Interval. Off: only the network's object and the "
          "result. Without the GUI (ptychodus -b, where each product becomes a file) there are never previews."),
    Field(Section.PLUGIN, "preview_interval_s", "Preview Interval [s]:", Kind.REAL, 15.0,
          "Seconds between object previews while training or refining (each preview costs ptychodus's GUI ~0.65 s; 15 s "
          "keeps the GUI busy well under 10 % of a run). The network's object and a first refinement preview (after ~2 s) "
          "are always shown.", minimum=1.0),
    Field(Section.PLUGIN, "training_mode", "Training Mode:", Kind.CHOICE, TrainingMode.DISTIL.value,
          "What Train On The Scan First and Train (train+infer) learn from: pinn, the counts alone; distil, the counts "
          "and each training scan's refined object (each scan is refined first, a few seconds per scan, and again "
          "every Target Refresh epochs). The supervised entry always trains against the files' objects.",
          choices=(TrainingMode.PINN.value, TrainingMode.DISTIL.value)),
    Field(Section.PLUGIN, "warm_start", "Warm Start:", Kind.BOOL, True,
          "Train On The Scan First and Train start from the loaded model (else the shipped pretrained one) when its "
          "pattern size and architecture fit the settings; off: from scratch."),
    Field(Section.PLUGIN, "fill_unilluminated", "Fill Unilluminated:", Kind.CHOICE, "input object",
          "What to show where no probe position reached: the input object guess or zero.", choices=("input object", "zero")),
)
# fmt: on


def _panel_order(field: Field) -> tuple[int, int]:
    return list(Section).index(field.section), (_REFINEMENT_ORDER.index(field.key) if field.key in _REFINEMENT_ORDER else 0)


_CONFIG_CLASSES = (ExecutionConfig, RefinementConfig, TrainingConfig, ModelConfig)
FIELDS: tuple[Field, ...] = tuple(
    sorted(
        [_engine_field(knob) for config in _CONFIG_CLASSES for knob in knobs(config) if knob.in_panel] + list(PLUGIN_FIELDS),
        key=_panel_order,
    )
)
FIELDS_BY_KEY: Mapping[str, Field] = {field.key: field for field in FIELDS}
_BY_CONFIG_FIELD = {(field.knob.config, field.knob.name): field for field in FIELDS if field.knob is not None}
# Config fields that are not settings, and why (the engine's own words).
NOT_SETTINGS: Mapping[str, str] = {f"{knob.run_field}.{knob.name}": knob.help for knob in all_knobs() if not knob.in_panel}


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
                accelerator_from_choice(text)
            elif text not in field.choices:
                raise ValueError(f"expected one of {', '.join(field.choices)}")
            return text
        case _:
            if not text:
                raise ValueError("expected a value (the value is empty)")
            _to_config_value(field, text, check=True)  # e.g. Devices: 'auto', a number or GPU indices
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


def accelerator_from_choice(choice: str) -> tuple[str, int | None]:
    """Split a combo entry such as ``cuda:1 (NVIDIA H200)`` into (accelerator, device index); ValueError if it is none."""
    head = choice.strip().split(" ", 1)[0].lower()
    kind, colon, index = head.partition(":")
    if kind not in ACCELERATOR_CHOICES:
        raise ValueError(f"expected one of {', '.join(ACCELERATOR_CHOICES)} (or a GPU by index, e.g. cuda:0)")
    if not colon:
        return kind, None
    if not index.isdigit() or kind not in ("cuda", "gpu", "mps") or int(index) >= MAX_DEVICES:
        raise ValueError(f"{choice.strip()!r} is not a device: an index is given only for a GPU and counts from 0 (e.g. cuda:0)")
    return kind, int(index)


# ------------------------------------------------------------------------------------------ mapping


def _to_config_value(field: Field, value: Any, *, check: bool = False) -> Any:
    assert field.knob is not None
    if field.kind is Kind.TEXT:
        value = field.knob.from_text(str(value).strip())
    if field.optional and value == (AUTO if field.kind is Kind.CHOICE else NONE_INT):
        return None
    return field.knob.check(value) if check else value


def settings_to_run_config(
    values: Mapping[str, Any] | PluginSettings,
    *,
    N: int,
    mode: TrainingMode | str = TrainingMode.DISTIL,
    device_width: bool = True,
) -> RunConfig:
    """The one place that turns plugin settings into engine configs; ``ValueError`` names the bad setting.

    ``device_width=False`` (the panel's validity check, on the GUI thread): Network Width 0 stands as 1 instead of
    asking torch for the device (:func:`auto_width`), which would import torch there."""
    if isinstance(values, PluginSettings):
        values = values.values()
    try:
        accelerator, device_index = accelerator_from_choice(str(values["accelerator"]))
    except ValueError as error:
        raise ValueError(f"accelerator={values['accelerator']!r} is not allowed: {error}") from None
    kwargs: dict[str, dict[str, Any]] = {"model": {"N": N, "mode": mode}, "training": {}, "execution": {}, "refinement": {}}
    for field in FIELDS:
        if field.knob is not None:
            kwargs[field.knob.run_field][field.knob.name] = _to_config_value(field, values[field.key])
    kwargs["execution"]["accelerator"] = accelerator
    if device_index is not None:  # one GPU picked by index: Lightning's "i," (a bare number is a count)
        kwargs["execution"]["devices"] = f"{device_index},"
    if kwargs["model"]["n_filters_scale"] == AUTO_WIDTH:
        kwargs["model"]["n_filters_scale"] = auto_width(N, accelerator) if device_width else 1
    try:
        return RunConfig(
            model=ModelConfig(**kwargs["model"]),
            training=TrainingConfig(**kwargs["training"]),
            execution=ExecutionConfig(**kwargs["execution"]),
            refinement=RefinementConfig(**kwargs["refinement"]),
        )
    except ConfigError as error:  # spelled as the panel shows it
        bad = _BY_CONFIG_FIELD.get((error.config, error.field))
        raise ValueError(error.message_for(f"{bad.label.rstrip(':')} ({bad.key})") if bad else str(error)) from error


def auto_width(size_px: int, accelerator: str) -> int:
    """What Network Width 0 means for a run on ``accelerator``: ``engine.persistence.device_model_width``. An
    accelerator torch does not see counts as the CPU here; the run itself then says what is missing."""
    from ptychodus_pinn.engine.device import AcceleratorUnavailableError, resolve_accelerator
    from ptychodus_pinn.engine.persistence import device_model_width

    try:
        device_kind: str = resolve_accelerator(accelerator)
    except AcceleratorUnavailableError:
        device_kind = "cpu"
    return device_model_width(size_px, device_kind)


def width_is_auto(values: Mapping[str, Any]) -> bool:
    """Whether the settings leave the network width to the run (Network Width 0)."""
    return int(values["n_filters_scale"]) == AUTO_WIDTH


def architecture_changes(stored: ModelConfig, wanted: ModelConfig) -> list[str]:
    """The settings to change so that ``wanted`` (from the settings) fits ``stored`` (a model's), in words."""
    from ptychodus_pinn.engine.model import warm_start_mismatches

    changes = []
    for name, (have, want) in warm_start_mismatches(stored, wanted).items():
        have, want = getattr(have, "value", have), getattr(want, "value", want)
        field = FIELDS_BY_KEY.get(name)
        if field is None:  # N: taken from the scan
            changes.append(f"{name}: the model has {have}, the scan {want}")
        else:
            changes.append(f"{field.label.rstrip(':')} ({name}) to {have}")
    return changes


def run_config_to_settings(config: RunConfig, settings: PluginSettings) -> None:
    """Write a RunConfig into the settings (inverse of :func:`settings_to_run_config`)."""
    for field in FIELDS:
        if field.knob is not None:
            settings[field.key].set_value(_stored(field.kind, getattr(getattr(config, field.knob.run_field), field.knob.name)))
