"""Result files written by the CLI and the demo, each atomically (temporary file + rename)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ptychodus_pinn.engine.data import atomic_write


class OutputPathError(ValueError):
    """An output location that would destroy an input or cannot be written; refused before any work."""


def _target(path: Path) -> Path:
    """Where a write to ``path`` lands: a symbolic link is followed (the link itself is kept)."""
    return Path(os.path.realpath(path))


def same_file(first: Path, second: Path) -> bool:
    """Whether two paths name one file (also through links, hard links and different spellings)."""
    try:
        if first.exists() and second.exists():
            return os.path.samefile(first, second)
    except OSError:
        pass
    return _target(first) == _target(second)


def check_output_file(path: Path, flag: str = "--out") -> None:
    """Refuse, before any work, an output file that cannot be written: a folder, a missing or read-only folder."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{flag} {path} is an existing folder; give a file name (e.g. {path / 'model.pinn.pt'})")
    folder = _target(path).parent
    if not folder.exists():
        raise FileNotFoundError(f"output folder does not exist: {folder} ({flag})")
    if not folder.is_dir():
        raise OutputPathError(f"{flag} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write to {folder}: the folder is read-only; choose another output location ({flag})")


def check_output_folder(path: Path, flag: str = "--out") -> None:
    """Refuse, before any work, an output folder that is a file or cannot be created or written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{flag} {path} is an existing file, not a folder; give a folder name")
    existing = _target(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{flag} {path}: {existing} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write to {existing}: the folder is read-only; choose another output location ({flag})")


def check_outputs_spare_inputs(outputs: Mapping[Path, str], inputs: Mapping[Path, str]) -> None:
    """Refuse an output that is one of the inputs: the run would overwrite the data it reads.

    A decision, not a limitation: nothing is ever written over a file the same command reads
    (scans, models), whatever the spelling, link or hard link.
    """
    for output, output_flag in outputs.items():
        for source, input_flag in inputs.items():
            if same_file(Path(output), Path(source)):
                raise OutputPathError(
                    f"{output_flag} {output} is the input {input_flag} {source}; writing it would destroy the input: "
                    "choose another output path"
                )


def write_losses_csv(history: Sequence[Any], path: Path) -> None:
    def write(temporary: Path) -> None:
        with open(temporary, "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["epoch", "train_loss", "val_loss", "learning_rate", "seconds"])
            for report in history:
                writer.writerow([report.epoch, report.train_loss, "" if report.val_loss is None else report.val_loss,
                                 report.learning_rate, f"{report.seconds:.3f}"])  # fmt: skip

    atomic_write(path, write)


def save_reconstruction(reconstruction: Any, path: Path) -> None:
    """Write the object; a reconstruction holding NaN or infinite values is refused, never written."""
    obj = np.asarray(reconstruction.object)
    finite = np.isfinite(obj)
    if not finite.all():
        share = 100.0 * float(np.count_nonzero(~finite)) / max(obj.size, 1)
        raise ValueError(
            f"not writing {path}: {share:.1f} % of the reconstructed object is NaN or infinite; the model is broken "
            "(NaN weights or a diverged training): retrain it"
        )

    arrays = {"object": obj.astype(np.complex64), "illuminated": np.asarray(reconstruction.illuminated)}
    # what the stages made: the network's object before refinement and the probe the object goes with
    extras = {"network_object": getattr(reconstruction, "network_object", None), "probe": getattr(reconstruction, "probe", None)}
    arrays.update({key: np.asarray(value, np.complex64) for key, value in extras.items() if value is not None})
    # photon-counting lower bounds on each pixel's noise (engine/confidence.py; docs/confidence.md), inf where unlit
    for key in ("phase_std_rad", "amplitude_std"):
        if getattr(reconstruction, key, None) is not None:
            arrays[key] = np.asarray(getattr(reconstruction, key), np.float32)
    arrays["stages"] = np.asarray(list(getattr(reconstruction, "stages", ("network",))), dtype=str)

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as stream:
            np.savez(stream, **arrays)  # type: ignore[arg-type]

    atomic_write(path, write)


def write_json(values: dict[str, Any], path: Path) -> None:
    def write(temporary: Path) -> None:
        temporary.write_text(json.dumps(values, indent=2) + "\n")

    atomic_write(path, write)
