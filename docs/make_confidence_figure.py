"""The confidence map beside the error it is meant to bound (docs/confidence.md).

    python docs/make_confidence_figure.py [--photons 1e4] [--epochs 100] [--repeats 6] [--quick]

Simulates a Siemens-star scan (``engine.simulate.simulate_scan``), reconstructs it with refinement
only (``reconstruct(None, scan, ...)``), removes the ambiguities (offset, ramp, shift, amplitude
scale: ``metrics.align_to_reference``) and compares the phase error with the predicted standard
deviation ``phase_std_rad``. ``--repeats`` more reconstructions of the same object with fresh
Poisson noise give the spread the counting noise really causes, pixel by pixel. Writes
docs/confidence.png and prints the numbers docs/confidence.md quotes (also as JSON).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from ptychodus_pinn.app.figures import _pyplot
from ptychodus_pinn.engine import physics
from ptychodus_pinn.engine.config import RefinementConfig
from ptychodus_pinn.engine.data import Scan
from ptychodus_pinn.engine.inference import reconstruct
from ptychodus_pinn.engine.metrics import align_to_reference, illuminated_box
from ptychodus_pinn.engine.simulate import simulate_scan

DOCS = Path(__file__).resolve().parent
ERODE_PX = 4  # the scored region of metrics.compare


def with_fresh_noise(scan: Scan, seed: int) -> Scan:
    """The same object, probe and positions, new Poisson counts."""
    assert scan.ground_truth is not None
    scale = float(scan.metadata["photons_per_pattern"]) / float(np.sum(np.abs(scan.probe) ** 2))
    expected = physics.expected_counts_on_grid(
        torch.from_numpy(scan.ground_truth), torch.from_numpy(scan.probe), scan.positions_yx_px, scale
    )
    counts = np.random.default_rng(1000 + seed).poisson(expected.numpy().astype(np.float64)).astype(np.float32)
    return Scan(counts, scan.positions_yx_px, scan.probe, scan.object_shape, object_guess=scan.object_guess,
                ground_truth=scan.ground_truth, metadata=dict(scan.metadata))  # fmt: skip


def phase_error(scan: Scan, epochs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """(aligned phase, phase error, predicted σ_φ, scored mask) on the scored box, and seconds."""
    assert scan.ground_truth is not None
    started = time.perf_counter()
    result = reconstruct(None, scan, refinement=RefinementConfig(epochs=epochs))
    seconds = time.perf_counter() - started
    assert result.phase_std_rad is not None
    aligned, truth, _ = align_to_reference(result.object, scan.ground_truth, result.illuminated, erode_px=ERODE_PX)
    rows, cols = illuminated_box(result.illuminated, ERODE_PX)
    error = np.angle(aligned * np.conj(truth))
    return np.angle(aligned), error, result.phase_std_rad[rows, cols], result.illuminated[rows, cols], seconds


def nll_gap(scan: Scan, epochs: int) -> tuple[float, int]:
    """How far below the truth's Poisson NLL the reconstruction got (nats); the maximum-likelihood
    estimate would be about p/2 below, p = 2 × (free object pixels) (Wilks)."""
    from ptychodus_pinn.engine.refinement import RefinementProblem

    assert scan.ground_truth is not None
    result = reconstruct(None, scan, refinement=RefinementConfig(epochs=epochs))
    ours = RefinementProblem(scan, result.object)
    true_scale = float(scan.metadata["photons_per_pattern"]) / float(np.sum(np.abs(scan.probe) ** 2))
    truth = RefinementProblem(scan, scan.ground_truth * np.sqrt(true_scale / ours.scale))
    nats_per_unit = ours.count * ours.mean_counts  # nll() is per pattern and per mean count
    gap = float((truth.nll(truth.canvas) - ours.nll(ours.canvas)) * nats_per_unit)
    return gap, int(np.count_nonzero(result.illuminated))  # p/2 = the lit pixels (amplitude and phase each)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photons", type=float, default=1e4)
    parser.add_argument("--positions", type=int, default=576)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=6, help="fresh-noise reconstructions for the empirical spread")
    parser.add_argument("--quick", action="store_true", help="small and fast (smoke test), writes nothing")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.positions, arguments.epochs, arguments.repeats = 64, 5, 2
    torch.manual_seed(0)
    scan = simulate_scan("siemens", photons=arguments.photons, n_positions=arguments.positions, N=64, seed=0)
    phase, error, std, lit, seconds = phase_error(scan, arguments.epochs)
    mask = lit & np.isfinite(std)
    absolute = np.abs(error[mask])
    pearson = float(stats.pearsonr(absolute, std[mask])[0])
    spearman = float(stats.spearmanr(absolute, std[mask])[0])
    # the ceiling: one draw of errors that follow the map exactly (σ·N(0,1)) correlates no better than this
    exact = np.abs(std[mask] * np.random.default_rng(0).standard_normal(int(mask.sum())))
    ceiling = (float(stats.pearsonr(exact, std[mask])[0]), float(stats.spearmanr(exact, std[mask])[0]))

    # the spread counting noise really causes: the same object, fresh noise, every reconstruction aligned to the truth
    errors = [error]
    for repeat in range(arguments.repeats):
        errors.append(phase_error(with_fresh_noise(scan, repeat), arguments.epochs)[1])
    stack = np.stack(errors)
    spread = stack.std(axis=0, ddof=1)
    bias = np.abs(stack.mean(axis=0))
    numbers = {
        "scan": f"siemens, N=64, {scan.count} positions, {arguments.photons:.0e} photons/pattern, "
        f"refinement only, {arguments.epochs} epochs",
        "seconds_per_reconstruction": round(seconds, 1),
        "scored_pixels": int(mask.sum()),
        "median_predicted_std_rad": float(np.median(std[mask])),
        "rms_phase_error_rad": float(np.sqrt(np.mean(error[mask] ** 2))),
        "pearson_abs_error_vs_std": pearson,
        "spearman_abs_error_vs_std": spearman,
        "pearson_spearman_if_errors_followed_the_map_exactly": ceiling,
        "nll_below_truth_nats_and_maximum_likelihood_expectation": nll_gap(scan, arguments.epochs),
        "repeats": len(errors),
        "median_noise_spread_over_predicted_std": float(np.median(spread[mask] / std[mask])),
        "spearman_noise_spread_vs_std": float(stats.spearmanr(spread[mask], std[mask])[0]),
        "median_systematic_error_rad": float(np.median(bias[mask])),
        "median_noise_spread_rad": float(np.median(spread[mask])),
    }
    print(json.dumps(numbers, indent=2))
    if arguments.quick:
        return

    plt = _pyplot()
    figure, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    masked = np.where(lit, 1.0, np.nan)
    shown = axes[0].imshow(phase * masked, cmap="viridis")
    axes[0].set_title("reconstructed phase (rad)", fontsize=9)
    figure.colorbar(shown, ax=axes[0], fraction=0.046)
    from matplotlib.colors import LogNorm

    low = float(np.percentile(std[mask], 1))
    high = float(max(np.percentile(np.abs(error[mask]), 99.5), np.percentile(std[mask], 99.5)))
    norm = LogNorm(vmin=low / 10, vmax=high)
    cmap = plt.get_cmap("magma_r").with_extremes(bad="lightgrey")
    shown = axes[1].imshow(np.abs(error) * masked, cmap=cmap, norm=norm)
    axes[1].set_title("|phase error| vs truth (rad)", fontsize=9)
    figure.colorbar(shown, ax=axes[1], fraction=0.046)
    shown = axes[2].imshow(std * masked, cmap=cmap, norm=norm)
    axes[2].set_title("predicted σ_φ (rad), same scale", fontsize=9)
    figure.colorbar(shown, ax=axes[2], fraction=0.046)
    for axis in axes[:3]:
        axis.set_axis_off()
    # binned: RMS error and noise spread against the predicted σ
    edges = np.quantile(std[mask], np.linspace(0, 1, 13))
    centres, rms, spreads = [], [], []
    for first, last in itertools.pairwise(edges):
        selected = mask & (std >= first) & (std <= last)
        if selected.sum() > 20:
            centres.append(float(np.median(std[selected])))
            rms.append(float(np.sqrt(np.mean(error[selected] ** 2))))
            spreads.append(float(np.sqrt(np.mean(spread[selected] ** 2))))
    axes[3].loglog(centres, rms, "o-", label="RMS error vs truth")
    axes[3].loglog(centres, spreads, "s-", label=f"noise spread ({len(errors)} noise draws)")
    line = np.array([min(centres), max(centres)])
    axes[3].loglog(line, line, "k--", label="= predicted σ_φ")
    axes[3].set_xlabel("predicted σ_φ (rad), binned")
    axes[3].set_ylabel("rad")
    axes[3].legend(fontsize=8)
    axes[3].set_title(f"Spearman(|error|, σ) = {spearman:.2f}", fontsize=9)
    figure.suptitle(numbers["scan"], fontsize=10)
    figure.tight_layout()
    path = DOCS / "confidence.png"
    figure.savefig(path, dpi=64, bbox_inches="tight")
    plt.close(figure)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
