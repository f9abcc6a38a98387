"""Where to run, as data: the one mapping from ``ExecutionConfig`` (accelerator + devices) to a
:class:`DeviceSpec`, which gives the Lightning Trainer its ``accelerator``/``devices`` (one process per
device under DDP) and inference, previews and refinement their ``torch.device`` (the first device
chosen: ``cuda:1`` when GPU 1 was chosen). What torch can see is read in one place,
:func:`visible_devices`, and passed in, so the mapping itself is pure (SPEC §6).

No Lightning import here: inference uses this module and stays quick to import.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ptychodus_pinn.engine.config import Accelerator, ExecutionConfig

DeviceKind = Literal["cpu", "cuda", "mps"]

logger = logging.getLogger(__name__)


class AcceleratorUnavailableError(RuntimeError):
    """The accelerator asked for is not visible to torch (never fall back to the CPU silently)."""


@dataclass(frozen=True)
class VisibleDevices:
    """What torch can use on this machine (:func:`visible_devices`; tests pass their own)."""

    cuda_available: bool = False
    cuda_count: int = 0
    mps_available: bool = False


def visible_devices() -> VisibleDevices:
    """The one place that asks torch which accelerators exist."""
    mps = getattr(torch.backends, "mps", None)
    return VisibleDevices(
        cuda_available=bool(torch.cuda.is_available()),
        cuda_count=int(torch.cuda.device_count()),
        mps_available=bool(mps is not None and mps.is_available()),
    )


@dataclass(frozen=True)
class DeviceSpec:
    """The devices a run uses: ``kind`` and the device indices, in Lightning's order.

    For ``cuda`` the indices are GPU indices (``(1,)`` for GPU 1, ``(0, 1)`` for DDP on two GPUs);
    for ``cpu`` and ``mps`` they only count processes/devices (``(0, 1)`` = two CPU processes).
    """

    kind: DeviceKind
    indices: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        if self.kind not in ("cpu", "cuda", "mps"):
            raise ValueError(f"DeviceSpec.kind={self.kind!r} is not allowed; it must be one of cpu, cuda, mps")
        if not self.indices or any(index < 0 for index in self.indices) or len(set(self.indices)) != len(self.indices):
            raise ValueError(f"DeviceSpec.indices={self.indices!r} is not allowed; give distinct indices >= 0, at least one")

    @property
    def count(self) -> int:
        """How many devices (processes under DDP) run."""
        return len(self.indices)

    @property
    def distributed(self) -> bool:
        """Whether Lightning runs more than one process on this node (DDP)."""
        return self.count > 1

    @property
    def lightning_accelerator(self) -> str:
        return self.kind

    @property
    def lightning_devices(self) -> int | list[int]:
        """``Trainer(devices=...)``: GPU indices for CUDA (never a count, so Lightning and torch agree), else a count."""
        return list(self.indices) if self.kind == "cuda" else self.count

    @property
    def torch_device(self) -> torch.device:
        """Where inference, previews and refinement run: the first device chosen (rank 0's under DDP)."""
        return torch.device(f"cuda:{self.indices[0]}") if self.kind == "cuda" else torch.device(self.kind)


def resolve_accelerator(accelerator: Accelerator | str, visible: VisibleDevices | None = None) -> DeviceKind:
    """Lightning accelerator name for a request; a GPU asked for and absent is an error, never CPU."""
    accelerator = Accelerator(accelerator)
    visible = visible_devices() if visible is None else visible
    cuda, mps = visible.cuda_available, visible.mps_available
    if accelerator is Accelerator.AUTO:
        return "cuda" if cuda else "mps" if mps else "cpu"
    if accelerator in (Accelerator.GPU, Accelerator.CUDA) and not cuda:
        raise AcceleratorUnavailableError(
            f"accelerator={accelerator.value} was requested but torch sees no CUDA GPU "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False); install a CUDA build of torch "
            "or choose accelerator cpu"
        )
    if accelerator is Accelerator.MPS and not mps:
        raise AcceleratorUnavailableError(
            "accelerator=mps was requested but torch sees no Apple GPU; choose accelerator cpu or auto"
        )
    if accelerator is Accelerator.CPU:
        return "cpu"
    return "mps" if accelerator is Accelerator.MPS else "cuda"


def _indices(devices: int | str, kind: DeviceKind, visible: VisibleDevices) -> tuple[int, ...]:
    """The device indices ``devices`` selects on ``kind``, checked against what torch sees."""
    available = visible.cuda_count if kind == "cuda" else 1 if kind == "mps" else None
    if devices == "auto":
        # Lightning's auto: every GPU, the one Apple GPU, one CPU process
        return tuple(range(max(available or 1, 1)))
    if isinstance(devices, str):
        indices = [int(part) for part in devices.split(",") if part.strip()]
        if kind == "cpu":
            raise ValueError(
                f"ExecutionConfig.devices={devices!r} lists device indices, which only GPUs have; on the CPU give a "
                "count such as 1 (or auto)"
            )
        if len(set(indices)) != len(indices):
            raise ValueError(f"ExecutionConfig.devices={devices!r} names a device twice; list each GPU index once")
        missing = [index for index in indices if available is not None and index >= available]
        if missing:
            raise AcceleratorUnavailableError(
                f"devices={devices!r} asks for {kind} device {missing[0]} but torch sees {available} "
                f"(indices 0..{(available or 1) - 1}); choose an index that exists"
            )
        return tuple(indices)
    if available is not None and devices > available:
        raise AcceleratorUnavailableError(
            f"devices={devices} asks for {devices} {kind} device(s) but torch sees {available}; lower devices"
        )
    return tuple(range(devices))


def device_spec(execution: ExecutionConfig, visible: VisibleDevices | None = None) -> DeviceSpec:
    """THE mapping from an execution config to the devices used, for training and everything after it.

    ``AcceleratorUnavailableError`` when the accelerator or a device index is not there (never a silent
    CPU run), ``ValueError`` when the request cannot mean anything (GPU indices on the CPU).
    """
    visible = visible_devices() if visible is None else visible
    kind = resolve_accelerator(execution.accelerator, visible)
    return DeviceSpec(kind, _indices(execution.devices, kind, visible))


DeviceLike = ExecutionConfig | DeviceSpec | torch.device | str
ACCELERATORS = frozenset(member.value for member in Accelerator)


def torch_device(target: DeviceLike) -> torch.device:
    """The ``torch.device`` for an execution config or a device spec: its first device.

    A ``torch.device`` or a device string such as ``"cuda:1"`` is taken as it is. An accelerator alone
    (``Accelerator.CUDA``, ``"auto"``, ``"gpu"``) means that accelerator with its default devices, so its
    first GPU: pass the whole ``ExecutionConfig`` to honour the devices chosen.
    """
    if isinstance(target, ExecutionConfig):
        return device_spec(target).torch_device
    if isinstance(target, DeviceSpec):
        return target.torch_device
    if isinstance(target, str) and target in ACCELERATORS:
        return device_spec(ExecutionConfig(accelerator=Accelerator(target))).torch_device
    return torch.device(target)


def lightning_devices(execution: ExecutionConfig, accelerator: str | None = None) -> int | list[int]:
    """``Trainer(devices=...)`` for ``execution``; an ``accelerator`` already resolved (cpu, cuda, mps) is
    taken as given, and only the devices are checked against what torch sees."""
    if accelerator is None or accelerator not in ("cpu", "cuda", "gpu", "mps"):
        return device_spec(execution).lightning_devices
    kind: DeviceKind = "cuda" if accelerator == "gpu" else accelerator  # type: ignore[assignment]
    return DeviceSpec(kind, _indices(execution.devices, kind, visible_devices())).lightning_devices


def release_cached_memory(device: torch.device) -> None:
    """Give cached blocks back to the driver after work on a GPU."""
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def release_device_memory(model: Any | None = None) -> Any | None:
    """After a run: the model (if any) moved to the CPU, cached GPU memory returned to the driver."""
    if model is not None:
        try:
            model = model.to("cpu") or model
        except Exception:
            logger.debug("Could not move the model to the CPU", exc_info=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return model


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()
