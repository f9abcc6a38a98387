"""Which training target makes the network better on the *next* scan of a kind (issue 10, candidate (a))?

The beamline use: train on the first scans of an experiment, reconstruct the rest with the network.
Per object kind, two scans are simulated for training and a third (another seed, same kind, same
probe and dose) is held out. The same narrow network (width 1, gridsize 1, the CPU preset) is trained
on the two scans with each target, for the same epochs, and then reconstructs the held-out scan
alone (one forward pass, phases aligned, stitched: ``inference.reconstruct_network``):

- ``pinn``: the product's self-supervised Poisson likelihood of each pattern (the default);
- ``distil``: refine-then-distil, supervised: each training scan is first refined from a flat object
  (``engine.refinement``, default 40 epochs), and the network learns pattern → refined patch
  (complex L1 weighted by the probe, the supervised loss of ``TrainingMode.SUPERVISED``);
- ``pinn+distil``: both terms, the Poisson likelihood plus the distillation term (weight 1);
- ``pinn from shipped`` (with ``--initial-model``): ``pinn`` warm-started from a pretrained model,
  as the GUI's Train On The Scan First does with Warm Start on; the model alone is scored too.

The ground truth is never used for training, only for scoring (``metrics.compare``, illuminated
pixels). Beside them: refinement from a flat object on the held-out scan (40 epochs; about LSQML's
quality on these scans, 0.96–1.00× in ``results/streaming-cpu.md``), and the network trained on the
held-out scan itself (``pinn``), the ceiling of training on what you reconstruct.

The variants other than ``pinn`` are not product modes; they are measured here by swapping the
Lightning module's loss for the duration of a run.

Run (project or benchmark venv; ~25 min on 2 cores)::

    python benchmarks/training_targets_bench.py                      # 4 kinds, 10 epochs
    python benchmarks/training_targets_bench.py --kinds natural --epochs 4   # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent

from ptychodus_pinn.app.outputs import write_json  # noqa: E402
from ptychodus_pinn.engine import physics, training  # noqa: E402
from ptychodus_pinn.engine.config import (  # noqa: E402
    ExecutionConfig,
    ModelConfig,
    RefinementConfig,
    RunConfig,
    TrainingConfig,
    TrainingMode,
)
from ptychodus_pinn.engine.data import Scan, atomic_write  # noqa: E402
from ptychodus_pinn.engine.inference import reconstruct_network  # noqa: E402
from ptychodus_pinn.engine.metrics import compare  # noqa: E402
from ptychodus_pinn.engine.persistence import load_model  # noqa: E402
from ptychodus_pinn.engine.refinement import refine  # noqa: E402
from ptychodus_pinn.engine.simulate import simulate_scan  # noqa: E402

TARGETS = ("pinn", "distil", "pinn+distil")
TRAIN_SEEDS, TEST_SEED = (101, 102), 103


@contextlib.contextmanager
def combined_loss(distil_weight: float) -> Iterator[None]:
    """The module's loss becomes Poisson likelihood + ``distil_weight`` × the supervised term (labels needed)."""
    original = training.PinnLightningModule.loss

    def loss(self: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        patches = self.patches_for(batch)
        weight = self._weight()
        difference = (patches.to(torch.complex64) - batch["labels"]).abs() * weight
        supervised = difference.sum(dim=(-2, -1)).mean() / weight.sum()
        expected = self.model.expected_counts(patches, batch["intensity_scale"][:, None, None, None])
        likelihood = physics.poisson_nll(expected, batch["counts"], self.valid_pixels, batch["mean_counts"][:, None])
        return likelihood + distil_weight * supervised

    training.PinnLightningModule.loss = loss  # type: ignore[method-assign]
    try:
        yield
    finally:
        training.PinnLightningModule.loss = original  # type: ignore[method-assign]


def network_phase_ssim(model: Any, scan: Scan) -> float:
    network = reconstruct_network(model, scan)
    return float(compare(network.object, scan.ground_truth, network.illuminated).phase_ssim)


def train_with(target: str, scans: list[Scan], refined: list[Any], epochs: int, N: int, initial: Any = None) -> tuple[Any, float]:
    """(model, seconds) for one training target; the truth is removed from every training scan."""
    mode = TrainingMode.PINN if target.startswith("pinn") and "distil" not in target else TrainingMode.SUPERVISED
    if mode is TrainingMode.PINN:
        data = [dataclasses.replace(scan, ground_truth=None) for scan in scans]
    else:  # supervised labels come from the object guess when there is no truth: the refined object
        data = [dataclasses.replace(scan, ground_truth=None, object_guess=obj) for scan, obj in zip(scans, refined, strict=True)]
    config = RunConfig(
        ModelConfig(N=N, n_filters_scale=1, mode=mode),
        TrainingConfig(epochs=epochs, batch_size=16),
        ExecutionConfig(accelerator="cpu"),
    )
    context = combined_loss(1.0) if target == "pinn+distil" else contextlib.nullcontext()
    started = time.perf_counter()
    with context:
        result = training.train(data, config, initial_model=initial)
    return result.model, time.perf_counter() - started


def run_kind(
    kind: str, path: str, N: int, positions: int, photons: float, epochs: int, initial: Any = None, targets=TARGETS
) -> dict[str, Any]:
    train_scans = [simulate_scan(kind, photons, positions, N, seed=seed, path=path) for seed in TRAIN_SEEDS]
    test = simulate_scan(kind, photons, positions, N, seed=TEST_SEED, path=path)
    started = time.perf_counter()
    refined = [refine(scan, None, RefinementConfig()).object for scan in train_scans]
    refine_s = time.perf_counter() - started
    row: dict[str, Any] = {"kind": kind, "path": path, "refine_targets_s": refine_s}
    flat = refine(test, None, RefinementConfig())
    row["refinement_from_flat_phase_ssim"] = float(compare(flat.object, test.ground_truth, flat.illuminated).phase_ssim)
    for target in targets:
        model, seconds = train_with(target, train_scans, refined, epochs, N)
        row[target] = {
            "held_out_phase_ssim": network_phase_ssim(model, test),
            "train_scan_phase_ssim": network_phase_ssim(model, train_scans[0]),
            "train_s": seconds,
        }
        print(
            f"  {kind}: {target}: held-out {row[target]['held_out_phase_ssim']:.3f}, "
            f"train scan {row[target]['train_scan_phase_ssim']:.3f}, {seconds:.0f} s",
            flush=True,
        )
    if initial is not None:
        row["shipped_alone"] = {"held_out_phase_ssim": network_phase_ssim(initial, test)}
        model, seconds = train_with("pinn from shipped", train_scans, refined, epochs, N, initial)
        row["pinn_from_shipped"] = {"held_out_phase_ssim": network_phase_ssim(model, test), "train_s": seconds}
        print(f"  {kind}: shipped alone {row['shipped_alone']['held_out_phase_ssim']:.3f}, "
              f"pinn from shipped {row['pinn_from_shipped']['held_out_phase_ssim']:.3f}", flush=True)  # fmt: skip
    model, seconds = train_with("pinn", [test], [], epochs, N)
    row["pinn_on_held_out_itself"] = {"held_out_phase_ssim": network_phase_ssim(model, test), "train_s": seconds}
    return row


COLUMNS = {  # row key → column title
    "pinn": "pinn",
    "distil": "distil",
    "pinn+distil": "pinn+distil",
    "shipped_alone": "shipped model alone",
    "pinn_from_shipped": "pinn from shipped",
    "pinn_on_held_out_itself": "pinn trained on the held-out scan itself",
}


def markdown(results: dict[str, Any]) -> str:
    settings = results["settings"]
    present = [key for key in COLUMNS if any(key in row for row in results["rows"])]
    lines = [
        f"Training targets, network alone on a held-out scan of the same kind (N={settings['N']}, {settings['positions']} "
        f"patterns, {settings['photons']:.0e} photons, width 1, {settings['epochs']} epochs on 2 scans, "
        f"{results['machine']}):",
        "",
        "| kind | " + " | ".join(COLUMNS[key] for key in present) + " | refinement from flat |",
        "|---|" + "---|" * (len(present) + 1),
    ]
    for row in results["rows"]:
        cells = []
        for key in present:
            entry = row.get(key)
            if entry is None:
                cells.append("—")
                continue
            cell = f"{entry['held_out_phase_ssim']:.3f}"
            if "train_scan_phase_ssim" in entry:
                cell += f" (train scan {entry['train_scan_phase_ssim']:.3f})"
            cells.append(cell)
        lines.append(
            f"| {row['kind']} ({row['path']}) | " + " | ".join(cells) + f" | {row['refinement_from_flat_phase_ssim']:.3f} |"
        )
    lines += ["", "Cells: phase SSIM of the network's object on the held-out scan (on the first training scan)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kinds", nargs="+", default=["natural:jittered", "circuit:spiral", "siemens:jittered", "lines:jittered"]
    )
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--positions", type=int, default=576)
    parser.add_argument("--photons", type=float, default=1e5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--initial-model", type=Path, default=None, help="also fine-tune this model (pinn from shipped)")
    parser.add_argument("--skip-targets", action="store_true", help="run pinn from shipped only (with --initial-model)")
    parser.add_argument("--name", default="training-targets-cpu")
    parser.add_argument("--out", default=str(HERE / "results"))
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    if arguments.skip_targets and arguments.initial_model is None:
        parser.error("--skip-targets needs --initial-model")
    initial = None if arguments.initial_model is None else load_model(arguments.initial_model)
    rows = []
    for spec in arguments.kinds:
        kind, _, path = spec.partition(":")
        rows.append(
            run_kind(
                kind, path or "jittered", arguments.size, arguments.positions, arguments.photons, arguments.epochs,
                initial, () if arguments.skip_targets else TARGETS,
            )
        )  # fmt: skip
    import platform

    results = {
        "settings": {"N": arguments.size, "positions": arguments.positions, "photons": arguments.photons,
                     "epochs": arguments.epochs, "train_seeds": TRAIN_SEEDS, "test_seed": TEST_SEED,
                     "threads": arguments.threads},
        "machine": f"{platform.processor() or platform.machine()}, {arguments.threads} torch threads",
        "rows": rows,
    }  # fmt: skip
    publish(results, markdown(results), Path(arguments.out), arguments.name)
    return 0


def publish(results: dict[str, Any], text: str, out: Path, name: str) -> None:
    """``out/NAME.json`` and ``out/NAME.md`` (each written atomically), and the table printed."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(results, out / f"{name}.json")
    atomic_write(out / f"{name}.md", lambda temporary: temporary.write_text(text))
    print(text)


if __name__ == "__main__":
    sys.exit(main())
