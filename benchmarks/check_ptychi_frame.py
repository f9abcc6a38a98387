"""Prove that ``ptychi_runner`` maps our conventions (SPEC §4) onto pty-chi's correctly.

A scan is simulated here with plain numpy, independently of both pty-chi and the engine: an
analytic complex object evaluated at the exact (sub-pixel) patch coordinates, a soft-disk probe
with quadratic phase, jittered raster positions, Poisson counts at 1e5 photons per pattern, our
far field ``fftshift(fft2(ifftshift(psi), norm='ortho'))``. Then:

1. pty-chi's own forward model, fed the true object on our grid, must reproduce the noiseless
   simulated intensities (and must not when the positions are off by half a pixel);
2. LSQML (probe and positions fixed) must land on the truth with < 0.5 px residual shift
   (``phase_cross_correlation`` with upsampling) and a good phase SSIM;
3. seconds per epoch are measured (N=64, 576 patterns, 2 threads by default).

Run in the benchmark venv: ``"${BENCH_VENV:-../bench-venv}"/bin/python benchmarks/check_ptychi_frame.py``.
Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.metrics import structural_similarity
from skimage.registration import phase_cross_correlation

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ptychi_runner import build_ptychi_task, run_ptychi

MAX_SHIFT_PX = 0.5
MIN_PHASE_SSIM = 0.8
MAX_FORWARD_REL_ERROR = 0.02


def analytic_object(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A smooth, asymmetric complex object evaluated at arbitrary (sub-pixel) coordinates."""
    height, width = shape
    cy, cx = 0.45 * height, 0.55 * width
    radius = np.hypot(rows - cy, cols - cx)
    angle = np.arctan2(rows - cy, cols - cx)
    window = 0.5 * (1 - np.tanh((radius - 0.38 * min(height, width)) / 3.0))
    star = 0.5 * (1 + np.tanh(2.0 * np.sin(16 * angle))) * window * (1 - np.exp(-((radius / 6.0) ** 2)))
    blob = np.exp(-(((rows - 0.25 * height) ** 2 + (cols - 0.2 * width) ** 2) / (2 * (0.06 * height) ** 2)))
    phase = 1.2 * star - 0.5 * blob + 0.2 * np.sin(2 * math.pi * cols / (0.7 * width))
    amplitude = 0.75 + 0.2 * np.cos(2 * math.pi * rows / (0.33 * height)) * np.cos(2 * math.pi * cols / (0.5 * width))
    amplitude -= 0.25 * blob
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def soft_disk_probe(size: int, radius_px: float, curvature_rad: float = 2.0, edge_px: float = 2.0) -> np.ndarray:
    """(1, N, N) soft-edged disk with quadratic phase, centred on pixel (N//2, N//2), Σ|P|² = 1."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) - size // 2
    radius = np.hypot(yy, xx)
    probe = 0.5 * (1 - np.tanh((radius - radius_px) / edge_px)) * np.exp(1j * curvature_rad * (radius / radius_px) ** 2)
    probe /= math.sqrt(float(np.sum(np.abs(probe) ** 2)))
    return probe.astype(np.complex64)[None]


def far_field(psi: np.ndarray) -> np.ndarray:
    """Our convention: centred, unitary DFT over the last two axes."""
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(psi, axes=axes), norm="ortho"), axes=axes)


def simulate(n_side: int, size: int, photons: float, seed: int) -> dict[str, Any]:
    """Jittered raster scan over the analytic object; probe in count units (scale = 1)."""
    rng = np.random.default_rng(seed)
    radius_px = size / 4
    step_px = 2 * radius_px * (1 - 0.7)
    rows, cols = np.divmod(np.arange(n_side * n_side), n_side)
    positions = np.stack([rows, cols], axis=1) * step_px + rng.uniform(-0.25, 0.25, (n_side * n_side, 2)) * step_px
    margin = 4
    positions = positions - positions.min(axis=0) + size // 2 + margin
    extent = np.ceil(positions.max(axis=0)).astype(int) + size - size // 2 + margin
    shape = (int(extent[0]), int(extent[1]))
    offsets = np.arange(size) - size // 2
    patch_rows = positions[:, 0, None, None] + offsets[None, :, None]
    patch_cols = positions[:, 1, None, None] + offsets[None, None, :]
    patches = analytic_object(patch_rows, patch_cols, shape)
    probe = soft_disk_probe(size, radius_px) * math.sqrt(photons)
    expected = (np.abs(far_field(patches[:, None] * probe[None])) ** 2).sum(axis=1)
    counts = rng.poisson(expected).astype(np.float32)
    grid_rows, grid_cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    return {
        "patterns": counts,
        "expected": expected.astype(np.float32),
        "positions": positions,
        "probe": probe,
        "shape": shape,
        "truth": analytic_object(grid_rows, grid_cols, shape),
    }


def scanned_region(positions: np.ndarray, shape: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns spanned by the probe centres (well constrained by overlap)."""
    lo = np.ceil(positions.min(axis=0)).astype(int)
    hi = np.floor(positions.max(axis=0)).astype(int) + 1
    return slice(max(lo[0], 0), min(hi[0], shape[0])), slice(max(lo[1], 0), min(hi[1], shape[1]))


def compare(recon: np.ndarray, truth: np.ndarray, region: tuple[slice, slice]) -> dict[str, float]:
    """Residual shift (px), phase/amplitude SSIM after removing the global phase offset."""
    rec, ref = recon[region], truth[region]
    rec = rec * np.exp(-1j * np.angle(np.vdot(ref, rec)))
    shift, _, _ = phase_cross_correlation(np.angle(ref), np.angle(rec), upsample_factor=100, normalization=None)
    phase_ref, phase_rec = np.angle(ref), np.angle(rec)
    phase_range = float(phase_ref.max() - phase_ref.min())
    amp_ref, amp_rec = np.abs(ref), np.abs(rec)
    flat = np.full_like(phase_ref, float(phase_ref.mean()))
    return {
        "shift_y_px": float(shift[0]),
        "shift_x_px": float(shift[1]),
        "shift_px": float(np.hypot(*shift)),
        "phase_ssim": float(structural_similarity(phase_ref, phase_rec, data_range=phase_range)),
        "amplitude_ssim": float(structural_similarity(amp_ref, amp_rec, data_range=float(amp_ref.max() - amp_ref.min()))),
        "flat_phase_ssim": float(structural_similarity(phase_ref, flat, data_range=phase_range)),
        "amplitude_ratio": float(np.median(amp_rec / np.maximum(amp_ref, 1e-6))),
    }


def forward_model_error(sim: dict[str, Any], offset_px: float) -> float:
    """Relative L2 error between pty-chi's predicted intensities (true object) and ours."""
    positions = sim["positions"] + offset_px
    task = build_ptychi_task(
        sim["patterns"], positions, sim["probe"], sim["shape"], intensity_scale=1.0, object_guess=sim["truth"]
    )
    with torch.no_grad():
        predicted = task.reconstructor.forward_model.forward(torch.arange(len(positions))).cpu().numpy()
    predicted = np.fft.fftshift(predicted, axes=(-2, -1))
    expected = sim["expected"]
    torch.set_default_device(None)  # pty-chi sets a process-wide default device; None drops its per-call mode
    return float(np.linalg.norm(predicted - expected) / np.linalg.norm(expected))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=24, help="positions per raster side (24 -> 576)")
    parser.add_argument("--size", type=int, default=64, help="pattern size N")
    parser.add_argument("--photons", type=float, default=1e5)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--record-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*requires_grad=True to a scalar")

    started = time.perf_counter()
    sim = simulate(args.side, args.size, args.photons, seed=7)
    print(
        f"simulated {len(sim['positions'])} patterns, N={args.size}, object {sim['shape']}, "
        f"{sim['patterns'].sum(axis=(1, 2)).mean():.3g} counts/pattern ({time.perf_counter() - started:.1f} s)"
    )

    fm_error = forward_model_error(sim, 0.0)
    fm_error_half = forward_model_error(sim, 0.5)
    print(
        f"pty-chi forward model vs our simulation: relative error {fm_error:.2e} (positions off by +0.5 px: {fm_error_half:.2e})"
    )

    region = scanned_region(sim["positions"], sim["shape"])
    truth = sim["truth"]
    out = run_ptychi(
        sim["patterns"],
        sim["positions"],
        sim["probe"],
        sim["shape"],
        method="lsqml",
        epochs=args.epochs,
        record_every=args.record_every,
        callback_truth=lambda obj: compare(obj, truth, region),
        threads=args.threads,
        intensity_scale=1.0,
    )
    print(f"\nLSQML (Poisson, probe and positions fixed, batch {out['batch_size']}, {args.threads} threads)")
    print(f"{'epoch':>6} {'wall s':>8} {'loss':>10} {'phase SSIM':>11} {'amp SSIM':>9} {'shift px':>9}")
    for rec in out["records"]:
        print(
            f"{rec['epoch']:>6} {rec['wall_s']:>8.1f} {rec['loss']:>10.4g} {rec['phase_ssim']:>11.3f} "
            f"{rec['amplitude_ssim']:>9.3f} {rec['shift_px']:>9.3f}"
        )
    final = out["records"][-1]
    print(
        f"\nseconds per epoch: {out['seconds_per_epoch']:.3f} (set-up {out['setup_s']:.1f} s), "
        f"peak RSS {out['peak_rss_bytes'] / 2**20:.0f} MiB"
    )
    print(
        f"final: residual shift ({final['shift_y_px']:+.3f}, {final['shift_x_px']:+.3f}) px, "
        f"phase SSIM {final['phase_ssim']:.3f} (flat object {final['flat_phase_ssim']:.3f}), "
        f"amplitude SSIM {final['amplitude_ssim']:.3f}, amplitude ratio {final['amplitude_ratio']:.3f}"
    )

    checks = {
        "forward model matches our simulation": fm_error < MAX_FORWARD_REL_ERROR,
        "half-pixel offset is detected": fm_error_half > 5 * fm_error,
        f"residual shift < {MAX_SHIFT_PX} px": final["shift_px"] < MAX_SHIFT_PX,
        f"phase SSIM > {MIN_PHASE_SSIM}": final["phase_ssim"] > MIN_PHASE_SSIM,
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}: {name}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "forward_model_rel_error": fm_error,
            "forward_model_rel_error_half_px_off": fm_error_half,
            "seconds_per_epoch": out["seconds_per_epoch"],
            "threads": args.threads,
            "patterns": len(sim["positions"]),
            "N": args.size,
            "records": [{k: v for k, v in r.items() if k != "object"} for r in out["records"]],
            "checks": checks,
        }
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
