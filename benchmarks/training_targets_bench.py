"""Which training target makes the network better on the *next* scan of a kind (issue 10, candidate (a))?

The beamline use: train on the first scans of an experiment, reconstruct the rest with the network.
Per object kind, two scans are simulated for training and a third (another seed, same kind, same
probe and dose) is held out. The same narrow network (width 1, gridsize 1, the CPU preset; warm-started:
the initial model's width) is trained on the two scans with each target, for the same epochs, and then
reconstructs the held-out scan alone (one forward pass, phases aligned, stitched:
``inference.reconstruct_network``):

- ``pinn``: the product's self-supervised Poisson likelihood of each pattern;
- ``distil``: ``TrainingMode.DISTIL`` (``engine/distillation.py``): each training scan is first refined
  from a flat object (40 refinement epochs) and the network learns pattern → refined patch beside the
  Poisson likelihood (weight 1); targets are refined again every ``--refresh`` epochs from the better
  start (previous target or the network's object);
- with ``--initial-model``: both warm-started from a pretrained model (``pinn from shipped``,
  ``distil from shipped``), as the GUI's training does with Warm Start on; the model alone is scored too.

The ground truth is never used for training, only for scoring (``metrics.compare``, illuminated
pixels). Beside them: refinement from a flat object on the held-out scan (40 epochs; about LSQML's
quality on these scans, 0.96–1.00× in ``results/streaming-cpu.md``), and the network trained on the
held-out scan itself (``pinn``), the ceiling of training on what you reconstruct.

An earlier run measured supervised-only distillation and distillation without refreshes by swapping
the module's loss (git history of this file, ``docs/quality.md``).

Run (project or benchmark venv; ~25 min on 2 cores)::

    python benchmarks/training_targets_bench.py                      # 4 kinds, 10 epochs
    python benchmarks/training_targets_bench.py --kinds natural --epochs 4   # a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent

from ptychodus_pinn.app.outputs import write_json  # noqa: E402
from ptychodus_pinn.app.pretrain import corpus_scans  # noqa: E402
from ptychodus_pinn.engine import metrics, training  # noqa: E402
from ptychodus_pinn.engine.config import (  # noqa: E402
    ExecutionConfig,
    ModelConfig,
    RefinementConfig,
    RunConfig,
    TrainingConfig,
    TrainingMode,
)
from ptychodus_pinn.engine.data import Scan, atomic_write  # noqa: E402
from ptychodus_pinn.engine.inference import likelier_network, reconstruct_network  # noqa: E402
from ptychodus_pinn.engine.metrics import compare  # noqa: E402
from ptychodus_pinn.engine.persistence import load_model  # noqa: E402
from ptychodus_pinn.engine.refinement import RefinementProblem, refine, scaled_start  # noqa: E402
from ptychodus_pinn.engine.simulate import simulate_scan  # noqa: E402

TARGETS = ("pinn", "distil")
# the first committed runs used 101, 102 → 103; the siemens-lines corpus (app/pretrain.py, seeds 100..107)
# holds lines objects of seeds 101 and 103, so warm-started lines rows there had seen those objects
TRAIN_SEEDS, TEST_SEED = (101, 102), 103


def phase_ssim_of(reconstruction: Any, scan: Scan) -> float:
    return float(compare(reconstruction.object, scan.ground_truth, reconstruction.illuminated).phase_ssim)


# the network's object as scored here; --views sets its symmetry views (ExecutionConfig.symmetry_views)
SCORING = {"execution": ExecutionConfig(accelerator="cpu")}


def scored_network(model: Any, scan: Scan) -> Any:
    return reconstruct_network(model, scan, execution=SCORING["execution"], confidence=False)


def network_phase_ssim(model: Any, scan: Scan) -> float:
    return phase_ssim_of(scored_network(model, scan), scan)


def held_out_scores(model: Any, scan: Scan, scored: Any = None) -> dict[str, float]:
    """The network's phase SSIM on the held-out scan, with --views (``scored``: that object, when already made) and,
    when that is more than one, with one view."""
    scores = {"held_out_phase_ssim": phase_ssim_of(scored if scored is not None else scored_network(model, scan), scan)}
    if (SCORING["execution"].symmetry_views or 1) > 1:
        one_view = reconstruct_network(model, scan, execution=ExecutionConfig(accelerator="cpu"), confidence=False)
        scores["held_out_phase_ssim_one_view"] = phase_ssim_of(one_view, scan)
    return scores


def train_with(
    target: str,
    scans: list[Scan],
    epochs: int,
    N: int,
    refresh: int,
    initial: Any = None,
    weight: float = 1.0,
    learning_rate: float | None = None,
    on_epoch_end: Callable[[training.EpochReport], None] | None = None,
    probe_symmetries: bool = False,
) -> tuple[Any, float, dict]:
    """(model, seconds, distillation summary) for one training target; the truth is removed from every training scan.
    The distillation summary also holds ``best_epoch``: the epoch whose weights training kept (lowest validation loss)."""
    data = [dataclasses.replace(scan, ground_truth=None) for scan in scans]
    config = RunConfig(
        # width 1 (the CPU preset) from scratch; a warm start keeps the initial model's own width
        ModelConfig(N=N, n_filters_scale=1 if initial is None else initial.config.n_filters_scale, mode=TrainingMode(target)),
        TrainingConfig(
            epochs=epochs,
            batch_size=16,
            target_refresh_epochs=refresh,
            distil_weight=weight,
            learning_rate=learning_rate or TrainingConfig().learning_rate,
            probe_symmetries=probe_symmetries,
        ),
        ExecutionConfig(accelerator="cpu"),
    )
    started = time.perf_counter()
    result = training.train(data, config, initial_model=initial, on_epoch_end=on_epoch_end)
    return result.model, time.perf_counter() - started, {**result.extra.get("distillation", {}), "best_epoch": result.best_epoch}


def run_kind(
    kind: str,
    path: str,
    N: int,
    positions: int,
    photons: float,
    epochs: int,
    refresh: int,
    initial: Any = None,
    targets: tuple[str, ...] = TARGETS,
    weight: float = 1.0,
    from_scratch: bool = True,
    ceiling: bool = True,
    learning_rate: float | None = None,
    seeds: tuple[int, int, int] = (*TRAIN_SEEDS, TEST_SEED),
    rehearsal: tuple[Scan, ...] = (),
    track_epochs: bool = False,
    probe_symmetries: bool = False,
) -> dict[str, Any]:
    train_scans = [simulate_scan(kind, photons, positions, N, seed=seed, path=path) for seed in seeds[:2]]
    train_scans += rehearsal  # corpus scans trained on beside them (--rehearse); scored on the first scan only
    test = simulate_scan(kind, photons, positions, N, seed=seeds[2], path=path)
    test_problem = RefinementProblem(test, np.ones(test.object_shape, np.complex64)) if track_epochs else None
    row: dict[str, Any] = {"kind": kind, "path": path}
    started = time.perf_counter()
    flat = refine(test, None, RefinementConfig())
    row["refinement_from_flat_phase_ssim"] = float(compare(flat.object, test.ground_truth, flat.illuminated).phase_ssim)
    row["refinement_from_flat_s"] = time.perf_counter() - started
    starts = ([("", None)] if from_scratch else []) + ([] if initial is None else [("_from_shipped", initial)])
    if initial is not None:
        row["shipped_alone"] = held_out_scores(initial, test)
        if test_problem is not None:
            row["shipped_alone"]["held_out_object_nll"] = scaled_start(test_problem, scored_network(initial, test).object)[1]
    for suffix, start in starts:
        for target in targets:
            tracked: list[dict[str, float | None]] = []

            def track(report: training.EpochReport, tracked: list[dict[str, float | None]] = tracked) -> None:
                # the held-out score after every epoch (costs ~1 s an epoch): does the validation loss see it?
                assert report.model is not None and test_problem is not None
                was_training = report.model.training
                network = scored_network(report.model, test)
                tracked.append({
                    "epoch": report.epoch, "train_loss": report.train_loss, "val_loss": report.val_loss,
                    "held_out_phase_ssim": phase_ssim_of(network, test),
                    # the held-out scan's own counts: the likelihood start "auto" ranks network objects by
                    "held_out_object_nll": scaled_start(test_problem, network.object)[1],
                    "train_scan_phase_ssim": network_phase_ssim(report.model, train_scans[0]),
                })  # fmt: skip
                report.model.train(was_training)

            model, seconds, distillation = train_with(
                target, train_scans, epochs, N, refresh, start, weight, learning_rate, track if track_epochs else None,
                probe_symmetries,
            )  # fmt: skip
            key = target + suffix
            held_out = scored_network(model, test)  # scored here and, below, weighed against the shipped one's
            row[key] = {
                **held_out_scores(model, test, held_out),
                "train_scan_phase_ssim": network_phase_ssim(model, train_scans[0]),
                "train_s": seconds,
                "best_epoch": distillation.pop("best_epoch"),
            }
            if tracked:
                row[key]["per_epoch"] = tracked
            if start is not None:  # what Infer shows: the trained model's object or the shipped one's, by likelihood
                chosen = likelier_network(held_out, ("shipped", start), test, execution=SCORING["execution"], confidence=False)
                assert chosen.network_choice is not None
                row[key]["shipped_competing"] = {
                    "held_out_phase_ssim": phase_ssim_of(chosen, test),
                    "chosen": min(chosen.network_choice, key=chosen.network_choice.__getitem__),
                    "nll": chosen.network_choice,
                }
            if distillation:
                row[key]["distillation"] = distillation
            print(
                f"  {kind}: {key}: held-out {row[key]['held_out_phase_ssim']:.3f}, "
                f"train scan {row[key]['train_scan_phase_ssim']:.3f}, {seconds:.0f} s",
                flush=True,
            )
    if ceiling:
        model, seconds, _ = train_with("pinn", [test], epochs, N, refresh)
        row["pinn_on_held_out_itself"] = {"held_out_phase_ssim": network_phase_ssim(model, test), "train_s": seconds}
    return row


COLUMNS = {  # row key → column title
    "pinn": "pinn",
    "distil": "distil",
    "shipped_alone": "shipped model alone",
    "pinn_from_shipped": "pinn from shipped",
    "distil_from_shipped": "distil from shipped",
    "pinn_on_held_out_itself": "pinn trained on the held-out scan itself",
}


def markdown(results: dict[str, Any]) -> str:
    settings = results["settings"]
    present = [key for key in COLUMNS if any(key in row for row in results["rows"])]
    lines = [
        f"Training targets, network alone on a held-out scan of the same kind (N={settings['N']}, {settings['positions']} "
        f"patterns, {settings['photons']:.0e} photons, width {settings.get('width', 1)}, {settings['epochs']} epochs "
        "on 2 scans, distil targets "
        f"refreshed every {settings['refresh']} epochs, learning rate {settings.get('learning_rate') or 'default'}, "
        f"seeds {settings['train_seeds']} → {settings['test_seed']}, {results['machine']}"
        + (f"; plus {settings['rehearse_corpus_scans']} corpus scans rehearsed" if settings.get("rehearse_corpus_scans") else "")
        + ("; batches seen through the probe's symmetries" if settings.get("probe_symmetries") else "")
        + (f"; networks scored with {settings['symmetry_views']} symmetry views" if settings.get("symmetry_views", 1) > 1 else "")
        + "):",
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
            if "held_out_phase_ssim_one_view" in entry:
                cell += f" [1 view: {entry['held_out_phase_ssim_one_view']:.3f}]"
            if "train_scan_phase_ssim" in entry:
                cell += f" (train scan {entry['train_scan_phase_ssim']:.3f})"
            if "shipped_competing" in entry:
                competing = entry["shipped_competing"]
                chosen = "shipped" if competing["chosen"] == "shipped" else "trained"
                cell += f"; Infer, shipped competing: {competing['held_out_phase_ssim']:.3f} ({chosen})"
            cells.append(cell)
        lines.append(
            f"| {row['kind']} ({row['path']}) | " + " | ".join(cells) + f" | {row['refinement_from_flat_phase_ssim']:.3f} |"
        )
    lines += ["", "Cells: phase SSIM of the network's object on the held-out scan (on the first training scan)."]
    for row in results["rows"]:
        for key in present:
            tracked = (row.get(key) or {}).get("per_epoch")
            if not tracked:
                continue
            lines += [
                "",
                f"{row['kind']}, {COLUMNS[key]}, per epoch (training keeps epoch {row[key]['best_epoch']}, the lowest "
                "validation loss"
                + (
                    f"; initial model: held-out {row['shipped_alone']['held_out_phase_ssim']:.3f}"
                    if "shipped_alone" in row
                    else ""
                )
                + "):",
                "",
                "| epoch | validation loss | held-out phase SSIM | held-out object NLL | train scan phase SSIM |",
                "|---|---|---|---|---|",
            ]
            start = row.get("shipped_alone", {})
            if "held_out_object_nll" in start:
                lines.append(f"| 0 | — | {start['held_out_phase_ssim']:.3f} | {start['held_out_object_nll']:.5f} | — |")
            shown = [entry for entry in tracked if entry["epoch"] in (1, 2, 3) or entry["epoch"] % 5 == 0]
            for entry in shown:
                val_loss = "—" if entry["val_loss"] is None else f"{entry['val_loss']:.5f}"
                held_out, train_scan = entry["held_out_phase_ssim"], entry["train_scan_phase_ssim"]
                nll = f"{entry['held_out_object_nll']:.5f}" if "held_out_object_nll" in entry else "—"
                lines.append(f"| {entry['epoch']} | {val_loss} | {held_out:.3f} | {nll} | {train_scan:.3f} |")
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
    parser.add_argument("--refresh", type=int, default=5, help="distil: refine the targets again every this many epochs")
    parser.add_argument("--distil-weight", type=float, default=1.0, help="distil: weight of the refined-object term")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    parser.add_argument("--skip-ceiling", action="store_true", help="do not train on the held-out scan itself")
    parser.add_argument("--shipped-only", action="store_true", help="only the runs warm-started from --initial-model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--initial-model", type=Path, default=None, help="also warm-start from this model")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs=3,
        default=(*TRAIN_SEEDS, TEST_SEED),
        metavar=("TRAIN1", "TRAIN2", "TEST"),
        help="scan seeds: two to train on, one held out (keep them out of the warm-start model's corpus)",
    )
    parser.add_argument("--learning-rate", type=float, default=None, help="training's learning rate (default: TrainingConfig's)")
    parser.add_argument(
        "--rehearse",
        type=int,
        default=0,
        metavar="K",
        help="also train on the first K broad-one-probe corpus scans (400 patterns each; rehearsal against forgetting)",
    )
    parser.add_argument(
        "--track-epochs",
        action="store_true",
        help="score the held-out scan after every epoch (phase SSIM, and the likelihood of the network's object under its "
        "counts), beside the validation loss",
    )
    parser.add_argument(
        "--probe-symmetries",
        action="store_true",
        help="train with TrainingConfig.probe_symmetries (each batch seen through one of the probe's square symmetries)",
    )
    parser.add_argument(
        "--views", type=int, default=1, help="symmetry views the network's objects are scored with (1: the CPU default)"
    )
    parser.add_argument("--name", default="training-targets-cpu")
    parser.add_argument("--out", default=str(HERE / "results"))
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    SCORING["execution"] = ExecutionConfig(accelerator="cpu", symmetry_views=arguments.views)
    if arguments.shipped_only and arguments.initial_model is None:
        parser.error("--shipped-only needs --initial-model")
    initial = None if arguments.initial_model is None else load_model(arguments.initial_model)
    rehearsal = tuple(corpus_scans(arguments.rehearse, arguments.size, 400, one_probe=True)) if arguments.rehearse else ()
    rows = []
    for spec in arguments.kinds:
        kind, _, path = spec.partition(":")
        rows.append(
            run_kind(
                kind, path or "jittered", arguments.size, arguments.positions, arguments.photons, arguments.epochs,
                arguments.refresh, initial, tuple(arguments.targets), arguments.distil_weight,
                not arguments.shipped_only, not arguments.skip_ceiling, arguments.learning_rate, tuple(arguments.seeds),
                rehearsal, arguments.track_epochs, arguments.probe_symmetries,
            )
        )  # fmt: skip
    import platform

    results = {
        "settings": {"N": arguments.size, "positions": arguments.positions, "photons": arguments.photons,
                     "epochs": arguments.epochs, "refresh": arguments.refresh,
                     "distil_weight": arguments.distil_weight, "train_seeds": list(arguments.seeds[:2]),
                     "test_seed": arguments.seeds[2], "learning_rate": arguments.learning_rate,
                     "rehearse_corpus_scans": arguments.rehearse, "threads": arguments.threads,
                     "track_epochs": arguments.track_epochs, "probe_symmetries": arguments.probe_symmetries,
                     "symmetry_views": arguments.views,
                     "width": 1 if initial is None else initial.config.n_filters_scale,
                     "initial_model": None if arguments.initial_model is None else arguments.initial_model.name,
                     "scoring": metrics.SCORING},
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
