"""PtychoPINN (PyTorch) side by side with pty-chi LSQML and ePIE, on one machine (issue 4).

For each simulated case (pattern size N, photons per pattern, object kind) two scans of the same
kind are simulated with different seeds, A and B, and on the same machine and thread count:

(a) PINN self-supervised on A (train + infer), quality every few epochs against wall time
    (Lightning keeps a checkpoint per epoch; each is scored afterwards, so scoring costs no
    training time; the wall time of a point is training time so far + one inference);
(b) the model of (a) applied to the unseen scan B (train once, infer fast);
(c) pty-chi LSQML and ePIE on A (probe and positions fixed, like the PINN), quality every few
    epochs against wall time;
(d) the real Siemens-star scan (shared/data): PINN self-supervised on it vs the committed LSQML
    reference (FRC between the two after registration) and half-scan FRC (interleaved halves) of
    the PINN and of LSQML (probe refined, as the reference was).

Quality is ptychodus_pinn.metrics.compare (the CLI's implementation: shift, phase ramp/offset and
amplitude scale removed, illuminated region only). Writes ``benchmarks/results/<name>.json``,
``<name>.md`` and PNG plots; prints the tables.

Run in the benchmark venv (``bash benchmarks/setup_bench_venv.sh`` once)::

    /work/bench-venv/bin/python benchmarks/run_benchmarks.py --quick          # a few minutes
    /work/bench-venv/bin/python benchmarks/run_benchmarks.py --name cpu-n64 --sizes 64 --photons 1e5
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ptychi_runner import Method, PeakRss, run_ptychi

from ptychodus_pinn import physics
from ptychodus_pinn.config import Accelerator, ExecutionConfig, LoggerKind, ModelConfig, RunConfig, TrainingConfig
from ptychodus_pinn.data import ReadOptions, Scan, load_scan
from ptychodus_pinn.inference import reconstruct
from ptychodus_pinn.metrics import align_to_reference, compare, frc_threshold_crossing
from ptychodus_pinn.model import PinnModel
from ptychodus_pinn.simulate import simulate_scan
from ptychodus_pinn.training import train

HERE = Path(__file__).resolve().parent
REAL_SCAN = HERE.parent.parent / "shared" / "data" / "siemens-star-small.npz.bz2"
REAL_REFERENCE = HERE.parent.parent / "shared" / "data" / "siemens-star-small_lsqml-reference.npz"
#: the reference object (500, 497) lies on the grid our reader builds with this margin
REAL_MARGIN_PX = 20
HALF_SCAN_FRC_THRESHOLD = 1 / 7
QUALITY_FRACTION = 0.95


@dataclass(frozen=True)
class Settings:
    """Everything one benchmark run varies."""

    sizes: tuple[int, ...] = (64, 128)
    photons: tuple[float, ...] = (1e4, 1e5, 1e6)
    kinds: tuple[str, ...] = ("siemens", "lines")
    n_positions: int = 576
    pinn_epochs: int = 60
    pinn_batch_size: int = 16
    n_filters_scale: int = 2
    gridsize: int = 1
    learning_rate: float = 2e-3
    pinn_record_every: int = 5
    lsqml_epochs: int = 400
    lsqml_record_every: int = 20
    epie_epochs: int = 100
    epie_record_every: int = 5
    real: bool = True
    real_max_patterns: int | None = None
    real_pinn_epochs: int = 30
    real_lsqml_epochs: int = 100
    threads: int = 2
    accelerator: str = "cpu"
    train_seed: int = 11
    test_seed: int = 12


QUICK = Settings(
    sizes=(32,),
    photons=(1e5,),
    kinds=("siemens",),
    n_positions=144,
    pinn_epochs=4,
    n_filters_scale=1,
    pinn_record_every=2,
    lsqml_epochs=30,
    lsqml_record_every=10,
    epie_epochs=10,
    epie_record_every=5,
    real_max_patterns=48,
    real_pinn_epochs=1,
    real_lsqml_epochs=5,
)


@dataclass
class Curve:
    """Quality against wall time for one method on one scan."""

    method: str
    records: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def final(self) -> dict[str, Any]:
        return self.records[-1]

    def time_to(self, phase_ssim: float) -> float | None:
        """First wall time at which phase SSIM reaches the value (None: never)."""
        for record in self.records:
            if record["phase_ssim"] >= phase_ssim:
                return float(record["wall_s"])
        return None


# ---------------------------------------------------------------------------------------------- helpers


def illumination(scan: Scan) -> np.ndarray:
    """Pixels any probe lights (the same rule as the engine's stitching)."""
    weight = physics.probe_weight(torch.from_numpy(scan.probe))
    ones = torch.ones((scan.count, scan.size_px, scan.size_px), dtype=torch.complex64)
    _, illuminated = physics.stitch(ones, scan.positions_yx_px, weight, scan.object_shape)
    return illuminated.numpy()


def quality(obj: np.ndarray, truth: np.ndarray, illuminated: np.ndarray) -> dict[str, Any]:
    return compare(obj, truth, illuminated).as_dict()


def execution_config(settings: Settings, checkpoint_every_epoch: bool) -> ExecutionConfig:
    return ExecutionConfig(
        accelerator=Accelerator(settings.accelerator),
        learning_rate=settings.learning_rate,
        logger=LoggerKind.NONE,
        enable_progress_bar=False,
        checkpoint_save_top_k=-1 if checkpoint_every_epoch else 1,
        seed=0,
    )


def run_config(settings: Settings, size: int, epochs: int, checkpoint_every_epoch: bool) -> RunConfig:
    return RunConfig(
        model=ModelConfig(N=size, n_filters_scale=settings.n_filters_scale, gridsize=settings.gridsize),
        training=TrainingConfig(epochs=epochs, batch_size=settings.pinn_batch_size, validation_fraction=0.0),
        execution=execution_config(settings, checkpoint_every_epoch),
    )


def model_at_epoch(template: PinnModel, checkpoint_dir: Path, epoch: int) -> PinnModel | None:
    """The model as it was after ``epoch`` (1-based), from Lightning's per-epoch checkpoint."""
    matches = sorted(checkpoint_dir.glob(f"best-epoch={epoch - 1:03d}*.ckpt")) or sorted(
        checkpoint_dir.glob(f"best-{epoch - 1:03d}*.ckpt")
    )
    if not matches:
        return None
    state = torch.load(matches[0], map_location="cpu", weights_only=True)["state_dict"]
    model = copy.deepcopy(template)
    model.load_state_dict({key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")})
    return model


def record_epochs(epochs: int, every: int) -> list[int]:
    return sorted({*range(every, epochs + 1, every), epochs})


def train_pinn(
    scan: Scan, settings: Settings, epochs: int, workdir: Path, record_every: int | None, score: Any = None
) -> tuple[PinnModel, Curve]:
    """Train self-supervised on one scan; score checkpoints every ``record_every`` epochs."""
    config = run_config(settings, scan.size_px, epochs, checkpoint_every_epoch=record_every is not None)
    checkpoint_dir = workdir / f"ckpt-{time.time_ns()}"
    with PeakRss() as rss:
        result = train([scan], config, checkpoint_dir=checkpoint_dir)
    curve = Curve("PINN self-supervised")
    curve.extra.update(
        seconds_train=result.seconds,
        seconds_per_epoch=result.history[-1].seconds / max(len(result.history), 1),
        best_epoch=result.best_epoch,
        peak_rss_bytes=rss.peak_bytes,
        epochs=len(result.history),
    )
    if record_every is not None and score is not None:
        execution = config.execution
        for epoch in record_epochs(len(result.history), record_every):
            model = model_at_epoch(result.model, checkpoint_dir, epoch)
            if model is None:
                continue
            recon = reconstruct(model, scan, execution=execution)
            record = {"epoch": epoch, "wall_s": result.history[epoch - 1].seconds + recon.seconds, "infer_s": recon.seconds}
            record.update(score(recon.object, recon.illuminated))
            curve.records.append(record)
    for path in sorted(checkpoint_dir.glob("*.ckpt")):
        path.unlink()
    return result.model, curve


def iterative_curve(
    method: Method, scan: Scan, settings: Settings, epochs: int, every: int, score: Any, **kwargs: Any
) -> tuple[Curve, np.ndarray]:
    out = run_ptychi(
        scan.patterns, scan.positions_yx_px, scan.probe, scan.object_shape,
        method=method, epochs=epochs, record_every=every, callback_truth=score, threads=settings.threads,
        bad_pixels=scan.bad_pixels, device="gpu" if settings.accelerator in ("gpu", "cuda") else "cpu", **kwargs,
    )  # fmt: skip
    curve = Curve({"lsqml": "pty-chi LSQML", "epie": "pty-chi ePIE"}[method], out["records"])
    curve.extra.update(
        seconds_per_epoch=out["seconds_per_epoch"], total_s=out["total_s"], cpu_s=out["cpu_s"], setup_s=out["setup_s"],
        peak_rss_bytes=out["peak_rss_bytes"], batch_size=out["batch_size"], noise_model=out["noise_model"], epochs=epochs,
    )  # fmt: skip
    return curve, out["object"]


def summary_row(curve: Curve) -> dict[str, Any]:
    """One table row: final quality, wall time, time to 95 % of the final phase SSIM."""
    final = curve.final()
    target = QUALITY_FRACTION * final["phase_ssim"]
    return {
        "method": curve.method,
        "epochs": final.get("epoch"),
        "wall_s": final["wall_s"],
        "time_to_95pct_s": curve.time_to(target),
        "phase_ssim": final["phase_ssim"],
        "amplitude_ssim": final["amplitude_ssim"],
        "phase_psnr_db": final["phase_psnr_db"],
        "frc50": final["frc50"],
        "flat_phase_ssim": final["flat_phase_ssim"],
        "patterns_per_s": curve.extra.get("patterns_per_s"),
        "peak_rss_mib": curve.extra.get("peak_rss_bytes", 0) / 2**20,
    }


# ---------------------------------------------------------------------------------------------- cases


def run_case(size: int, photons: float, kind: str, settings: Settings, out: Path, work: Path, name: str) -> dict[str, Any]:
    label = f"N{size}_{kind}_{photons:.0e}".replace("+", "")
    print(f"\n=== {label}: {settings.n_positions} patterns of {size} px, {photons:.0e} photons, {kind} ===", flush=True)
    scan_a = simulate_scan(kind, photons, settings.n_positions, size, settings.test_seed)
    scan_b = simulate_scan(kind, photons, settings.n_positions, size, settings.train_seed)
    assert scan_a.ground_truth is not None and scan_b.ground_truth is not None
    lit_a, lit_b = illumination(scan_a), illumination(scan_b)
    truth_a = scan_a.ground_truth

    def score_a(obj: np.ndarray, lit: np.ndarray | None = None) -> dict[str, Any]:
        return quality(obj, truth_a, lit_a if lit is None else lit)

    model, pinn = train_pinn(scan_a, settings, settings.pinn_epochs, work, settings.pinn_record_every, score_a)
    recon_a = reconstruct(model, scan_a, execution=execution_config(settings, False))
    pinn.extra["patterns_per_s"] = recon_a.patterns_per_second
    print(
        f"PINN self-supervised: {pinn.extra['seconds_per_epoch']:.2f} s/epoch, best epoch {pinn.extra['best_epoch']}", flush=True
    )

    recon_b = reconstruct(model, scan_b, execution=execution_config(settings, False))
    unseen = Curve("PINN unseen scan (inference only)")
    unseen.records.append(
        {"epoch": 0, "wall_s": recon_b.seconds, **quality(recon_b.object, scan_b.ground_truth, recon_b.illuminated)}
    )
    unseen.extra.update(patterns_per_s=recon_b.patterns_per_second, infer_s=recon_b.seconds)

    lsqml, lsqml_obj = iterative_curve("lsqml", scan_a, settings, settings.lsqml_epochs, settings.lsqml_record_every, score_a)
    print(f"LSQML: {lsqml.extra['seconds_per_epoch']:.2f} s/epoch", flush=True)
    epie, epie_obj = iterative_curve("epie", scan_a, settings, settings.epie_epochs, settings.epie_record_every, score_a)
    print(f"ePIE: {epie.extra['seconds_per_epoch']:.2f} s/epoch", flush=True)
    # the unseen-scan reference: LSQML's quality on scan B itself (same settings)
    lsqml_b_score = quality(
        run_ptychi(scan_b.patterns, scan_b.positions_yx_px, scan_b.probe, scan_b.object_shape, method="lsqml",
                   epochs=settings.lsqml_epochs, record_every=settings.lsqml_epochs, threads=settings.threads,
                   keep_snapshots=False)["object"],
        scan_b.ground_truth, lit_b,
    )  # fmt: skip

    curves = [pinn, lsqml, epie, unseen]
    headline = headline_ratios(pinn, lsqml, unseen, lsqml_b_score)
    plot_curves(curves, out / f"{name}_{label}_quality_vs_time.png", f"{label}: phase SSIM vs wall time")
    images = [
        ("truth A", truth_a, truth_a, lit_a),
        ("PINN (a) on A", recon_a.object, truth_a, lit_a),
        ("LSQML on A", lsqml_obj, truth_a, lit_a),
        ("ePIE on A", epie_obj, truth_a, lit_a),
        ("truth B", scan_b.ground_truth, scan_b.ground_truth, lit_b),
        ("PINN (b) unseen B", recon_b.object, scan_b.ground_truth, lit_b),
    ]
    plot_reconstructions(images, out / f"{name}_{label}_reconstructions.png")
    return {
        "label": label,
        "N": size,
        "photons": photons,
        "kind": kind,
        "n_positions": settings.n_positions,
        "object_shape": list(scan_a.object_shape),
        "rows": [summary_row(curve) for curve in curves],
        "curves": {curve.method: {"records": curve.records, "extra": curve.extra} for curve in curves},
        "lsqml_on_unseen_scan": lsqml_b_score,
        "headline": headline,
    }


def headline_ratios(pinn: Curve, lsqml: Curve, unseen: Curve, lsqml_unseen: dict[str, Any]) -> dict[str, Any]:
    """README ratios: (a) PINN time to LSQML's final phase SSIM ÷ LSQML's time; (b) quality and speed."""
    target = lsqml.final()["phase_ssim"]
    lsqml_time = lsqml.final()["wall_s"]
    pinn_time = pinn.time_to(target)
    return {
        "lsqml_final_phase_ssim": target,
        "lsqml_wall_s": lsqml_time,
        "pinn_time_to_lsqml_quality_s": pinn_time,
        "a_time_ratio": None if pinn_time is None else pinn_time / lsqml_time,
        "a_pinn_best_phase_ssim_fraction": max(r["phase_ssim"] for r in pinn.records) / target if pinn.records else None,
        "b_unseen_phase_ssim_fraction": unseen.final()["phase_ssim"] / lsqml_unseen["phase_ssim"],
        "b_speed_ratio": lsqml_time / unseen.final()["wall_s"],
        "goals": {"a_time_ratio": "<= 1.0", "b_unseen_phase_ssim_fraction": ">= 0.9", "b_speed_ratio": ">= 100"},
    }


# ---------------------------------------------------------------------------------------------- real data


def crop_square(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    size = min(first.shape)
    top, left = (first.shape[0] - size) // 2, (first.shape[1] - size) // 2
    return first[top : top + size, left : left + size], second[top : top + size, left : left + size]


def frc_between(estimate: np.ndarray, reference: np.ndarray, lit: np.ndarray) -> dict[str, float]:
    """Register ``estimate`` to ``reference`` (shift, phase ramp, scale) and report FRC crossings."""
    aligned, ref, shift = align_to_reference(estimate, reference, lit)
    aligned, ref = crop_square(aligned, ref)
    nyquist_rings = min(aligned.shape) // 2
    seventh = frc_threshold_crossing(aligned, ref, HALF_SCAN_FRC_THRESHOLD)
    half = frc_threshold_crossing(aligned, ref, 0.5)
    phase_ref = np.angle(ref)
    from skimage.metrics import structural_similarity

    ssim = structural_similarity(phase_ref, np.angle(aligned), data_range=float(np.ptp(phase_ref)) or 1.0)
    return {
        "frc_1_7_fraction_of_nyquist": seventh,
        "frc_1_7_ring": seventh * nyquist_rings,
        "frc_0_5_fraction_of_nyquist": half,
        "rings_to_nyquist": nyquist_rings,
        "phase_ssim_vs_reference": float(ssim),
        "registration_shift_yx_px": list(shift),
    }


def run_real(settings: Settings, out: Path, work: Path, name: str) -> dict[str, Any]:
    print("\n=== real Siemens star (shared/data) ===", flush=True)
    scan = load_scan(REAL_SCAN, ReadOptions(margin_px=REAL_MARGIN_PX, max_patterns=settings.real_max_patterns))
    reference = np.load(REAL_REFERENCE)["object"]
    lit = illumination(scan)
    result: dict[str, Any] = {"patterns": scan.count, "N": scan.size_px, "object_shape": list(scan.object_shape)}
    if reference.shape != scan.object_shape:
        result["note"] = f"reference grid {reference.shape} != ours {scan.object_shape}; compared on the common part"
        rows, cols = min(reference.shape[0], scan.object_shape[0]), min(reference.shape[1], scan.object_shape[1])
        reference = reference[:rows, :cols]
    halves = [np.arange(0, scan.count, 2), np.arange(1, scan.count, 2)]

    def fit(obj: np.ndarray) -> np.ndarray:
        return obj[: reference.shape[0], : reference.shape[1]]

    lit_ref = fit(lit)
    model, pinn = train_pinn(scan, settings, settings.real_pinn_epochs, work, None)
    recon = reconstruct(model, scan, execution=execution_config(settings, False))
    result["pinn"] = {
        "seconds_train": pinn.extra["seconds_train"], "seconds_per_epoch": pinn.extra["seconds_per_epoch"],
        "epochs": pinn.extra["epochs"], "seconds_infer": recon.seconds, "patterns_per_s": recon.patterns_per_second,
        "vs_reference": frc_between(fit(recon.object), reference, lit_ref),
    }  # fmt: skip
    print(f"PINN vs reference: {result['pinn']['vs_reference']}", flush=True)
    half_objects = []
    for index in halves:
        half_scan = scan.subset(index)
        half_model, _ = train_pinn(half_scan, settings, settings.real_pinn_epochs, work, None)
        half_objects.append(reconstruct(half_model, half_scan, execution=execution_config(settings, False)).object)
    result["pinn"]["half_scan"] = frc_between(half_objects[1], half_objects[0], lit)
    print(f"PINN half-scan FRC: {result['pinn']['half_scan']}", flush=True)

    lsqml_halves = []
    for index in halves:
        half_scan = scan.subset(index)
        out_half = run_ptychi(
            half_scan.patterns, half_scan.positions_yx_px, half_scan.probe, half_scan.object_shape, method="lsqml",
            epochs=settings.real_lsqml_epochs, record_every=settings.real_lsqml_epochs, threads=settings.threads,
            keep_snapshots=False, probe_optimizable=True,
        )  # fmt: skip
        lsqml_halves.append(out_half)
    result["lsqml"] = {
        "epochs": settings.real_lsqml_epochs,
        "seconds_per_epoch_half_scan": float(np.mean([h["seconds_per_epoch"] for h in lsqml_halves])),
        "half_scan": frc_between(lsqml_halves[1]["object"], lsqml_halves[0]["object"], lit),
        "first_half_vs_reference": frc_between(fit(lsqml_halves[0]["object"]), reference, lit_ref),
    }
    print(f"LSQML half-scan FRC: {result['lsqml']['half_scan']}", flush=True)
    images = [
        ("LSQML reference", reference, reference, lit_ref),
        ("PINN (all patterns)", fit(recon.object), reference, lit_ref),
        ("LSQML half 1 (ours)", fit(lsqml_halves[0]["object"]), reference, lit_ref),
        ("PINN half 1", fit(half_objects[0]), reference, lit_ref),
    ]
    plot_reconstructions(images, out / f"{name}_real_siemens_reconstructions.png")
    return result


# ---------------------------------------------------------------------------------------------- output


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(curves: list[Curve], path: Path, title: str) -> None:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for curve in curves:
        times = [r["wall_s"] for r in curve.records]
        values = [r["phase_ssim"] for r in curve.records]
        style = "*" if len(times) == 1 else ".-"
        axis.plot(times, values, style, label=curve.method, markersize=10 if len(times) == 1 else 5)
    if curves and curves[0].records:
        axis.axhline(curves[0].records[-1]["flat_phase_ssim"], color="grey", lw=0.8, ls=":", label="flat object")
    axis.set_xscale("log")
    axis.set_xlabel("wall time (s, log)")
    axis.set_ylabel("phase SSIM (ambiguities removed)")
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_reconstructions(images: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], path: Path) -> None:
    """Phase of each reconstruction, aligned to its reference and cropped to the lit box."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(images), figsize=(2.6 * len(images), 2.9))
    for axis, (title, obj, ref, lit) in zip(np.atleast_1d(axes), images, strict=True):
        aligned, _, _ = align_to_reference(obj, ref, lit)
        axis.imshow(np.angle(aligned), cmap="gray")
        axis.set_title(title, fontsize=8)
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.3g}"
    return str(value)


def _table_row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


COLUMNS = (
    "method", "epochs", "wall s", "time to 95 % s", "phase SSIM", "amp SSIM", "phase PSNR dB", "FRC50",
    "flat phase SSIM", "patterns/s infer", "peak RSS MiB",
)  # fmt: skip


def markdown(results: dict[str, Any]) -> str:
    """The results as markdown tables, one per case, plus the real-data table."""
    lines = [f"# Benchmark `{results['name']}`", "", f"Machine: {results['machine']['description']}", ""]
    for case in results["cases"]:
        lines += [f"## {case['label']}", "", _table_row(list(COLUMNS)), "|" + "---|" * len(COLUMNS)]
        for row in case["rows"]:
            lines.append(
                _table_row([
                    row["method"], _fmt(row["epochs"]), _fmt(row["wall_s"], 1), _fmt(row["time_to_95pct_s"], 1),
                    _fmt(row["phase_ssim"]), _fmt(row["amplitude_ssim"]), _fmt(row["phase_psnr_db"], 1), _fmt(row["frc50"]),
                    _fmt(row["flat_phase_ssim"]), _fmt(row["patterns_per_s"], 1), _fmt(row["peak_rss_mib"], 0),
                ])
            )  # fmt: skip
        head = case["headline"]
        lines += [
            "",
            f"Headline: (a) PINN time to LSQML's final phase SSIM ({_fmt(head['lsqml_final_phase_ssim'])}) "
            f"÷ LSQML's time = {_fmt(head['a_time_ratio'], 2)} (goal ≤ 1; PINN's best reached "
            f"{_fmt(head['a_pinn_best_phase_ssim_fraction'], 2)} of it); (b) unseen-scan phase SSIM ÷ LSQML's on that "
            f"scan = {_fmt(head['b_unseen_phase_ssim_fraction'], 2)} (goal ≥ 0.9) at {_fmt(head['b_speed_ratio'], 0)}× "
            "LSQML's speed (goal ≥ 100×).",
            "",
        ]
    real = results.get("real")
    if real:
        pinn, lsqml = real["pinn"], real["lsqml"]
        rings = pinn["half_scan"]["rings_to_nyquist"]
        lines += [
            f"## Real Siemens star ({real['patterns']} patterns, N={real['N']})",
            "",
            _table_row(["method", f"half-scan FRC 1/7 ring (of {rings})", "vs reference: FRC 1/7 ring, phase SSIM", "wall s"]),
            "|---|---|---|---|",
            _table_row([
                f"PINN self-supervised ({pinn['epochs']} epochs)", _fmt(pinn["half_scan"]["frc_1_7_ring"], 0),
                f"{_fmt(pinn['vs_reference']['frc_1_7_ring'], 0)}, {_fmt(pinn['vs_reference']['phase_ssim_vs_reference'])}",
                _fmt(pinn["seconds_train"] + pinn["seconds_infer"], 1),
            ]),
            _table_row([
                f"pty-chi LSQML, probe refined ({lsqml['epochs']} epochs per half)", _fmt(lsqml["half_scan"]["frc_1_7_ring"], 0),
                f"half 1: {_fmt(lsqml['first_half_vs_reference']['frc_1_7_ring'], 0)}, "
                f"{_fmt(lsqml['first_half_vs_reference']['phase_ssim_vs_reference'])}",
                f"{_fmt(lsqml['seconds_per_epoch_half_scan'] * lsqml['epochs'], 1)} per half",
            ]),
            "",
        ]  # fmt: skip
    return "\n".join(lines)


def machine_description(threads: int) -> dict[str, Any]:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import importlib.metadata as md

    versions: dict[str, str | None] = {}
    for dist in ("torch", "ptychi", "lightning", "numpy", "scikit-image"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    cores = os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "description": f"{cpu}, {cores} cores visible, {threads} torch threads" + (f", GPU {gpu}" if gpu else ""),
        "cpu": cpu, "cores": cores, "threads": threads, "gpu": gpu, "python": platform.python_version(),
        "platform": platform.platform(), "versions": versions,
    }  # fmt: skip


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if not isinstance(v, np.ndarray)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def print_table(results: dict[str, Any]) -> None:
    for case in results["cases"]:
        print(f"\n{case['label']}")
        print(f"{'method':<36}{'wall s':>9}{'t95 s':>9}{'phaseSSIM':>10}{'ampSSIM':>9}{'FRC50':>7}{'pat/s':>9}")
        for row in case["rows"]:
            print(f"{row['method']:<36}{_fmt(row['wall_s'], 1):>9}{_fmt(row['time_to_95pct_s'], 1):>9}"
                  f"{_fmt(row['phase_ssim']):>10}{_fmt(row['amplitude_ssim']):>9}{_fmt(row['frc50'], 2):>7}"
                  f"{_fmt(row['patterns_per_s'], 1):>9}")  # fmt: skip
        head = case["headline"]
        print(f"headline: (a) time ratio {_fmt(head['a_time_ratio'], 2)}  (b) unseen SSIM fraction "
              f"{_fmt(head['b_unseen_phase_ssim_fraction'], 2)} at {_fmt(head['b_speed_ratio'], 0)}x speed")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings that finish in a few minutes")
    parser.add_argument("--name", default=None, help="results/<name>.json|.md (default: quick or cpu)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--sizes", type=int, nargs="+")
    parser.add_argument("--photons", type=float, nargs="+")
    parser.add_argument("--kinds", nargs="+", choices=("siemens", "lines"))
    parser.add_argument("--positions", type=int, dest="n_positions")
    parser.add_argument("--pinn-epochs", type=int)
    parser.add_argument("--n-filters-scale", type=int)
    parser.add_argument("--lsqml-epochs", type=int)
    parser.add_argument("--epie-epochs", type=int)
    parser.add_argument("--real-pinn-epochs", type=int)
    parser.add_argument("--real-lsqml-epochs", type=int)
    parser.add_argument("--real-max-patterns", type=int)
    parser.add_argument("--no-real", dest="real", action="store_false", default=None)
    parser.add_argument("--no-simulated", action="store_true")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--accelerator", choices=("cpu", "gpu", "cuda"))
    args = parser.parse_args(argv)

    settings = QUICK if args.quick else Settings()
    overrides = {
        key: (tuple(value) if isinstance(value, list) else value)
        for key, value in vars(args).items()
        if key in Settings.__dataclass_fields__ and value is not None
    }
    settings = Settings(**{**asdict(settings), **overrides})
    name = args.name or ("quick" if args.quick else "cpu")
    torch.set_num_threads(settings.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pinn-bench-"))

    started = time.perf_counter()
    results: dict[str, Any] = {
        "name": name,
        "settings": asdict(settings),
        "machine": machine_description(settings.threads),
        "cases": [],
    }
    if not args.no_simulated:
        for size in settings.sizes:
            for photons in settings.photons:
                for kind in settings.kinds:
                    results["cases"].append(run_case(size, photons, kind, settings, out, work, name))
    if settings.real:
        results["real"] = run_real(settings, out, work, name)
    shutil.rmtree(work, ignore_errors=True)
    results["total_s"] = time.perf_counter() - started
    (out / f"{name}.json").write_text(json.dumps(_jsonable(results), indent=2))
    (out / f"{name}.md").write_text(markdown(results))
    print_table(results)
    print(f"\nwrote {out / (name + '.json')}, {out / (name + '.md')} and PNGs ({results['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
