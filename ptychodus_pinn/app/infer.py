"""What ``infer`` does for one scan, shared by ``ptychodus-pinn infer`` and ``ptychodus-pinn watch``:
which model to use, and the files written into the output folder."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ptychodus_pinn.engine.config import ExecutionConfig, RefinementConfig

logger = logging.getLogger(__name__)

# the files infer writes into its output folder (each checked before the model runs)
INFER_OUTPUTS = ("object.npz", "object.png", "confidence.png", "metrics.json")
# the scan files a folder is searched for (engine.data.load_scan reads them)
SCAN_SUFFIXES = (".npz", ".h5", ".hdf5", ".cxi", ".bz2")


class NoModelError(ValueError):
    """No model was given, none ships for the scan's pattern size, and refinement is off."""


def device_width(size_px: int, execution: ExecutionConfig) -> int:
    """The width of the shipped model a run on ``execution``'s device uses for N = size_px (4 on a GPU at N = 64,
    else 1: ``engine.persistence.device_model_width``); a GPU asked for and absent is the run's error, said here."""
    from ptychodus_pinn.engine.device import resolve_accelerator
    from ptychodus_pinn.engine.persistence import device_model_width

    return device_model_width(size_px, resolve_accelerator(execution.accelerator))


def shipped_model_path(size_px: int, width: int) -> Path | None:
    """The shipped model file for N = size_px at ``width`` where one ships, else at width 1; None if none ships."""
    from ptychodus_pinn.engine.persistence import pretrained_path, shipped_width

    return pretrained_path(size_px, shipped_width(size_px, width))


def model_path_for(size_px: int, model_path: Path | None, refinement: RefinementConfig, width: int = 1) -> Path | None:
    """The given model, else the shipped model for N = size_px (at ``width`` where one ships: :func:`device_width`),
    else None (refinement from a flat object)."""
    if model_path is not None:
        return model_path
    shipped = shipped_model_path(size_px, width)
    if shipped is None and refinement.epochs == 0:
        raise NoModelError(f"no model ships for N={size_px}: give --model, or refine a flat object (--refine-epochs > 0)")
    return shipped


def shipped_alternative(
    model_path: Path | None, size_px: int, refinement: RefinementConfig, load: Callable[[Path], Any], width: int = 1
) -> tuple[str, Any] | None:
    """(name, the shipped model for N = size_px and ``width``, loaded with ``load``) to weigh against a model given by
    file, as ptychodus does (``engine.inference.likelier_network``); None without a given model, with a refinement
    start other than auto, when none ships for N, or when the given file is the shipped one."""
    from ptychodus_pinn.engine.config import RefinementStart, shipped_model_name
    from ptychodus_pinn.engine.persistence import shipped_width

    shipped = shipped_model_path(size_px, width)
    if model_path is None or shipped is None or refinement.start is not RefinementStart.AUTO:
        return None
    if Path(model_path).resolve() == shipped.resolve():
        return None
    name = shipped_model_name(shipped_width(size_px, width))
    try:
        return name, load(shipped)
    except (OSError, ValueError, RuntimeError) as error:  # only a second opinion: the given model still runs
        logger.warning("%s is unusable (%s: %s); using the given model alone", name, type(error).__name__, error)
        return None


PROGRESS_FRACTION = 0.1  # off a terminal, a progress line every 10 % of refinement's epochs


class RefinementProgress:
    """A callback for ``reconstruct(on_refinement_epoch=...)`` that shows refinement's progress on ``stream``
    (stderr): one line rewritten each epoch on a terminal, a line every 10 % of the epochs otherwise (a log
    file); :meth:`end` finishes it (refinement can end before its last epoch: Stop, or converged). Without it
    ``infer`` was silent for as long as refinement took (30 s at N = 256 on a CPU)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.out = sys.stderr if stream is None else stream
        self.on_terminal = self.out.isatty()
        self.line_open = False

    def __call__(self, report: Any) -> None:
        every = max(1, round(report.epochs * PROGRESS_FRACTION))
        last = report.epoch == report.epochs or report.stopped
        if not (self.on_terminal or last or report.epoch % every == 0):
            return
        stage = " (half resolution)" if report.half_resolution else ""
        line = f"refinement epoch {report.epoch}/{report.epochs}{stage}, {report.seconds:.1f} s"
        if self.on_terminal:
            self.out.write(f"\r{line}\033[K")
            self.line_open = True
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def end(self) -> None:
        if self.line_open:
            self.out.write("\n")
            self.out.flush()
            self.line_open = False


def write_infer_outputs(reconstruction: Any, scan: Any, out: Path, model_path: Path | None) -> str:
    """Write object.npz, object.png, confidence.png and (with a ground truth) metrics.json into ``out``.

    Returns the one-line summary infer prints. Files an earlier run left that would no longer
    describe this object (metrics without a truth, a confidence map that could not be made) are removed.
    """
    from ptychodus_pinn.app.figures import save_confidence_png, save_object_png
    from ptychodus_pinn.app.outputs import save_reconstruction, write_json
    from ptychodus_pinn.engine.metrics import reconstruction_metrics

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_reconstruction(reconstruction, out / "object.npz")
    save_object_png(reconstruction.object, reconstruction.illuminated, out / "object.png")
    written = [out / "object.npz", out / "object.png"]
    if getattr(reconstruction, "phase_std_rad", None) is not None:
        save_confidence_png(reconstruction.phase_std_rad, reconstruction.illuminated, out / "confidence.png")
        written.append(out / "confidence.png")
    else:
        (out / "confidence.png").unlink(missing_ok=True)
    views = getattr(reconstruction, "symmetry_views", 1)
    network_used = "" if model_path is None else f" ({Path(model_path).name}{f', {views} symmetry views' if views > 1 else ''})"
    stages = " + ".join(reconstruction.stages) + network_used
    message = f"wrote {', '.join(map(str, written))}: {stages}, {reconstruction.seconds:.1f} s"
    if scan.ground_truth is not None:
        metrics = reconstruction_metrics(reconstruction, scan.ground_truth)
        write_json(metrics, out / "metrics.json")
        message += f"; phase SSIM {metrics['phase_ssim']:.3f} (flat object {metrics['flat_phase_ssim']:.3f}"
        if "network_phase_ssim" in metrics and "refinement" in reconstruction.stages:
            message += f", network alone {metrics['network_phase_ssim']:.3f}"
        message += ")"
    else:
        (out / "metrics.json").unlink(missing_ok=True)  # an earlier run's metrics must not describe this object
    return message
