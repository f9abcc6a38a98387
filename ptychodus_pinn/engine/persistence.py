"""Model files: one ``*.pinn.pt`` holding weights, config, constants and versions (SPEC §7).

Loading is safe (``torch.load(weights_only=True)``: only tensors and plain containers are
unpickled, so a file crafted to run code is refused) and strict (every weight must match the
architecture the stored config rebuilds; a truncated or foreign file is a clear error, never a
model with random weights). Writes are atomic.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from ptychodus_pinn import __version__
from ptychodus_pinn.engine.config import ModelConfig, model_config_from_dict, to_dict
from ptychodus_pinn.engine.data import atomic_write
from ptychodus_pinn.engine.model import PinnModel, TrainingRecord

FORMAT_NAME = "ptychodus-pinn-model"
FORMAT_VERSION = 1
MODEL_SUFFIX = ".pinn.pt"

logger = logging.getLogger(__name__)


class ModelFileError(ValueError):
    """The model file cannot be used; the message says why."""


def model_payload(model: PinnModel) -> dict[str, Any]:
    record = model.record
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_config": to_dict(model.config),
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "constants": {
            "intensity_scale": float(record.intensity_scale),
            "input_normalization": float(record.input_normalization),
            "mean_total_counts": float(record.mean_total_counts),
            "batch_size": int(record.batch_size),
            "epochs_trained": int(record.epochs_trained),
        },
        "extra": {str(key): value for key, value in record.extra.items() if isinstance(value, (int, float, str, bool))},
        "versions": {"ptychodus_pinn": str(__version__), "torch": str(torch.__version__)},
    }


def non_finite_weights(state: dict[str, Any]) -> list[str]:
    """Names of the tensors that hold NaN or infinite values."""
    return [
        str(name) for name, value in state.items() if isinstance(value, torch.Tensor) and not bool(torch.isfinite(value).all())
    ]


def save_model(model: PinnModel, path: str | os.PathLike[str]) -> Path:
    """Write the model atomically; a failure leaves any previous file intact. A model with NaN weights is refused."""
    path = Path(path)
    payload = model_payload(model)
    bad = non_finite_weights(payload["state_dict"])
    if bad:
        raise ValueError(
            f"not saving {path}: {len(bad)} weight tensor(s) of the model hold NaN or infinite values (first: {bad[0]}); "
            "the training diverged: lower the learning rate (--learning-rate) or clip gradients (--gradient-clip-val)"
        )
    atomic_write(path, lambda temporary: torch.save(payload, temporary))
    return path


def load_model(path: str | os.PathLike[str], expect: ModelConfig | None = None) -> PinnModel:
    """Rebuild a model from its file. ``expect`` refuses a model of another N or gridsize (the network's input);
    the training mode is not checked: it says how the weights were learnt, not what they compute."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelFileError(f"{path} is a directory; give a model file ({MODEL_SUFFIX})")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path} is not a ptychodus-pinn model file (not a torch zip archive; truncated or another format?)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelFileError(
            f"refused to load {path}: it holds objects other than tensors and plain data, which could run code "
            f"on load ({str(error).splitlines()[0][:200]}); only load model files written by ptychodus-pinn"
        ) from error
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, KeyError, ValueError) as error:
        raise ModelFileError(f"cannot read model file {path}: {error}; the file is damaged or truncated") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path} is a torch file but not a ptychodus-pinn model (no '{FORMAT_NAME}' header)")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has model format version {version!r}, newer than this ptychodus-pinn understands ({FORMAT_VERSION}); "
            "upgrade ptychodus-pinn"
        )
    try:
        config = model_config_from_dict(dict(payload["model_config"]))
        constants = payload["constants"]
        record = TrainingRecord(
            intensity_scale=float(constants["intensity_scale"]),
            input_normalization=float(constants["input_normalization"]),
            mean_total_counts=float(constants["mean_total_counts"]),
            batch_size=int(constants["batch_size"]),
            epochs_trained=int(constants["epochs_trained"]),
            extra=dict(payload.get("extra", {})),
        )
        state = payload["state_dict"]
        probe = state["probe"]
    except (KeyError, TypeError, ValueError, OverflowError) as error:
        # "ModelConfig.N=33 is not allowed" names a field of the file, not a setting the user typed
        detail = re.sub(r"\b\w+(?:Config|Record)\.", "", str(error).splitlines()[0] if str(error) else type(error).__name__)
        raise ModelFileError(
            f"{path}: the model file has missing or invalid fields ({detail}); the file is damaged or foreign"
        ) from error
    _check_constants(path, record)
    if not isinstance(state, dict):
        raise ModelFileError(f"{path}: the model file's weights are not a state dictionary; the file is damaged or foreign")
    bad = non_finite_weights(state)
    if bad:
        raise ModelFileError(
            f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values (first: {bad[0]}); the model would "
            "reconstruct NaN: retrain it (the training diverged; lower the learning rate)"
        )
    if expect is not None:
        for name in ("N", "gridsize"):
            if getattr(config, name) != getattr(expect, name):
                raise ModelFileError(
                    f"{path} holds a model for {name}={getattr(config, name)!s} but {getattr(expect, name)!s} is needed; "
                    "train a model for these settings or change them to match the model"
                )
    model = PinnModel(config, probe, record)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelFileError(f"{path}: weights do not match the stored architecture: {str(error)[:300]}") from error
    return model


MAX_STORED_BATCH_SIZE = 1_000_000


def _check_constants(path: Path, record: TrainingRecord) -> None:
    """Constants that would hang inference (batch size 0) or poison it (NaN scale) are refused at load."""
    for name in ("intensity_scale", "input_normalization", "mean_total_counts"):
        value = getattr(record, name)
        if not (math.isfinite(value) and value > 0):
            raise ModelFileError(
                f"{path}: the model file's constant {name}={value!r} is invalid (a finite number > 0 is needed); "
                "the file is damaged: retrain the model"
            )
    if not 1 <= record.batch_size <= MAX_STORED_BATCH_SIZE:
        raise ModelFileError(
            f"{path}: the model file's stored batch size {record.batch_size} is invalid (1..{MAX_STORED_BATCH_SIZE}); "
            "the file is damaged: retrain the model"
        )
    if record.epochs_trained < 0:
        raise ModelFileError(f"{path}: the model file's epochs_trained={record.epochs_trained} is negative; the file is damaged")


def pretrained_name(size_px: int, width: int = 1) -> str:
    """File name of the shipped model for N = size_px at network width ``width``: ``pretrained-nN.pinn.pt`` for
    width 1 (the CPU models every entry uses by default), ``pretrained-nN-wW.pinn.pt`` for a wider one."""
    return f"pretrained-n{size_px}{'' if width == 1 else f'-w{width}'}{MODEL_SUFFIX}"


def pretrained_path(size_px: int, width: int = 1) -> Path | None:
    """The shipped starting model for N = size_px (and network width ``width``), from the installed package or a
    source checkout; None when none ships."""
    name = pretrained_name(size_px, width)
    package_root = Path(__file__).resolve().parents[1]
    for folder in (package_root / "resources", package_root.parent / "resources"):
        if (folder / name).is_file():
            return folder / name
    return None


# wider shipped models a GPU uses where one ships for N, widest first (docs/quality.md, "Width 4"): on a CPU their
# forward pass costs 4-5x width 1's for the same refined result, on a GPU it is not what a reconstruction waits for
GPU_MODEL_WIDTHS = (4,)


def device_model_width(size_px: int, device_kind: str) -> int:
    """The network width a device uses when the settings leave it open: on a GPU (``cuda``, ``mps``) the widest
    shipped model for N = size_px (4 at N = 64: its object alone is the better one on every kind), else 1."""
    if device_kind != "cpu":
        for width in GPU_MODEL_WIDTHS:
            if pretrained_path(size_px, width) is not None:
                return width
    return 1


def shipped_width(size_px: int, width: int) -> int:
    """``width`` where a shipped model of that width exists for N = size_px, else 1 (the width every N ships in)."""
    return width if width == 1 or pretrained_path(size_px, width) is not None else 1


def load_pretrained(size_px: int, width: int = 1) -> PinnModel:
    """Load the shipped pretrained model for this pattern size and width (FileNotFoundError if none ships)."""
    path = pretrained_path(size_px, width)
    if path is None:
        raise FileNotFoundError(
            f"no pretrained model ships for N={size_px}{'' if width == 1 else f' at width {width}'}; "
            "train one with 'ptychodus-pinn train'"
        )
    return _checked_width(load_model(path, expect=ModelConfig(N=size_px)), path, width)


def find_pretrained(size_px: int, width: int = 1) -> PinnModel | None:
    """The shipped pretrained model for N = size_px (and width), or None (logged) when none ships or it is unusable."""
    if pretrained_path(size_px, width) is None:
        logger.info("No pretrained model ships for N=%d%s", size_px, "" if width == 1 else f" at network width {width}")
        return None
    try:
        return load_pretrained(size_px, width)
    except (OSError, ValueError, RuntimeError) as error:  # ModelFileError is a ValueError
        logger.warning("The pretrained model for N=%d is unusable (%s: %s)", size_px, type(error).__name__, error)
        return None


def _checked_width(model: PinnModel, path: Path, width: int) -> PinnModel:
    """A shipped file's width is in its name: a file that says otherwise is refused, not used as the other width."""
    if model.config.n_filters_scale != width:
        raise ModelFileError(f"{path} holds a network of width {model.config.n_filters_scale}, its name says {width}")
    return model


def model_file_path(path: str | os.PathLike[str], *, folder_basename: str | None = None) -> Path:
    """Where a model named ``path`` is written: the file, with the model suffix added when missing; with
    ``folder_basename``, a folder (an existing one, or a name without suffix) gets that model file inside."""
    path = Path(path)
    if folder_basename is not None and (path.is_dir() or not path.suffix):
        return path / f"{folder_basename}{MODEL_SUFFIX}"
    return path if path.name.endswith(MODEL_SUFFIX) else path.with_name(path.name + MODEL_SUFFIX)
