"""Does refinement make the network's object worse, or only its phase SSIM? Four metrics per method.

At N = 128 the shipped network alone scores a higher phase SSIM than network + refinement and than
LSQML on Siemens stars and natural images (``results/pretrained-n128-cpu.md``). SSIM rewards smooth,
locally well-structured images; a quantitative phase image is judged by its values. This scores the
same reconstructions by phase and amplitude SSIM *and* PSNR against the truth, and by the Poisson
likelihood of patterns the reconstruction never saw: 58 of the 576 patterns (10 %) are held out, the
rest reconstructed, and the held-out patterns' NLL (dose-normalised, per pattern) computed from the
result with the scan's probe (lower is better; a method that fits noise does worse here).

Scans as ``pretrained_bench.py`` (576 patterns, 10⁵ photons, seed 11, five kinds; here on the 518
kept patterns); LSQML 200 epochs, probe and positions fixed. Run in the benchmark venv::

    "${BENCH_VENV:-../bench-venv}"/bin/python benchmarks/metric_check.py --size 128          # ~15 min
    "${BENCH_VENV:-../bench-venv}"/bin/python benchmarks/metric_check.py --kinds siemens natural
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import dataclasses
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from streaming_bench import CASES, illuminated  # noqa: E402
from training_targets_bench import publish  # noqa: E402

from ptychodus_pinn.engine.config import RefinementConfig, RefinementStart  # noqa: E402
from ptychodus_pinn.engine.data import Scan  # noqa: E402
from ptychodus_pinn.engine.inference import reconstruct  # noqa: E402
from ptychodus_pinn.engine.metrics import compare  # noqa: E402
from ptychodus_pinn.engine.persistence import load_pretrained  # noqa: E402
from ptychodus_pinn.engine.refinement import RefinementProblem, scaled_start  # noqa: E402
from ptychodus_pinn.engine.simulate import simulate_scan  # noqa: E402

HELD_OUT_FRACTION = 0.1
METHODS = ("network alone", "network + refinement", "refinement from flat", "LSQML")
METRICS = ("phase_ssim", "phase_psnr_db", "amplitude_ssim", "amplitude_psnr_db", "held_out_nll")


def split(scan: Scan, seed: int = 0) -> tuple[Scan, Scan]:
    """(kept, held out): a random 10 % of the patterns held out, the rest in scan order."""
    order = np.random.default_rng(seed).permutation(scan.count)
    held = np.sort(order[: round(HELD_OUT_FRACTION * scan.count)])
    kept = np.sort(order[round(HELD_OUT_FRACTION * scan.count) :])

    def subset(indices: np.ndarray) -> Scan:
        return dataclasses.replace(scan, patterns=scan.patterns[indices], positions_yx_px=scan.positions_yx_px[indices])

    return subset(kept), subset(held)


def held_out_nll(held_out: Scan, obj: np.ndarray) -> float:
    """Dose-normalised Poisson NLL per held-out pattern of an object, its amplitude scaled to the counts (the
    object's overall scale is not what is compared; the same scaling ``refinement.scaled_start`` applies)."""
    problem = RefinementProblem(held_out, np.ones(held_out.object_shape, np.complex64))
    return scaled_start(problem, obj)[1]


def scores(obj: np.ndarray, scan: Scan, held_out: Scan, lit: np.ndarray) -> dict[str, float]:
    quality = compare(obj, scan.ground_truth, lit)
    return {
        "phase_ssim": quality.phase_ssim,
        "phase_psnr_db": quality.phase_psnr_db,
        "amplitude_ssim": quality.amplitude_ssim,
        "amplitude_psnr_db": quality.amplitude_psnr_db,
        "held_out_nll": held_out_nll(held_out, obj),
    }


def run_case(kind: str, path: str, arguments: argparse.Namespace, model: Any) -> dict[str, Any]:
    from ptychi_runner import run_ptychi

    full = simulate_scan(kind, arguments.photons, arguments.positions, arguments.size, arguments.seed, path=path)
    lit = illuminated(full)
    scan, held = split(full)
    refined = reconstruct(model, scan, refinement=RefinementConfig(start=RefinementStart.AUTO))
    assert refined.network_object is not None  # a model was given: the network ran first
    objects = {
        "network alone": refined.network_object,
        "network + refinement": refined.object,
        "refinement from flat": reconstruct(None, scan, refinement=RefinementConfig(start=RefinementStart.FLAT)).object,
    }
    print(f"  {kind}: pty-chi LSQML ({arguments.lsqml_epochs} epochs) ...", flush=True)
    lsqml = run_ptychi(
        scan.patterns, scan.positions_yx_px, scan.probe, scan.object_shape, method="lsqml", epochs=arguments.lsqml_epochs,
        record_every=arguments.lsqml_epochs, threads=arguments.threads, keep_snapshots=True,
    )  # fmt: skip
    objects["LSQML"] = lsqml["object"]
    row = {"name": f"N{arguments.size}_{kind}_{path}"}
    row.update({method: scores(obj, full, held, lit) for method, obj in objects.items()})
    return row


def markdown(results: dict[str, Any]) -> str:
    settings = results["settings"]
    lines = [
        f"Four metrics per method (N={settings['size']}, {settings['positions']} patterns of which "
        f"{round(HELD_OUT_FRACTION * settings['positions'])} held out, {settings['photons']:g} photons, seed "
        f"{settings['seed']}, LSQML {settings['lsqml_epochs']} epochs, {results['machine']}). Cells: phase SSIM / phase "
        "PSNR (dB) / amplitude SSIM / amplitude PSNR (dB) / held-out Poisson NLL − LSQML's (×10⁴, dose-normalised per "
        "pattern; lower is better)",
        "",
        "| scan | " + " | ".join(METHODS) + " |",
        "|---|" + "---|" * len(METHODS),
    ]
    for row in results["rows"]:
        reference = row["LSQML"]["held_out_nll"]
        cells = []
        for method in METHODS:
            entry = row[method]
            cells.append(
                f"{entry['phase_ssim']:.3f} / {entry['phase_psnr_db']:.1f} / {entry['amplitude_ssim']:.3f} / "
                f"{entry['amplitude_psnr_db']:.1f} / {(entry['held_out_nll'] - reference) * 1e4:+.1f}"
            )
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--positions", type=int, default=576)
    parser.add_argument("--photons", type=float, default=1e5)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--lsqml-epochs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kinds", nargs="+", default=[kind for kind, _ in CASES], choices=[kind for kind, _ in CASES])
    parser.add_argument("--name", default=None, help="default: metric-check-nN")
    parser.add_argument("--out", default=str(HERE / "results"))
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    model = load_pretrained(arguments.size)
    paths = dict(CASES)
    rows = [run_case(kind, paths[kind], arguments, model) for kind in arguments.kinds]
    results = {
        "settings": {key: getattr(arguments, key) for key in ("size", "positions", "photons", "seed", "lsqml_epochs")},
        "machine": f"{platform.processor() or platform.machine()}, {arguments.threads} torch threads",
        "rows": rows,
    }
    publish(results, markdown(results), Path(arguments.out), arguments.name or f"metric-check-n{arguments.size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
