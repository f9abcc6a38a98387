"""Result files written by the CLI and the demo, each atomically (temporary file + rename)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ptychodus_pinn.data import atomic_write


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
    def write(temporary: Path) -> None:
        with open(temporary, "wb") as stream:
            np.savez(stream, object=reconstruction.object.astype(np.complex64), illuminated=reconstruction.illuminated)

    atomic_write(path, write)


def write_json(values: dict[str, Any], path: Path) -> None:
    def write(temporary: Path) -> None:
        temporary.write_text(json.dumps(values, indent=2) + "\n")

    atomic_write(path, write)
