"""One place for every knob: frozen dataclasses validated on construction.

An invalid value raises ``ValueError`` naming the field, the value and what is allowed, so the
CLI, the ptychodus settings panel and the Python API all report bad input the same way.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

SUPPORTED_PATTERN_SIZES_PX: tuple[int, ...] = (32, 64, 128, 256)
# upper limits: far beyond any real run, low enough that a typo (an extra zero, 1e29) is refused up front
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
    PINN = "pinn"
    SUPERVISED = "supervised"


class Preset(StrEnum):
    CPU = "cpu"
    GPU = "gpu"


E = TypeVar("E", bound=StrEnum)


def _choice(owner: str, name: str, value: Any, enum: type[E]) -> E:
    try:
        return enum(str(value))
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise ValueError(f"{owner}.{name}={value!r} is not allowed; choose one of: {allowed}") from None


def _check(condition: bool, owner: str, name: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ValueError(f"{owner}.{name}={value!r} is not allowed; it must be {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _coerce_enums(instance: Any, enums: dict[str, type[StrEnum]]) -> None:
    owner = type(instance).__name__
    for name, enum in enums.items():
        object.__setattr__(instance, name, _choice(owner, name, getattr(instance, name), enum))


@dataclass(frozen=True)
class ModelConfig:
    """What the network is; stored in every model file so it can rebuild itself."""

    N: int = 64
    gridsize: int = 1
    neighbor_count: int = 6
    n_filters_scale: int = 2
    amp_activation: AmplitudeActivation = AmplitudeActivation.SIGMOID
    object_big: bool = True
    probe_big: bool = True
    loss: LossKind = LossKind.POISSON
    mode: TrainingMode = TrainingMode.PINN
    intensity_scale_trainable: bool = False
    probe_trainable: bool = False

    def __post_init__(self) -> None:
        _coerce_enums(
            self,
            {"amp_activation": AmplitudeActivation, "loss": LossKind, "mode": TrainingMode},
        )
        owner = "ModelConfig"
        _check(
            self.N in SUPPORTED_PATTERN_SIZES_PX,
            owner,
            "N",
            self.N,
            f"one of {SUPPORTED_PATTERN_SIZES_PX} (crop or bin the patterns to fit)",
        )
        _check(_is_int(self.gridsize) and 1 <= self.gridsize <= 4, owner, "gridsize", self.gridsize, "1..4")
        _check(
            _is_int(self.neighbor_count) and self.gridsize**2 - 1 <= self.neighbor_count <= MAX_NEIGHBORS,
            owner,
            "neighbor_count",
            self.neighbor_count,
            f"an integer in {self.gridsize**2 - 1}..{MAX_NEIGHBORS} (at least gridsize**2 - 1)",
        )
        _check(
            _is_int(self.n_filters_scale) and 1 <= self.n_filters_scale <= 16,
            owner,
            "n_filters_scale",
            self.n_filters_scale,
            "an integer in 1..16",
        )
        for flag in ("object_big", "probe_big", "intensity_scale_trainable", "probe_trainable"):
            _check(isinstance(getattr(self, flag), bool), owner, flag, getattr(self, flag), "True or False")

    @property
    def channels(self) -> int:
        """Patterns per training sample (C = gridsize²)."""
        return self.gridsize**2


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 60
    batch_size: int = 16
    validation_fraction: float = 0.1
    n_groups: int | None = None

    def __post_init__(self) -> None:
        owner = "TrainingConfig"
        _check(
            _is_int(self.epochs) and 1 <= self.epochs <= MAX_COUNT, owner, "epochs", self.epochs, f"an integer in 1..{MAX_COUNT}"
        )
        _check(
            _is_int(self.batch_size) and 1 <= self.batch_size <= MAX_COUNT,
            owner,
            "batch_size",
            self.batch_size,
            f"an integer in 1..{MAX_COUNT}",
        )
        _check(
            _is_real(self.validation_fraction) and 0.0 <= self.validation_fraction < 0.5,
            owner,
            "validation_fraction",
            self.validation_fraction,
            "a number in [0, 0.5)",
        )
        _check(
            self.n_groups is None or (_is_int(self.n_groups) and 1 <= self.n_groups <= 1000 * MAX_COUNT),
            owner,
            "n_groups",
            self.n_groups,
            f"None or an integer in 1..{1000 * MAX_COUNT}",
        )


@dataclass(frozen=True)
class ExecutionConfig:
    """How and where to run: mapped onto Lightning's Trainer and torch's DataLoader in one place."""

    accelerator: Accelerator = Accelerator.AUTO
    devices: int | str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: Precision = Precision.FP32
    deterministic: bool = False
    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = False
    prefetch_factor: int | None = None
    learning_rate: float = 2e-3
    scheduler: Scheduler = Scheduler.COSINE
    warmup_epochs: int = 2
    gradient_clip_val: float | None = None
    accumulate_grad_batches: int = 1
    checkpoint_save_top_k: int = 1
    checkpoint_monitor: str | None = None
    checkpoint_mode: CheckpointMode = CheckpointMode.MIN
    early_stop_patience: int | None = None
    logger: LoggerKind = LoggerKind.CSV
    inference_batch_size: int | None = None
    middle_trim: int = 0
    pad_eval: bool = True
    seed: int = 0
    enable_progress_bar: bool = True

    def __post_init__(self) -> None:
        _coerce_enums(
            self,
            {
                "accelerator": Accelerator,
                "precision": Precision,
                "scheduler": Scheduler,
                "checkpoint_mode": CheckpointMode,
                "logger": LoggerKind,
            },
        )
        owner = "ExecutionConfig"
        _check(
            self.devices == "auto"
            or (isinstance(self.devices, int) and not isinstance(self.devices, bool) and 1 <= self.devices <= MAX_DEVICES)
            or (
                isinstance(self.devices, str)
                and re.fullmatch(r"\d{1,4}(,\d{1,4})*,?", self.devices) is not None
                and len(self.devices) <= 200
            ),
            owner,
            "devices",
            self.devices,
            f"'auto', an integer in 1..{MAX_DEVICES} (how many), or GPU indices such as '1,' or '0,2'",
        )
        _check(
            isinstance(self.strategy, str) and bool(self.strategy),
            owner,
            "strategy",
            self.strategy,
            "a Lightning strategy name such as auto, ddp, ddp_spawn, fsdp",
        )
        _check(
            _is_int(self.num_nodes) and 1 <= self.num_nodes <= MAX_NODES,
            owner,
            "num_nodes",
            self.num_nodes,
            f"an integer in 1..{MAX_NODES}",
        )
        for flag in ("deterministic", "pin_memory", "persistent_workers", "pad_eval", "enable_progress_bar"):
            _check(isinstance(getattr(self, flag), bool), owner, flag, getattr(self, flag), "True or False")
        _check(
            _is_int(self.num_workers) and 0 <= self.num_workers <= MAX_WORKERS,
            owner,
            "num_workers",
            self.num_workers,
            f"an integer in 0..{MAX_WORKERS}",
        )
        _check(
            not self.persistent_workers or self.num_workers > 0,
            owner,
            "persistent_workers",
            self.persistent_workers,
            "False when num_workers is 0 (persistent workers need worker processes)",
        )
        _check(
            self.prefetch_factor is None or (_is_int(self.prefetch_factor) and 1 <= self.prefetch_factor <= MAX_WORKERS),
            owner,
            "prefetch_factor",
            self.prefetch_factor,
            f"None or an integer in 1..{MAX_WORKERS}",
        )
        _check(
            self.prefetch_factor is None or self.num_workers > 0,
            owner,
            "prefetch_factor",
            self.prefetch_factor,
            "None when num_workers is 0 (prefetching needs worker processes)",
        )
        _check(
            _is_real(self.learning_rate) and 0 < self.learning_rate <= 1,
            owner,
            "learning_rate",
            self.learning_rate,
            "a number in (0, 1]",
        )
        _check(
            _is_int(self.warmup_epochs) and 0 <= self.warmup_epochs <= MAX_COUNT,
            owner,
            "warmup_epochs",
            self.warmup_epochs,
            f"an integer in 0..{MAX_COUNT}",
        )
        _check(
            self.gradient_clip_val is None or (_is_real(self.gradient_clip_val) and self.gradient_clip_val > 0),
            owner,
            "gradient_clip_val",
            self.gradient_clip_val,
            "None or a number > 0",
        )
        _check(
            _is_int(self.accumulate_grad_batches) and 1 <= self.accumulate_grad_batches <= MAX_COUNT,
            owner,
            "accumulate_grad_batches",
            self.accumulate_grad_batches,
            f"an integer in 1..{MAX_COUNT}",
        )
        _check(
            _is_int(self.checkpoint_save_top_k) and -1 <= self.checkpoint_save_top_k <= MAX_COUNT,
            owner,
            "checkpoint_save_top_k",
            self.checkpoint_save_top_k,
            f"an integer in -1..{MAX_COUNT} (-1 keeps all, 0 keeps none)",
        )
        _check(
            self.checkpoint_monitor is None or self.checkpoint_monitor in ("val_loss", "train_loss"),
            owner,
            "checkpoint_monitor",
            self.checkpoint_monitor,
            "None (val_loss when there is a validation split, else train_loss), 'val_loss' or 'train_loss'",
        )
        _check(
            self.early_stop_patience is None
            or (_is_int(self.early_stop_patience) and 1 <= self.early_stop_patience <= MAX_COUNT),
            owner,
            "early_stop_patience",
            self.early_stop_patience,
            f"None or an integer in 1..{MAX_COUNT}",
        )
        _check(
            self.inference_batch_size is None
            or (_is_int(self.inference_batch_size) and 1 <= self.inference_batch_size <= MAX_COUNT),
            owner,
            "inference_batch_size",
            self.inference_batch_size,
            f"None (the training batch size) or an integer in 1..{MAX_COUNT}",
        )
        _check(
            _is_int(self.middle_trim) and 0 <= self.middle_trim < max(SUPPORTED_PATTERN_SIZES_PX) // 2,
            owner,
            "middle_trim",
            self.middle_trim,
            f"an integer in 0..{max(SUPPORTED_PATTERN_SIZES_PX) // 2 - 1} (pixels cut from each patch edge before "
            "stitching; less than N/2)",
        )
        _check(_is_int(self.seed) and 0 <= self.seed <= MAX_SEED, owner, "seed", self.seed, f"an integer in 0..{MAX_SEED}")


class NoiseModel(StrEnum):
    POISSON = "poisson"
    GAUSSIAN = "gaussian"


class RefinementStart(StrEnum):
    """Where refinement starts: the data's likelihood decides (``auto``), or forced."""

    AUTO = "auto"
    NETWORK = "network"
    FLAT = "flat"


@dataclass(frozen=True)
class RefinementConfig:
    """Joint refinement after the network (``refinement.py``); the defaults need no tuning per scan.

    ``epochs`` 0 turns refinement off (network only). ``batch_size`` is the first epochs'
    mini-batch; batches grow towards the whole scan as refinement converges.
    """

    epochs: int = 40
    batch_size: int = 32
    refine_probe: bool = False
    probe_start_epoch: int = 2
    noise_model: NoiseModel = NoiseModel.POISSON
    # flat by default: measured (benchmarks/results/refinement-cpu.md), a network that hallucinates on an
    # object kind it never saw can fit the data better at the start and still end far worse (grains:
    # 0.25 vs 0.76 phase SSIM), so the likelihood at the start cannot vouch for it; auto/network opt in
    start: RefinementStart = RefinementStart.FLAT
    momentum_gain: float = 0.5
    preconditioner_damping: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        _coerce_enums(self, {"noise_model": NoiseModel, "start": RefinementStart})
        owner = "RefinementConfig"
        for name, low in (("epochs", 0), ("batch_size", 1), ("probe_start_epoch", 0)):
            value = getattr(self, name)
            _check(_is_int(value) and low <= value <= MAX_COUNT, owner, name, value, f"an integer in {low}..{MAX_COUNT}")
        _check(isinstance(self.refine_probe, bool), owner, "refine_probe", self.refine_probe, "True or False")
        gain = self.momentum_gain
        _check(_is_real(gain) and 0 <= gain <= 1, owner, "momentum_gain", gain, "a number in [0, 1]")
        _check(
            _is_real(self.preconditioner_damping) and 0 < self.preconditioner_damping <= 10,
            owner,
            "preconditioner_damping",
            self.preconditioner_damping,
            "a number in (0, 10]",
        )
        _check(_is_int(self.seed) and 0 <= self.seed <= MAX_SEED, owner, "seed", self.seed, f"an integer in 0..{MAX_SEED}")


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs; what the CLI and the plugin both build."""

    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    refinement: RefinementConfig = field(default_factory=RefinementConfig)


def preset_configs(preset: Preset | str, N: int = 64) -> tuple[ModelConfig, TrainingConfig]:
    """Network width and epochs suited to the hardware: narrow and short on a CPU."""
    preset = _choice("train", "preset", preset, Preset)
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
