"""How far the default refinement is from convergence, kind by kind, and whether its likelihood says so.

The product's path (``refinement.refine_steps``: the shipped model's object or a flat one, as ``auto``
chooses; 40 half-resolution epochs; then ``--epochs`` full-resolution ones instead of the default 30) on the
five unseen benchmark scans (576 patterns, 10⁵ photons, seed 11). Every full-resolution epoch records the
Poisson NLL per pattern above a perfect fit (``physics.poisson_nll_floor``) and the loop's seconds; every
``--every`` epochs the phase SSIM over the lit region. The question it answers: could a stopping rule on
the NLL end refinement where it has converged and go on where it has not? Then the rule itself
(``RefinementConfig.stop_tolerance``, at most ``--epochs`` full-resolution epochs) through the product's
``inference.reconstruct``, beside the default 30 epochs, on the same scans in the same process::

    python benchmarks/refinement_convergence_check.py --size 64     # ~3 min on 2 cores
    python benchmarks/refinement_convergence_check.py --size 128    # ~10 min
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from streaming_bench import CASES, illuminated  # noqa: E402

from ptychodus_pinn.app.outputs import write_json  # noqa: E402
from ptychodus_pinn.engine import physics  # noqa: E402
from ptychodus_pinn.engine.config import RefinementConfig, RefinementStart  # noqa: E402
from ptychodus_pinn.engine.inference import reconstruct, reconstruct_network  # noqa: E402
from ptychodus_pinn.engine.metrics import SCORING, compare  # noqa: E402
from ptychodus_pinn.engine.persistence import load_pretrained  # noqa: E402
from ptychodus_pinn.engine.refinement import refine_steps  # noqa: E402
from ptychodus_pinn.engine.simulate import simulate_scan  # noqa: E402


def trajectory(scan: Any, network_object: Any, epochs: int, every: int) -> dict[str, Any]:
    """Per full-resolution epoch: NLL above a perfect fit and seconds; phase SSIM every ``every`` epochs."""
    lit = illuminated(scan)
    floor = physics.poisson_nll_floor(scan.patterns, scan.bad_pixels)
    steps = refine_steps(scan, network_object, RefinementConfig(epochs=epochs, start=RefinementStart.AUTO))
    excess, seconds, ssim, half_seconds = [], [], {}, 0.0
    while True:
        try:
            report = next(steps)
        except StopIteration as finished:
            start = finished.value.start.value
            break
        if report.half_resolution:
            half_seconds = report.seconds
            continue
        # an epoch's NLL scores the state it started from; the SSIM is of the state after it
        excess.append(report.nll - floor)
        seconds.append(report.seconds)
        full_epoch = len(excess)
        if full_epoch % every == 0:
            assert report.snapshot is not None
            ssim[full_epoch] = float(compare(report.snapshot(), scan.ground_truth, lit).phase_ssim)
    return {"start": start, "half_resolution_seconds": half_seconds, "nll_excess": excess, "seconds": seconds, "phase_ssim": ssim}


def with_tolerance(model: Any, scan: Any, tolerance: float, most_epochs: int) -> dict[str, Any]:
    """The product's reconstruction with ``stop_tolerance`` (0: the default 30 epochs), scored and timed."""
    refinement = RefinementConfig(stop_tolerance=tolerance, epochs=most_epochs if tolerance else RefinementConfig().epochs)
    runs = []
    for _ in range(3):  # the same deterministic run, timed as the median of three
        started = time.perf_counter()
        result = reconstruct(model, scan, refinement=refinement)
        runs.append(time.perf_counter() - started)
    seconds = sorted(runs)[1]
    assert result.refinement is not None
    return {
        "tolerance": tolerance,
        "phase_ssim": float(compare(result.object, scan.ground_truth, illuminated(scan)).phase_ssim),
        "full_resolution_epochs": sum(not report.half_resolution for report in result.refinement.history),
        "converged": result.refinement.converged,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=100, help="full-resolution epochs (the default refinement: 30)")
    parser.add_argument("--every", type=int, default=5, help="phase SSIM every this many full-resolution epochs")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--tolerances", type=float, nargs="*", default=[0.0, 1e-3, 2e-3], help="0: the default epochs")
    arguments = parser.parse_args(argv)
    model = load_pretrained(arguments.size)
    rows = {}
    for kind, path in CASES:
        scan = simulate_scan(kind, 1e5, 576, arguments.size, arguments.seed, path=path)
        row = trajectory(scan, reconstruct_network(model, scan).object, arguments.epochs, arguments.every)
        row["reconstructions"] = [with_tolerance(model, scan, tolerance, arguments.epochs) for tolerance in arguments.tolerances]
        rows[f"N{arguments.size}_{kind}_{path}"] = row
        marks = [m for m in (10, 20, 30, 50, 75, 100) if m in row["phase_ssim"]]
        print(f"{kind:8} ({row['start']} start) full-resolution epoch: NLL above a perfect fit / phase SSIM / s: "
              + ", ".join(f"{m}: {row['nll_excess'][m - 1]:.5f} / {row['phase_ssim'][m]:.3f} / {row['seconds'][m - 1]:.1f}"
                          for m in marks), flush=True)  # fmt: skip
        print("         stop tolerance: phase SSIM, full-resolution epochs, s (network + refinement): " + ", ".join(
            f"{run['tolerance']:g}: {run['phase_ssim']:.3f}, {run['full_resolution_epochs']}, {run['seconds']:.1f}"
            for run in row["reconstructions"]), flush=True)  # fmt: skip
    out = HERE / "results" / f"refinement-convergence-n{arguments.size}.json"
    settings = {"size_px": arguments.size, "full_resolution_epochs": arguments.epochs, "seed": arguments.seed, "scoring": SCORING}
    write_json({"settings": settings, "rows": rows}, out)  # atomic, as every results file
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
