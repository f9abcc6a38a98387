"""Is the N = 128 network's failure on fine features its depth? A test of the receptive-field reading.

The U-Net has three poolings at every N (``network.DEPTH``), so at N = 128 its bottleneck is 16 × 16 and
each encoder feature sees half as much of the pattern, relative to its size, as at N = 64; a fourth level
(bottleneck 8 × 8, as at N = 64) would make the N = 128 network the N = 64 one scaled up. This trains
both depths from scratch with the same recipe and budget (``distil`` on the first ``--scans`` scans of the
``broad-one-probe`` corpus, width 1, ``--epochs`` epochs, torch seed 0) and scores each network alone on
the five unseen benchmark scans (576 patterns, 10⁵ photons, seed 11) and, for lines, circuits and grains,
on the same scans with features twice as large in pixels (``feature_density_check.magnified``), beside
the shipped model::

    python benchmarks/depth_check.py      # ~20 min on 2 cores; results/depth-n128.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from feature_density_check import CASES as FINE_CASES  # noqa: E402
from feature_density_check import magnified  # noqa: E402
from streaming_bench import CASES, illuminated  # noqa: E402

from ptychodus_pinn.app.outputs import write_json  # noqa: E402
from ptychodus_pinn.app.pretrain import corpus_scans  # noqa: E402
from ptychodus_pinn.engine import network, simulate  # noqa: E402
from ptychodus_pinn.engine.config import (  # noqa: E402
    Accelerator,
    ExecutionConfig,
    LoggerKind,
    ModelConfig,
    RunConfig,
    TrainingConfig,
    TrainingMode,
)
from ptychodus_pinn.engine.inference import reconstruct_network  # noqa: E402
from ptychodus_pinn.engine.metrics import SCORING, compare  # noqa: E402
from ptychodus_pinn.engine.persistence import load_pretrained, pretrained_path  # noqa: E402
from ptychodus_pinn.engine.training import train  # noqa: E402

RESULTS = HERE / "results"


def scored_scans(size_px: int) -> dict[str, Any]:
    """name → scan: the five benchmark cases, then the fine-feature kinds with features magnified 2×."""
    scans = {f"{kind}_{path}": simulate.simulate_scan(kind, 1e5, 576, size_px, 11, path=path) for kind, path in CASES}
    for kind, path in FINE_CASES:
        original = simulate._OBJECT_MAKERS[kind]
        simulate._OBJECT_MAKERS[kind] = magnified(original)
        try:
            scans[f"{kind.value}_{path}_features_2x"] = simulate.simulate_scan(kind, 1e5, 576, size_px, 11, path=path)
        finally:
            simulate._OBJECT_MAKERS[kind] = original
    return scans


def network_scores(model: Any, scans: dict[str, Any]) -> dict[str, float]:
    return {
        name: float(compare(reconstruct_network(model, scan).object, scan.ground_truth, illuminated(scan)).phase_ssim)
        for name, scan in scans.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--scans", type=int, default=10, help="corpus scans to train on (400 patterns each)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--depths", type=int, nargs="+", default=[3, 4])
    parser.add_argument("--name", default=None, help="results file stem (default: depth-n<size>)")
    arguments = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    corpus = corpus_scans(arguments.scans, arguments.size, 400, one_probe=True)
    scans = scored_scans(arguments.size)
    rows: dict[str, dict[str, Any]] = {}
    if pretrained_path(arguments.size) is not None:
        rows["shipped"] = {"scores": network_scores(load_pretrained(arguments.size), scans)}
    default_depth = network.DEPTH
    for depth in arguments.depths:
        network.DEPTH = depth
        try:
            torch.manual_seed(0)
            config = RunConfig(
                model=ModelConfig(N=arguments.size, n_filters_scale=1, mode=TrainingMode.DISTIL),
                training=TrainingConfig(epochs=arguments.epochs, batch_size=16, validation_fraction=0.0, learning_rate=3e-3),
                execution=ExecutionConfig(accelerator=Accelerator.CPU, logger=LoggerKind.NONE, enable_progress_bar=False),
            )
            started = time.perf_counter()
            result = train(corpus, config)
            rows[f"depth{depth}"] = {
                "depth": depth,
                "parameters": network.parameter_count(result.model),
                "train_seconds": time.perf_counter() - started,
                "train_loss_per_epoch": [epoch.train_loss for epoch in result.history],
                "scores": network_scores(result.model, scans),
            }
        finally:
            network.DEPTH = default_depth
    print(f"network alone, phase SSIM (N = {arguments.size}; trained from scratch: {arguments.scans} corpus scans, "
          f"{arguments.epochs} epochs of distil)")  # fmt: skip
    print(f"{'scan':34}" + "".join(f"{label:>10}" for label in rows))
    for name in scans:
        print(f"{name:34}" + "".join(f"{row['scores'][name]:10.3f}" for row in rows.values()))
    out = RESULTS / f"{arguments.name or f'depth-n{arguments.size}'}.json"
    settings = {"size_px": arguments.size, "corpus_scans": arguments.scans, "epochs": arguments.epochs, "scoring": SCORING}
    write_json({"settings": settings, "rows": rows}, out)  # atomic, as every results file
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
