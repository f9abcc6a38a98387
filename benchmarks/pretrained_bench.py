"""Shipped models on scans of kinds and seeds they never saw, beside pty-chi LSQML (issue 10, "Must show").

Per case (N = 64, 576 patterns, 10⁵ photons, seed 11: the scans of ``streaming_bench.py``; none of them
is in the pretraining corpus, whose seeds start at 2000 and whose natural images come from other
photographs) and for each model given (``--models NAME=PATH ...``; default: the shipped model):

- **network alone**: one forward pass, phases aligned, stitched (``inference.reconstruct_network``);
- **network + refinement**: the default refinement (40 half-resolution, then 30 epochs), the start
  chosen by the data's likelihood (``--refine-start auto``), so the network's object is used where it helps;

beside refinement from a flat object (the same epochs, no network) and pty-chi LSQML (200 epochs, probe and
positions fixed; ``ptychi_runner``). Quality: ``metrics.compare`` phase SSIM over one illuminated mask
per case, as ``refinement_bench.py``. Ratios are to LSQML's final phase SSIM.

Run in the benchmark venv (``bash benchmarks/setup_bench_venv.sh`` once)::

    "${BENCH_VENV:-../bench-venv}"/bin/python benchmarks/pretrained_bench.py \
        --models old=OLD.pinn.pt new=resources/pretrained-n64.pinn.pt          # ~12 min on 2 cores
    ... --lsqml-from benchmarks/results/pretrained-cpu.json                    # reuse LSQML's rows
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from streaming_bench import CASES, illuminated, lsqml_final, reusable_lsqml_run  # noqa: E402
from training_targets_bench import publish  # noqa: E402

from ptychodus_pinn.engine.config import ExecutionConfig, RefinementConfig, RefinementStart  # noqa: E402
from ptychodus_pinn.engine.inference import reconstruct, reconstruct_network  # noqa: E402
from ptychodus_pinn.engine.metrics import SCORING, compare  # noqa: E402
from ptychodus_pinn.engine.persistence import load_model, pretrained_path  # noqa: E402
from ptychodus_pinn.engine.simulate import simulate_scan  # noqa: E402

TARGET_NETWORK_RATIO, GOAL_NETWORK_RATIO = 0.8, 0.9
TARGET_REFINED_RATIO, TARGET_TIME_FRACTION = 1.0, 1 / 20  # network + refinement: ≥ 1.0× LSQML in ≤ 1/20 of its time
TIMING_REPEATS = 3


def scored(obj: Any, scan: Any, lit: Any) -> float:
    return float(compare(obj, scan.ground_truth, lit).phase_ssim)


def run_case(
    label: str, scan: Any, models: dict[str, tuple[Any, int]], lsqml: dict[str, Any] | None, epochs: int
) -> dict[str, Any]:
    """``models``: name → (model, symmetry views the network uses: ``ExecutionConfig.symmetry_views``)."""
    lit = illuminated(scan)
    row: dict[str, Any] = {"name": label}
    started = time.perf_counter()
    flat = reconstruct(None, scan, refinement=RefinementConfig(start=RefinementStart.FLAT))
    row["refinement_from_flat"] = {"phase_ssim": scored(flat.object, scan, lit), "seconds": time.perf_counter() - started}
    for name, (model, views) in models.items():
        execution = ExecutionConfig(symmetry_views=views)
        started = time.perf_counter()
        network = reconstruct_network(model, scan, execution=execution)
        network_s = time.perf_counter() - started
        refined_s = []
        for _ in range(TIMING_REPEATS):  # the same deterministic run, timed as the median of three
            started = time.perf_counter()
            refined = reconstruct(model, scan, execution=execution, refinement=RefinementConfig(start=RefinementStart.AUTO))
            refined_s.append(time.perf_counter() - started)
        row[name] = {
            "network_phase_ssim": scored(network.object, scan, lit),
            "network_s": network_s,
            "symmetry_views": views,
            "network_refined_phase_ssim": scored(refined.object, scan, lit),
            "network_refined_s": float(np.median(refined_s)),
            "network_refined_s_runs": refined_s,
            "refinement_start": refined.refinement.start.value if refined.refinement is not None else None,
        }
    if lsqml is None:
        print(f"  {label}: pty-chi LSQML ({epochs} epochs) ...", flush=True)
        lsqml = lsqml_final(scan, lit, epochs, torch.get_num_threads())
    row["lsqml"] = {"phase_ssim": lsqml["phase_ssim"], "seconds": lsqml["seconds"]}
    for name in models:
        for key in ("network_phase_ssim", "network_refined_phase_ssim"):
            row[name][key.replace("phase_ssim", "ratio_to_lsqml")] = row[name][key] / lsqml["phase_ssim"]
    return row


def markdown(results: dict[str, Any]) -> str:
    names = results["models"]
    header = " | ".join(f"{name}: network ÷ LSQML | {name}: network + refinement ÷ LSQML" for name in names)
    lines = [
        f"Shipped models on unseen scans (N={results['settings']['size']}, {results['settings']['positions']} patterns, "
        f"{results['settings']['photons']:g} photons, seed {results['settings']['seed']}, "
        f"{results['settings']['threads']} CPU threads). Cells: phase SSIM (÷ LSQML's); network + refinement "
        "also its median seconds and the fraction of LSQML's time",
        "",
        f"| scan | LSQML (s) | refinement from flat | {header} |",
        "|---|---|---|" + "---|---|" * len(names),
    ]
    for row in results["rows"]:
        cells = []
        for name in names:
            entry = row[name]
            cells.append(f"{entry['network_phase_ssim']:.3f} ({entry['network_ratio_to_lsqml']:.2f})")
            cells.append(
                f"{entry['network_refined_phase_ssim']:.3f} ({entry['network_refined_ratio_to_lsqml']:.2f}; "
                f"{entry['network_refined_s']:.2f} s = 1/{row['lsqml']['seconds'] / entry['network_refined_s']:.1f}; "
                f"start {entry['refinement_start']})"
            )
        lsqml = row["lsqml"]
        lines.append(
            f"| {row['name']} | {lsqml['phase_ssim']:.3f} ({lsqml['seconds']:.0f} s) | "
            f"{row['refinement_from_flat']['phase_ssim']:.3f} | " + " | ".join(cells) + " |"
        )
    for name in names:
        ratios = [row[name]["network_ratio_to_lsqml"] for row in results["rows"]]
        met = sum(ratio >= TARGET_NETWORK_RATIO for ratio in ratios)
        goal = sum(ratio >= GOAL_NETWORK_RATIO for ratio in ratios)
        lines.append("")
        lines.append(
            f"{name}: network alone ≥ {TARGET_NETWORK_RATIO}× LSQML on {met} of {len(ratios)} scans "
            f"(goal {GOAL_NETWORK_RATIO}×: {goal}); ratios {', '.join(f'{r:.2f}' for r in ratios)}."
        )
        fractions = [row[name]["network_refined_s"] / row["lsqml"]["seconds"] for row in results["rows"]]
        refined = [row[name]["network_refined_ratio_to_lsqml"] for row in results["rows"]]
        both = sum(r >= TARGET_REFINED_RATIO and f <= TARGET_TIME_FRACTION for r, f in zip(refined, fractions, strict=True))
        lines.append("")
        lines.append(
            f"{name}: network + refinement (median of {TIMING_REPEATS} runs) ≥ {TARGET_REFINED_RATIO}× LSQML in ≤ 1/"
            f"{round(1 / TARGET_TIME_FRACTION)} of its time on {both} of {len(refined)} scans; quality ratios "
            f"{', '.join(f'{r:.3f}' for r in refined)}; time 1/{', 1/'.join(f'{1 / f:.1f}' for f in fractions)}."
        )
    return "\n".join(lines) + "\n"


def parse_model(text: str) -> tuple[str, Path]:
    name, separator, path = text.partition("=")
    if not separator or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", type=parse_model, default=None, help="NAME=PATH (default: the shipped model)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--positions", type=int, default=576)
    parser.add_argument("--photons", type=float, default=1e5)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--views",
        type=int,
        nargs="+",
        default=[1],
        help="symmetry views the network uses (ExecutionConfig.symmetry_views); each model runs once per value, "
        "named NAME×V for V > 1 (default 1: the CPU default)",
    )
    parser.add_argument("--lsqml-epochs", type=int, default=200)
    parser.add_argument("--lsqml-from", type=Path, default=None, help="LSQML rows of an earlier run of this benchmark")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="pretrained-cpu")
    parser.add_argument("--out", default=str(HERE / "results"))
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    paths = dict(arguments.models) if arguments.models else {"shipped": pretrained_path(arguments.size)}
    loaded = {name: load_model(path) for name, path in paths.items() if path is not None}
    models = {
        name if views == 1 else f"{name}×{views}": (model, views) for name, model in loaded.items() for views in arguments.views
    }
    earlier: dict[str, Any] = {}
    if arguments.lsqml_from is not None:
        previous = reusable_lsqml_run(arguments.lsqml_from, arguments)
        earlier = {row["name"]: row["lsqml"] for row in previous["rows"]}
    started = time.perf_counter()
    rows = []
    for kind, path in CASES:
        label = f"N{arguments.size}_{kind}_{path}"
        scan = simulate_scan(kind, arguments.photons, arguments.positions, arguments.size, arguments.seed, path=path)
        rows.append(run_case(label, scan, models, earlier.get(label), arguments.lsqml_epochs))
        print(f"  {label}: " + ", ".join(f"{n} network {rows[-1][n]['network_phase_ssim']:.3f}" for n in models), flush=True)
    settings = {
        key: getattr(arguments, key) for key in ("size", "positions", "photons", "seed", "lsqml_epochs", "threads", "views")
    }
    settings["scoring"] = SCORING
    results = {
        "settings": settings,
        "models": list(models),
        "model_files": {name: Path(path).name for name, path in paths.items() if path is not None},
        "rows": rows,
        "total_s": time.perf_counter() - started,
        "torch": torch.__version__,
    }
    publish(results, markdown(results), Path(arguments.out), arguments.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
