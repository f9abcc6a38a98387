"""Inference and training throughput of the PtychoPINN network on one accelerator (issue 4, item 3).

For N = 64, 128, 256, fp32 vs bf16-mixed, eager vs ``torch.compile``: patterns per second of
inference (network forward) and of a training step (forward, physics forward model, Poisson NLL,
backward, Adam step), and peak accelerator memory. Optionally one Lightning epoch end to end, and
(``--reconstruct``, needs scipy) refinement seconds per epoch and streaming throughput: a whole
reconstruction (shipped model + default refinement, ``engine.inference.reconstruct``) per scan.
Needs only torch and numpy (plus this repository on ``sys.path``); lightning/scipy only for the
optional end-to-end epoch. Writes ``gpu_bench.json`` under ``$OUT`` (or ``--out``).

    python benchmarks/gpu_bench.py                         # CUDA, full (≤ ~8 min on an H200)
    python benchmarks/gpu_bench.py --device cpu --quick    # a smoke test anywhere
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ptychodus_pinn.engine import physics
from ptychodus_pinn.engine.config import ModelConfig
from ptychodus_pinn.engine.model import PinnModel, TrainingRecord
from ptychodus_pinn.engine.network import parameter_count

DEFAULT_BATCH = {32: 256, 64: 256, 128: 128, 256: 32}


def soft_disk_probe(size: int) -> np.ndarray:
    """(1, N, N) soft disk with quadratic phase (radius N/4), like the simulator's."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) - size // 2
    radius = np.hypot(yy, xx)
    radius_px = size / 4
    amplitude = 0.5 * (1 - np.tanh((radius - radius_px) / 2.0))
    return (amplitude * np.exp(2j * (radius / radius_px) ** 2)).astype(np.complex64)[None]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16-mixed":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def timed_loop(step: Any, device: torch.device, min_seconds: float, min_iterations: int) -> tuple[float, int]:
    """Seconds per call of ``step`` (after the caller's warm-up), over at least the given time/calls."""
    synchronize(device)
    started = time.perf_counter()
    iterations = 0
    while iterations < min_iterations or time.perf_counter() - started < min_seconds:
        step()
        iterations += 1
    synchronize(device)
    return (time.perf_counter() - started) / iterations, iterations


def bench_one(
    size: int, batch: int, precision: str, compiled: bool, device: torch.device, args: argparse.Namespace
) -> dict[str, Any]:
    """Inference and training throughput of one configuration."""
    config = ModelConfig(N=size, n_filters_scale=args.n_filters_scale)
    probe = soft_disk_probe(size)
    model = PinnModel(config, probe, TrainingRecord(intensity_scale=1e5 / float(np.sum(np.abs(probe) ** 2)),
                                                    input_normalization=1.0, mean_total_counts=1e5)).to(device)  # fmt: skip
    generator = torch.compile(model.generator) if compiled else model.generator
    counts = torch.poisson(torch.full((batch, 1, size, size), 1e5 / size**2, device=device))
    network_input = torch.sqrt(counts) * (size / math.sqrt(1e5))
    scale = model.record.intensity_scale
    entry: dict[str, Any] = {"N": size, "batch": batch, "precision": precision, "compile": compiled,
                             "parameters": parameter_count(model.generator)}  # fmt: skip

    def infer() -> None:
        with torch.no_grad(), autocast(device, precision):
            generator(network_input)

    optimizer = torch.optim.Adam(model.generator.parameters(), lr=1e-4)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            patches = generator(network_input)
        expected = model.expected_counts(patches[:, 0], scale)
        loss = physics.poisson_nll(expected, counts[:, 0], None, 1e5)
        loss.backward()
        optimizer.step()

    for name, step in (("inference", infer), ("training", train_step)):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        warm = time.perf_counter()
        for _ in range(args.warmup):
            step()
        synchronize(device)
        warmup_s = time.perf_counter() - warm
        seconds, iterations = timed_loop(step, device, args.min_seconds, args.min_iterations)
        entry[name] = {
            "patterns_per_s": batch / seconds,
            "ms_per_batch": 1e3 * seconds,
            "iterations": iterations,
            "warmup_s": warmup_s,
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
        }
    return entry


def bench_lightning_epoch(size: int, device: torch.device, precision: str, args: argparse.Namespace) -> dict[str, Any]:
    """One end-to-end Lightning epoch (data loading, grouping, logging) on a simulated scan."""
    from ptychodus_pinn.engine.config import Accelerator, ExecutionConfig, LoggerKind, Precision, RunConfig, TrainingConfig
    from ptychodus_pinn.engine.simulate import simulate_scan
    from ptychodus_pinn.engine.training import train

    scan = simulate_scan("siemens", 1e5, args.lightning_patterns, size, 0)
    epochs = 2
    config = RunConfig(
        model=ModelConfig(N=size, n_filters_scale=args.n_filters_scale),
        training=TrainingConfig(epochs=epochs, batch_size=args.lightning_batch, validation_fraction=0.0),
        execution=ExecutionConfig(accelerator=Accelerator.GPU if device.type == "cuda" else Accelerator.CPU,
            precision=Precision(precision),
            logger=LoggerKind.NONE, enable_progress_bar=False),
    )  # fmt: skip
    result = train([scan], config)
    first, last = result.history[0].seconds, result.history[-1].seconds
    per_epoch = (last - first) / max(epochs - 1, 1)
    return {"N": size, "precision": precision, "patterns": scan.count, "batch": args.lightning_batch,
            "seconds_first_epoch": first, "seconds_per_epoch": per_epoch, "patterns_per_s": scan.count / per_epoch}  # fmt: skip


def bench_reconstruct(size: int, positions: int, device: torch.device, scans: int) -> dict[str, Any]:
    """Refinement s/epoch and whole reconstructions per minute for simulated N=size scans on ``device``."""
    from ptychodus_pinn.engine.config import ExecutionConfig, RefinementConfig
    from ptychodus_pinn.engine.inference import reconstruct
    from ptychodus_pinn.engine.persistence import load_pretrained, pretrained_path
    from ptychodus_pinn.engine.refinement import RefinementProblem, iterate_refinement
    from ptychodus_pinn.engine.simulate import simulate_scan

    execution = ExecutionConfig(accelerator="cuda" if device.type == "cuda" else "cpu")
    model = load_pretrained(size) if pretrained_path(size) is not None else None
    simulated = [simulate_scan("natural", 1e5, positions, size, seed) for seed in range(scans + 1)]
    problem = RefinementProblem(simulated[0], np.ones(simulated[0].object_shape, np.complex64), device)
    epochs = [report.seconds for report in iterate_refinement(problem, RefinementConfig(epochs=20))]
    reconstruct(model, simulated[0], execution=execution)  # warm-up (allocator, cuFFT plans)
    per_scan = []
    for scan in simulated[1:]:
        synchronize(device)
        tick = time.perf_counter()
        reconstruct(model, scan, execution=execution)
        synchronize(device)
        per_scan.append(time.perf_counter() - tick)
    return {
        "N": size, "patterns": positions, "model": "shipped" if model is not None else "none (refinement from flat)",
        "refinement_s_per_epoch": (epochs[-1] - epochs[4]) / 15 if len(epochs) == 20 else float("nan"),
        "refinement_epochs_default": RefinementConfig().epochs,
        "refinement_half_resolution_epochs_default": RefinementConfig().half_resolution_epochs, "seconds_per_scan": per_scan,
        "scans_per_minute": 60.0 / float(np.median(per_scan)),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="small sizes and batches, short timing (smoke test)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--precisions", nargs="+", default=["32", "bf16-mixed"], choices=("32", "bf16-mixed"))
    parser.add_argument(
        "--compile",
        dest="compile_modes",
        nargs="+",
        default=None,
        choices=("off", "on"),
        help="eager and/or torch.compile (default: off on; --quick: off); all eager runs go first",
    )
    parser.add_argument("--batch", type=int, default=None, help="batch size for every N (default: per-N table)")
    parser.add_argument("--n-filters-scale", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--min-iterations", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=480.0, help="skip what is left after this many seconds")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--lightning", action=argparse.BooleanOptionalAction, default=True, help="also time one Lightning epoch")
    parser.add_argument("--lightning-patterns", type=int, default=1024)
    parser.add_argument(
        "--reconstruct", action=argparse.BooleanOptionalAction, default=True,
        help="also time refinement per epoch and whole reconstructions per scan (streaming throughput)",
    )  # fmt: skip
    parser.add_argument("--reconstruct-scans", type=int, default=3)
    parser.add_argument("--lightning-batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = args.sizes or [32, 64]
        args.batch = args.batch or 4
        args.warmup, args.min_seconds, args.min_iterations = 1, 0.0, 1
        args.n_filters_scale = 1
        args.lightning_patterns, args.lightning_batch = 32, 16
        args.compile_modes = args.compile_modes or ["off"]
    args.compile_modes = args.compile_modes or ["off", "on"]
    sizes = args.sizes or [64, 128, 256]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True

    started = time.perf_counter()
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "n_filters_scale": args.n_filters_scale,
        "entries": [],
        "skipped": [],
        "errors": [],
    }
    print(
        f"{'N':>4} {'batch':>5} {'precision':>10} {'compile':>7} {'infer pat/s':>12} {'train pat/s':>12} "
        f"{'peak MiB':>9} {'warm-up s':>9}",
        flush=True,
    )

    def save() -> None:
        results["total_s"] = time.perf_counter() - started
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "gpu_bench.json").write_text(json.dumps(results, indent=2))

    # eager first: compile warm-ups are long, so the budget cuts compiled runs, never eager ones
    for compile_mode in args.compile_modes:
        for size in sizes:
            for precision in args.precisions:
                label = f"N={size} {precision} compile={compile_mode}"
                if time.perf_counter() - started > args.budget_s:
                    results["skipped"].append(label)
                    continue
                batch = args.batch or DEFAULT_BATCH.get(size, 32)
                try:
                    entry = bench_one(size, batch, precision, compile_mode == "on", device, args)
                except Exception as error:
                    results["errors"].append({"config": label, "error": repr(error), "traceback": traceback.format_exc(limit=3)})
                    print(f"{label}: FAILED {error!r}", flush=True)
                    continue
                results["entries"].append(entry)
                save()
                peak = entry["training"]["peak_memory_bytes"]
                print(f"{size:>4} {batch:>5} {precision:>10} {compile_mode:>7} {entry['inference']['patterns_per_s']:>12.1f} "
                      f"{entry['training']['patterns_per_s']:>12.1f} {peak / 2**20 if peak else float('nan'):>9.0f} "
                      f"{entry['inference']['warmup_s'] + entry['training']['warmup_s']:>9.1f}", flush=True)  # fmt: skip

    def attempt(label: str, into: list[dict[str, Any]], measure: Any, *arguments: Any) -> dict[str, Any] | None:
        """One optional measurement, added to ``into``: skipped past the budget, a failure recorded (the rest still run)."""
        if time.perf_counter() - started > args.budget_s:
            results["skipped"].append(label)
            return None
        try:
            entry: dict[str, Any] = measure(*arguments)
        except Exception as error:
            results["errors"].append({"config": label, "error": repr(error)})
            print(f"{label}: FAILED {error!r}", flush=True)
            return None
        into.append(entry)
        save()
        return entry

    if args.lightning:
        results["lightning"] = []
        for precision in args.precisions:
            size = sizes[0] if args.quick else 64
            entry = attempt(f"lightning {precision}", results["lightning"], bench_lightning_epoch, size, device, precision, args)
            if entry is None:
                continue
            print(
                f"Lightning epoch N={entry['N']} {precision}: {entry['seconds_per_epoch']:.2f} s/epoch, "
                f"{entry['patterns_per_s']:.0f} patterns/s (first epoch {entry['seconds_first_epoch']:.1f} s)",
                flush=True,
            )
    if args.reconstruct:
        results["reconstruct"] = []
        for size, positions in ((32, 144),) if args.quick else ((64, 576), (128, 576)):
            scans = 1 if args.quick else args.reconstruct_scans
            entry = attempt(f"reconstruct N={size}", results["reconstruct"], bench_reconstruct, size, positions, device, scans)
            if entry is None:
                continue
            print(
                f"Reconstruct N={size}, {positions} patterns ({entry['model']}): refinement "
                f"{entry['refinement_s_per_epoch'] * 1e3:.1f} ms/epoch, whole scan {min(entry['seconds_per_scan']):.2f} s "
                f"({entry['scans_per_minute']:.0f} scans/min)",
                flush=True,
            )
    save()
    if args.out is not None:
        print(f"wrote {args.out / 'gpu_bench.json'}")
    return 1 if results["errors"] and not results["entries"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
