"""Phase SSIM against refinement epochs from the network's start and from a flat one (no LSQML run).

Asks two questions of the N = 128 model (docs/quality.md, "N = 128"): does refinement keep lowering the
network's object on Siemens stars and natural images past the default 40 epochs, and does the
network's start catch up with the flat one on lines and circuits given more epochs? The scans of
``pretrained_bench.py`` (576 patterns, 10⁵ photons, seed 11); the shipped model for ``--size``::

    python benchmarks/refinement_epochs_check.py --size 128     # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from streaming_bench import CASES, illuminated  # noqa: E402

from ptychodus_pinn.engine.config import RefinementConfig, RefinementStart  # noqa: E402
from ptychodus_pinn.engine.inference import reconstruct_network  # noqa: E402
from ptychodus_pinn.engine.metrics import compare  # noqa: E402
from ptychodus_pinn.engine.persistence import load_pretrained  # noqa: E402
from ptychodus_pinn.engine.refinement import RefinementProblem, choose_start, iterate_refinement  # noqa: E402
from ptychodus_pinn.engine.simulate import simulate_scan  # noqa: E402

MARKS = (0, 10, 20, 40, 80, 160)


def curve(scan: Any, start_object: np.ndarray | None, start: RefinementStart, lit: np.ndarray) -> dict[int, float]:
    problem = RefinementProblem(scan, np.ones(scan.object_shape, np.complex64))
    choose_start(problem, start_object, start)

    def scored() -> float:
        return float(compare(problem.current_object(), scan.ground_truth, lit).phase_ssim)

    scores = {0: scored()}
    for report in iterate_refinement(problem, RefinementConfig(epochs=max(MARKS), start=start)):
        if report.epoch in MARKS:
            scores[report.epoch] = scored()
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    arguments = parser.parse_args()
    model = load_pretrained(arguments.size)
    rows = []
    print("scan, start: phase SSIM at epochs " + " / ".join(map(str, MARKS)))
    for kind, path in CASES:
        scan = simulate_scan(kind, 1e5, 576, arguments.size, 11, path=path)
        lit = illuminated(scan)
        network = reconstruct_network(model, scan).object
        row = {
            "name": f"N{arguments.size}_{kind}_{path}",
            "network": curve(scan, network, RefinementStart.NETWORK, lit),
            "flat": curve(scan, None, RefinementStart.FLAT, lit),
        }
        rows.append(row)
        for start in ("network", "flat"):
            print(f"{row['name']}, {start}: " + " / ".join(f"{row[start][m]:.3f}" for m in MARKS), flush=True)
    out = arguments.out / f"refinement-epochs-n{arguments.size}.json"
    out.write_text(json.dumps({"size": arguments.size, "marks": MARKS, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
