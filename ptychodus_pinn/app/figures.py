"""PNG figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _crop(image: np.ndarray, illuminated: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(illuminated.any(axis=1))
    cols = np.flatnonzero(illuminated.any(axis=0))
    if rows.size == 0:
        return image
    return image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _save(figure: Any, path: Path) -> None:
    from ptychodus_pinn.engine.data import atomic_write

    atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=110, bbox_inches="tight", format="png"))


def save_object_png(obj: np.ndarray, illuminated: np.ndarray, path: Path, title: str = "") -> None:
    """Amplitude and phase of a reconstruction, cropped to the illuminated region.

    The phase is shown with its dominant ramp and offset removed (an ambiguity, not structure).
    """
    from ptychodus_pinn.engine.metrics import flatten_phase

    plt = _pyplot()
    cropped = _crop(flatten_phase(obj, illuminated), illuminated)
    figure, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for axis, values, label, cmap in (
        (axes[0], np.abs(cropped), "amplitude", "gray"),
        (axes[1], np.angle(cropped), "phase (rad)", "twilight"),
    ):
        shown = axis.imshow(values, cmap=cmap)
        axis.set_title(label)
        axis.set_axis_off()
        figure.colorbar(shown, ax=axis, fraction=0.046)
    if title:
        figure.suptitle(title)
    _save(figure, path)
    plt.close(figure)


def save_confidence_png(phase_std_rad: np.ndarray, illuminated: np.ndarray, path: Path, title: str = "") -> None:
    """The predicted phase standard deviation (rad, log colour scale), unilluminated pixels masked.

    A photon-counting lower bound (engine/confidence.py, docs/confidence.md): where it is large the
    data say little; where it is small they could say much, which does not make the object right.
    """
    from matplotlib.colors import LogNorm

    plt = _pyplot()
    std = np.where(illuminated & np.isfinite(phase_std_rad), phase_std_rad, np.nan)
    cropped = _crop(std, illuminated)
    shown_values = np.ma.masked_invalid(cropped)
    figure, axis = plt.subplots(figsize=(5.2, 4.4))
    cmap = plt.get_cmap("magma_r").with_extremes(bad="lightgrey")
    finite = shown_values.compressed()
    norm = None
    if finite.size and float(finite.min()) > 0:
        low, high = float(finite.min()), float(finite.max())
        norm = LogNorm(vmin=low, vmax=max(high, low * 1.001))
    shown = axis.imshow(shown_values, cmap=cmap, norm=norm)
    axis.set_title(title or "σ_φ, photon-counting bound (rad); grey: not illuminated", fontsize=9)
    axis.set_axis_off()
    figure.colorbar(shown, ax=axis, fraction=0.046, label="σ_φ (rad)")
    _save(figure, path)
    plt.close(figure)


def save_demo_png(
    rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]],
    history: Sequence[Any],
    path: Path,
) -> None:
    """Truth vs reconstruction (amplitude, phase) for each scan, plus the loss curve.

    ``rows``: (name, truth, reconstruction aligned to truth, illuminated mask, metrics).
    """
    plt = _pyplot()
    figure, axes = plt.subplots(len(rows) + 1, 4, figsize=(13, 3.3 * (len(rows) + 1)))
    for index, (name, truth, estimate, illuminated, metrics) in enumerate(rows):
        truth_c, estimate_c = _crop(truth, illuminated), _crop(estimate, illuminated)
        truth_amplitude, truth_phase = np.abs(truth_c), np.angle(truth_c)
        amplitude_range = (float(truth_amplitude.min()), float(truth_amplitude.max()))
        phase_range = (float(truth_phase.min()), float(truth_phase.max()))
        # truth and reconstruction share one colour scale (and a non-cyclic map) so they compare by eye
        panels = (
            (truth_amplitude, f"{name}: true amplitude", "gray", amplitude_range),
            (np.abs(estimate_c), f"reconstructed amplitude (SSIM {metrics['amplitude_ssim']:.2f})", "gray", amplitude_range),
            (truth_phase, f"{name}: true phase", "viridis", phase_range),
            (
                np.angle(estimate_c),
                f"reconstructed phase (SSIM {metrics['phase_ssim']:.2f}, flat {metrics['flat_phase_ssim']:.2f})",
                "viridis",
                phase_range,
            ),
        )
        for axis, (values, label, cmap, (low, high)) in zip(axes[index], panels, strict=True):
            axis.imshow(values, cmap=cmap, vmin=low, vmax=high)
            axis.set_title(label, fontsize=9)
            axis.set_axis_off()
    loss_axis = axes[-1][0]
    epochs = [report.epoch for report in history]
    loss_axis.plot(epochs, [report.train_loss for report in history], label="train")
    if any(report.val_loss is not None for report in history):
        loss_axis.plot(epochs, [report.val_loss for report in history], label="validation")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("loss (Poisson NLL / mean counts;\n+ distillation term in distil mode)", fontsize=8)
    loss_axis.legend()
    loss_axis.set_title("training loss")
    for axis in axes[-1][1:]:
        axis.set_axis_off()
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)
