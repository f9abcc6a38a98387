"""The embedded default: simulate a training scan and a different test scan, train, reconstruct, score."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptychodus_pinn.app.figures import save_demo_png
from ptychodus_pinn.app.outputs import write_json, write_losses_csv
from ptychodus_pinn.engine.config import (
    ExecutionConfig,
    ModelConfig,
    RefinementConfig,
    RunConfig,
    TrainingConfig,
    replace,
)
from ptychodus_pinn.engine.data import save_scan
from ptychodus_pinn.engine.inference import reconstruct
from ptychodus_pinn.engine.metrics import align_to_reference, illuminated_box, reconstruction_metrics
from ptychodus_pinn.engine.persistence import load_model, pretrained_path, save_model
from ptychodus_pinn.engine.simulate import simulate_scan
from ptychodus_pinn.engine.training import EpochReport, train


@dataclass(frozen=True)
class DemoSettings:
    size_px: int = 64
    n_positions: int = 576
    photons: float = 1e5
    object_kind: str = "siemens"
    train_seed: int = 1
    test_seed: int = 2
    epochs: int = 30
    batch_size: int = 16
    n_filters_scale: int = 1
    gridsize: int = 1
    refine_epochs: int = RefinementConfig().epochs  # after the default half-resolution epochs


QUICK = DemoSettings(size_px=32, n_positions=144, epochs=3, batch_size=16, refine_epochs=10)


def demo_run_config(settings: DemoSettings, execution: ExecutionConfig) -> RunConfig:
    model = ModelConfig(N=settings.size_px, n_filters_scale=settings.n_filters_scale, gridsize=settings.gridsize)
    # the training scan is also reconstructed, so every pattern trains (no held-out stripe)
    training = TrainingConfig(epochs=settings.epochs, batch_size=settings.batch_size, validation_fraction=0.0)
    return RunConfig(model=model, training=training, execution=execution)


def _print_table(results: dict[str, dict[str, Any]]) -> None:
    keys = (
        "phase_ssim",
        "network_phase_ssim",
        "flat_phase_ssim",
        "amplitude_ssim",
        "phase_psnr_db",
        "amplitude_psnr_db",
        "frc50",
        "patterns_per_second_infer",
    )
    print(f"{'metric':<28}" + "".join(f"{name:>14}" for name in results))
    for key in keys:
        print(f"{key:<28}" + "".join(f"{results[name][key]:>14.3f}" for name in results))
    for key in ("seconds_train", "seconds_network", "seconds_refinement"):
        print(f"{key:<28}" + "".join(f"{results[name][key]:>14.1f}" for name in results))


def run_demo(
    out: Path,
    execution: ExecutionConfig | None = None,
    quick: bool = False,
    epochs: int | None = None,
    from_scratch: bool = False,
) -> dict[str, Any]:
    """Write scans, the model, metrics.json and demo.png under ``out``; print a table; return the metrics.

    Training starts from the shipped pretrained model when one fits (trained on other simulated
    scans, never the demo's seeds) unless ``from_scratch``.
    """

    settings = QUICK if quick else DemoSettings()
    if epochs is not None:
        settings = replace(settings, epochs=epochs)
    execution = execution or ExecutionConfig()
    out.mkdir(parents=True, exist_ok=True)
    print(f"simulating two {settings.object_kind} scans: {settings.n_positions} patterns of {settings.size_px} px, "
          f"{settings.photons:.0e} photons each")  # fmt: skip
    scans = {
        "train_scan": simulate_scan(
            settings.object_kind, settings.photons, settings.n_positions, settings.size_px, settings.train_seed
        ),
        "test_scan": simulate_scan(
            settings.object_kind, settings.photons, settings.n_positions, settings.size_px, settings.test_seed
        ),
    }
    for name, scan in scans.items():
        save_scan(scan, out / f"{name}.npz")
    config = demo_run_config(settings, execution)
    initial_model = None
    pretrained = None if from_scratch else pretrained_path(settings.size_px)
    if pretrained is not None:
        initial_model = load_model(pretrained)
        if initial_model.config.n_filters_scale != settings.n_filters_scale:
            initial_model = None
    start = f"from {pretrained.name}" if initial_model is not None and pretrained is not None else "from scratch"
    print(f"training {settings.epochs} epochs on the train scan, {start} ...")

    def report(epoch: EpochReport) -> None:
        if not execution.enable_progress_bar:
            print(f"epoch {epoch.epoch}/{epoch.epochs} loss {epoch.train_loss:.4f} ({epoch.seconds:.0f} s)", flush=True)

    started = time.perf_counter()
    result = train([scans["train_scan"]], config, on_epoch_end=report, initial_model=initial_model)
    seconds_train = time.perf_counter() - started
    save_model(result.model, out / "model.pinn.pt")
    write_losses_csv(result.history, out / "model.pinn.pt.losses.csv")
    metrics: dict[str, dict[str, Any]] = {}
    rows = []
    for name, scan in scans.items():
        refinement = RefinementConfig(epochs=settings.refine_epochs)  # start auto: the network's object competes
        print(
            f"reconstructing the {name.replace('_', ' ')}: network, then {refinement.half_resolution_epochs} half- and "
            f"{refinement.epochs} full-resolution epochs of refinement ..."
        )
        reconstruction = reconstruct(result.model, scan, execution=execution, refinement=refinement)
        assert scan.ground_truth is not None
        quality = reconstruction_metrics(reconstruction, scan.ground_truth)
        quality.update(seconds_train=seconds_train)
        metrics[name] = quality
        label = name.replace("_", " ")
        assert reconstruction.network_object is not None
        network_quality = {key.removeprefix("network_"): value for key, value in quality.items() if key.startswith("network_")}
        for title, obj, scores in (
            (f"{label}: network", reconstruction.network_object, network_quality),
            (f"{label}: + refinement", reconstruction.object, quality),
        ):
            full_aligned = np.zeros_like(scan.ground_truth)
            aligned, _, _ = align_to_reference(obj, scan.ground_truth, reconstruction.illuminated, erode_px=0)
            rows_slice, cols_slice = illuminated_box(reconstruction.illuminated)
            full_aligned[rows_slice, cols_slice] = aligned
            rows.append((title, scan.ground_truth, full_aligned, reconstruction.illuminated, {**quality, **scores}))
    metrics["settings"] = {key: getattr(settings, key) for key in settings.__dataclass_fields__}
    metrics["best_epoch"] = {"epoch": result.best_epoch, "epochs": len(result.history)}
    metrics["initial_model"] = {"start": start}
    write_json(metrics, out / "metrics.json")
    save_demo_png(rows, result.history, out / "demo.png")
    _print_table({name: metrics[name] for name in scans})
    print(f"wrote {out / 'metrics.json'}, {out / 'demo.png'} and {out / 'model.pinn.pt'}")
    return metrics
