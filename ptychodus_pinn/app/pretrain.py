"""``ptychodus-pinn pretrain``: the shipped starting model and the corpora it can be trained on (issue 10).

The shipped ``resources/pretrained-n64.pinn.pt`` is two runs of this command (``docs/quality.md``,
"Distilled pretraining"), and ``resources/pretrained-n128.pinn.pt`` the same two with ``--size 128``:

1. ``pretrain --out stage1.pinn.pt`` (the defaults): the ``siemens-lines`` corpus, eight scans of Siemens
   stars and lines (seeds 100–107, 576 patterns, 10⁴–10⁶ photons, the default probe), ``pinn`` mode,
   40 epochs at learning rate 3e-3 (the model shipped until 2026-12-05);
2. ``pretrain --corpus broad-one-probe --mode distil --initial-model stage1.pinn.pt --epochs 30
   --learning-rate 1e-3``: that model fine-tuned on 25 scans of every object kind, each refined first and
   learnt as refined patches beside the likelihood.

``broad`` cycles through five object kinds (natural images from photographs the benchmarks never
use, ``simulate.CORPUS_PHOTOGRAPHS``; circuit-like and granular objects; Siemens stars; lines), three
scan paths (raster, jittered raster, spiral: sub-pixel positions), three probe sizes and three
defoci, and a dose spread evenly in log from 10³ to 10⁷ photons per pattern. Every scan has its own
seed (2000 + index), so none of them is a scan the tests, the demo or the benchmarks simulate.
Each pattern is trained against the probe that lit it (``datasets.scan_probes``). One probe mode
throughout: the model has one probe tensor shape. ``broad-one-probe`` keeps the objects and paths
with the default probe and 10⁴–10⁶ photons. Measured (``benchmarks/results/pretrained-models-cpu.md``):
fine-tuned with ``distil`` the one-probe corpus made the network better on all five unseen benchmark
kinds; the probe-varied one did not (better on Siemens stars, worse on lines, circuits and grains), and
neither corpus trained with ``pinn`` alone beat the siemens-lines model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptychodus_pinn.engine.config import ExecutionConfig, ModelConfig, RunConfig, TrainingConfig, TrainingMode
from ptychodus_pinn.engine.persistence import load_model, save_model
from ptychodus_pinn.engine.simulate import CORPUS_PHOTOGRAPHS, ObjectKind, ScanPath, simulate_scan
from ptychodus_pinn.engine.training import EpochReport, train

SIEMENS_LINES_SEEDS = range(100, 108)
CORPUS_SEED = 2000
CORPUS_KINDS = (ObjectKind.NATURAL, ObjectKind.CIRCUIT, ObjectKind.GRAINS, ObjectKind.SIEMENS, ObjectKind.LINES)
CORPUS_PATHS = (ScanPath.RASTER, ScanPath.JITTERED, ScanPath.SPIRAL)
PROBE_RADII = (0.2, 0.25, 0.3)  # × N: the probe's radius in pixels
PROBE_CURVATURES_RAD = (1.0, 2.0, 4.0)  # defocus phase at the probe's rim
PHOTONS_DECADES = (3.0, 7.0)
# ``broad-one-probe``: the same objects and paths with the default probe (radius N/4, defocus 2 rad), 10⁴–10⁶ photons
ONE_PROBE = ((0.25,), (2.0,), (4.0, 6.0))


@dataclass(frozen=True)
class CorpusScan:
    """One corpus entry: what ``simulate_scan`` is called with."""

    kind: ObjectKind
    path: ScanPath
    photons: float
    probe_radius_px: float
    probe_curvature_rad: float
    seed: int


def corpus(count: int, size_px: int, one_probe: bool = False) -> list[CorpusScan]:
    """``count`` entries; kinds, paths, probe sizes and defoci cycle with coprime periods (5, 3, 3 shifted),
    doses are a golden-ratio sequence over the decades (evenly spread, never repeating). ``one_probe``: the
    default probe only, over 10⁴–10⁶ photons."""
    radii, curvatures, (low, high) = ONE_PROBE if one_probe else (PROBE_RADII, PROBE_CURVATURES_RAD, PHOTONS_DECADES)
    entries = []
    for index in range(count):
        fraction = (index * (math.sqrt(5) - 1) / 2) % 1.0
        entries.append(
            CorpusScan(
                kind=CORPUS_KINDS[index % len(CORPUS_KINDS)],
                path=CORPUS_PATHS[index % len(CORPUS_PATHS)],
                photons=float(10 ** (low + (high - low) * fraction)),
                probe_radius_px=radii[(index // 3) % len(radii)] * size_px,
                probe_curvature_rad=curvatures[(index // 9) % len(curvatures)],
                seed=CORPUS_SEED + index,
            )
        )
    return entries


def siemens_lines_scans(size_px: int = 64) -> list[Any]:
    """The shipped model's corpus: Siemens stars and lines over 10⁴–10⁶ photons, seeds the demo never uses."""
    scans = []
    for index, seed in enumerate(SIEMENS_LINES_SEEDS):
        kind = "siemens" if index % 2 == 0 else "lines"
        photons = 10 ** (4 + 2 * (index % 4) / 3)
        scans.append(simulate_scan(kind, photons, 576, size_px, seed))
    return scans


def corpus_scans(count: int = 25, size_px: int = 64, n_positions: int = 400, one_probe: bool = False) -> list[Any]:
    return [
        simulate_scan(
            entry.kind,
            entry.photons,
            n_positions,
            size_px,
            entry.seed,
            path=entry.path,
            probe_radius_px=entry.probe_radius_px,
            probe_curvature_rad=entry.probe_curvature_rad,
            photographs=CORPUS_PHOTOGRAPHS if entry.kind is ObjectKind.NATURAL else None,
        )
        for entry in corpus(count, size_px, one_probe)
    ]


CORPORA = ("siemens-lines", "broad", "broad-one-probe")


def run_pretraining(
    out: Path,
    execution: ExecutionConfig,
    epochs: int = 40,
    size_px: int = 64,
    learning_rate: float = 3e-3,
    corpus_name: str = "siemens-lines",
    count: int = 25,
    n_positions: int = 400,
    mode: TrainingMode = TrainingMode.PINN,
    initial_model: Path | None = None,
    width: int | None = None,
    probe_symmetries: bool = False,
) -> Path:
    """Train a starting model (gridsize 1; ``width`` the U-Net's width multiplier, 1 unless given or taken
    from ``initial_model``) on one of :data:`CORPORA` and save it to ``out`` (``count`` and ``n_positions``
    size the ``broad`` corpus).

    ``mode`` pinn is the shipped model's recipe; distil refines every corpus scan first and trains on
    its refined patches too (``engine/distillation.py``). ``initial_model`` fine-tunes a saved model
    (same N, gridsize 1) instead of starting from random weights. ``probe_symmetries``: batches seen through
    the corpus probes' square symmetries (``TrainingConfig.probe_symmetries``).
    """
    if corpus_name not in CORPORA:
        raise ValueError(f"unknown corpus {corpus_name!r}; one of: {', '.join(CORPORA)}")
    start = None
    if initial_model is not None:
        start = load_model(initial_model, expect=ModelConfig(N=size_px))
    if start is not None and width is not None and width != start.config.n_filters_scale:
        raise ValueError(
            f"--n-filters-scale {width} differs from the initial model's width {start.config.n_filters_scale}: "
            "a model is fine-tuned at its own width; leave the flag out"
        )
    if start is not None:
        width = start.config.n_filters_scale
    model = ModelConfig(N=size_px, n_filters_scale=1 if width is None else width, mode=mode)
    training = TrainingConfig(
        epochs=epochs, batch_size=16, validation_fraction=0.0, learning_rate=learning_rate, probe_symmetries=probe_symmetries
    )
    config = RunConfig(model=model, training=training, execution=execution)
    if corpus_name == "siemens-lines":
        scans = siemens_lines_scans(size_px)
    else:
        scans = corpus_scans(count, size_px, n_positions, one_probe=corpus_name == "broad-one-probe")
    print(f"corpus: {len(scans)} scans, {sum(scan.count for scan in scans)} patterns of N={size_px}", flush=True)

    def report(epoch: EpochReport) -> None:
        print(f"epoch {epoch.epoch}/{epoch.epochs} loss {epoch.train_loss:.4f} ({epoch.seconds:.0f} s)", flush=True)

    result = train(scans, config, initial_model=start, on_epoch_end=report)
    if corpus_name != "siemens-lines":
        described = f"{count} scans × {n_positions} patterns (seeds {CORPUS_SEED}..{CORPUS_SEED + count - 1})"
    else:
        seeds = f"{SIEMENS_LINES_SEEDS.start}..{SIEMENS_LINES_SEEDS.stop - 1}"
        described = f"{len(scans)} scans × {scans[0].count} patterns (seeds {seeds})"
    recipe = (
        f"app.pretrain {corpus_name} corpus: {described}, {mode.value} mode, {epochs} epochs, learning rate {learning_rate:g}"
        + (", batches seen through the probe's symmetries" if probe_symmetries else "")
    )
    if start is not None and initial_model is not None:
        earlier = start.record.extra.get("pretrained_on", "no recorded recipe")
        recipe += f", fine-tuned from {initial_model.name} ({earlier})"
    result.model.record.extra["pretrained_on"] = recipe
    save_model(result.model, out)
    print(f"wrote {out} ({result.seconds:.0f} s)")
    return out
