"""Why the N = 128 network fails on lines, circuits and grains: a test of the feature-density diagnosis.

Those objects have features of a fixed size in pixels (lines and wires 1–4 px, grains 8–20 px), so a
128-px patch holds four times as many as a 64-px one, while Siemens stars and photographs scale with
the object. This scores the shipped N = 128 network alone on the benchmark scans (576 patterns, 10⁵
photons, seed 11) as simulated and with each object drawn at half size and magnified 2× (bilinear),
i.e. features twice as large in pixels; everything else (probe, path, dose) is the same::

    python benchmarks/feature_density_check.py      # ~1 min on 2 cores; results/feature-density-n128.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ptychodus_pinn.engine import simulate
from ptychodus_pinn.engine.inference import reconstruct_network
from ptychodus_pinn.engine.metrics import compare
from ptychodus_pinn.engine.persistence import load_pretrained
from ptychodus_pinn.engine.simulate import ObjectKind, simulate_scan

CASES = ((ObjectKind.LINES, "jittered"), (ObjectKind.CIRCUIT, "spiral"), (ObjectKind.GRAINS, "spiral"))
OUT = Path(__file__).resolve().parent / "results" / "feature-density-n128.json"


def magnified(make: Any) -> Any:
    """An object maker whose features are twice as large in pixels: drawn at half size, magnified 2×."""

    def make_coarse(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        small = make((shape[0] // 2 + 1, shape[1] // 2 + 1), rng)
        large = ndimage.zoom(small.real, 2, order=1) + 1j * ndimage.zoom(small.imag, 2, order=1)
        return large[: shape[0], : shape[1]].astype(np.complex64)

    return make_coarse


def main() -> None:
    model = load_pretrained(128)
    rows = []
    for kind, path in CASES:
        row: dict[str, Any] = {"kind": kind.value, "path": path}
        original = simulate._OBJECT_MAKERS[kind]
        for label, make in (("as_simulated", original), ("features_2x", magnified(original))):
            simulate._OBJECT_MAKERS[kind] = make
            try:
                scan = simulate_scan(kind, 1e5, 576, 128, 11, path=path)
            finally:
                simulate._OBJECT_MAKERS[kind] = original
            result = reconstruct_network(model, scan)
            row[label] = float(compare(result.object, scan.ground_truth, result.illuminated).phase_ssim)
        rows.append(row)
        print(f"{kind.value:8} network alone, phase SSIM: as simulated {row['as_simulated']:.3f}, "
              f"features 2x {row['features_2x']:.3f}", flush=True)  # fmt: skip
    OUT.write_text(json.dumps({"N": 128, "positions": 576, "photons": 1e5, "seed": 11, "rows": rows}, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
