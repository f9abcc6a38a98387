"""Refinement's speed against an earlier revision of ``engine/refinement.py``, side by side in one process.

Machine speed here varies by up to 2× between sessions and by ~20 % within minutes, so a change to the
refinement loop is timed against the revision before it in the same process, the two alternating run by
run. Both modules refine the same scans (those of ``pretrained_bench.py``, from a flat start, the default
``RefinementConfig``); the table gives each one's range of times, the ratio of their medians and the final
phase SSIM (equal up to float32 reordering, which a few epochs can amplify to ±0.01)::

    python benchmarks/refinement_ab.py --baseline HEAD~1 --size 128 --name refinement-ab-n128   # ~6 min

Also the median of a whole-scan LSQML step (``_minibatch_step``, the full-resolution epochs' cost).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from streaming_bench import CASES, illuminated  # noqa: E402

from ptychodus_pinn.engine import refinement as current_module  # noqa: E402
from ptychodus_pinn.engine.config import NoiseModel, RefinementConfig  # noqa: E402
from ptychodus_pinn.engine.metrics import compare  # noqa: E402
from ptychodus_pinn.engine.simulate import simulate_scan  # noqa: E402

MODULE_PATH = "ptychodus_pinn/engine/refinement.py"


def module_at(revision: str, folder: Path) -> ModuleType:
    """``engine/refinement.py`` as it was at ``revision``, imported under its own name (it imports the rest of
    the engine as it is now)."""
    shown = subprocess.run(["git", "show", f"{revision}:{MODULE_PATH}"], cwd=REPO, capture_output=True, text=True)
    if shown.returncode != 0:
        raise SystemExit(f"--baseline {revision}: git has no {MODULE_PATH} there ({shown.stderr.strip()})")
    source = shown.stdout
    path = folder / "refinement_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("refinement_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def step_ms(module: ModuleType, scan: Any, repeats: int) -> list[float]:
    problem = module.RefinementProblem(scan, np.ones(scan.object_shape, np.complex64))
    illumination = problem.illumination.reshape(-1)
    preconditioner = torch.sqrt(illumination.square() + (0.1 * illumination.max()) ** 2)
    batch = torch.arange(problem.count)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        module._minibatch_step(problem, batch, preconditioner, NoiseModel.POISSON, False)
        times.append(1e3 * (time.perf_counter() - started))
    return times


def markdown(record: dict[str, Any]) -> str:
    lines = [
        f"Refinement from flat, default settings, baseline `{record['baseline']}` against the current code, alternating "
        f"in one process (N = {record['size']}, 576 patterns, 10⁵ photons, seed {record['seed']}, 2 CPU threads)",
        "",
        "| scan | refine, baseline (s) | refine, current (s) | median ratio | whole-scan step (ms) | phase SSIM |",
        "|---|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        base, current = row["baseline_seconds"], row["current_seconds"]
        lines.append(
            f"| {row['scan']} | {min(base):.2f}–{max(base):.2f} | {min(current):.2f}–{max(current):.2f} | "
            f"×{row['time_ratio']:.2f} | {row['baseline_step_ms_median']:.0f} → {row['current_step_ms_median']:.0f} | "
            f"{row['baseline_phase_ssim']:.4f} / {row['current_phase_ssim']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git revision whose refinement.py is the baseline")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3, help="refinements per module and scan, alternating")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--name", default="refinement-ab")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    arguments = parser.parse_args(argv)
    if arguments.runs < 1:
        parser.error(f"--runs {arguments.runs}: at least one refinement per module is needed for a time")
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as folder:
        modules = {"baseline": module_at(arguments.baseline, Path(folder)), "current": current_module}
        rows = []
        for kind, path in CASES:
            scan = simulate_scan(kind, 1e5, 576, arguments.size, arguments.seed, path=path)
            lit = illuminated(scan)
            row: dict[str, Any] = {"scan": f"N{arguments.size}_{kind}_{path}"}
            seconds: dict[str, list[float]] = {name: [] for name in modules}
            steps: dict[str, list[float]] = {name: [] for name in modules}
            for _ in range(arguments.runs):
                for name, module in modules.items():
                    started = time.perf_counter()
                    result = module.refine(scan, None, RefinementConfig())
                    seconds[name].append(time.perf_counter() - started)
                    row[f"{name}_phase_ssim"] = float(compare(result.object, scan.ground_truth, lit).phase_ssim)
                    steps[name] += step_ms(module, scan, 4)[1:]
            for name in modules:
                row[f"{name}_seconds"] = seconds[name]
                row[f"{name}_step_ms_median"] = statistics.median(steps[name])
            row["time_ratio"] = statistics.median(seconds["current"]) / statistics.median(seconds["baseline"])
            rows.append(row)
            print(
                f"{row['scan']}: refine {min(seconds['baseline']):.2f}–{max(seconds['baseline']):.2f} s → "
                f"{min(seconds['current']):.2f}–{max(seconds['current']):.2f} s (×{row['time_ratio']:.2f}), "
                f"whole-scan step {row['baseline_step_ms_median']:.0f} → {row['current_step_ms_median']:.0f} ms, "
                f"phase SSIM {row['baseline_phase_ssim']:.4f} / {row['current_phase_ssim']:.4f}",
                flush=True,
            )
    arguments.out.mkdir(parents=True, exist_ok=True)
    out = arguments.out / f"{arguments.name}.json"
    record = {"baseline": arguments.baseline, "size": arguments.size, "seed": arguments.seed, "rows": rows}
    out.write_text(json.dumps(record, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(record))
    print(f"wrote {out} and its .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
