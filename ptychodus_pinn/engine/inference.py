"""Reconstruction: the network's fast object (batched prediction, phase alignment, stitching),
then joint refinement against every pattern (``refinement.py``), on by default (SPEC §11)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ptychodus_pinn.engine import confidence, physics
from ptychodus_pinn.engine import refinement as refinement_steps
from ptychodus_pinn.engine.config import ExecutionConfig, RefinementConfig, RefinementStart
from ptychodus_pinn.engine.data import Scan, ScanError
from ptychodus_pinn.engine.device import (
    DeviceSpec,
    device_spec,
    is_out_of_memory,
    release_cached_memory,
    release_device_memory,
)
from ptychodus_pinn.engine.model import PinnModel, input_normalization_for, network_input
from ptychodus_pinn.engine.network import channels_last_on_cpu
from ptychodus_pinn.engine.refinement import RefinementReport, RefinementResult, refine

logger = logging.getLogger(__name__)

#: Stitching shrinks pixels lit below about this fraction of the peak summed probe weight toward the
#: object's mean (``physics.stitch``'s ``fade_fraction``): the network's guesses where only the
#: probe's tails reach stay out of the object and out of refinement's start, which the data can
#: barely correct there.
WEAK_ILLUMINATION_FADE = 0.02


@dataclass
class Reconstruction:
    """The object on the scan's object grid, which of its pixels any probe lit, and how it was made.

    ``stages`` names what ran, in order (``network``, ``refinement``); ``network_object`` is the
    network's stitched object before refinement (None when no network ran); ``probe`` is the
    probe the object goes with (refined when refinement refined it).
    """

    object: np.ndarray
    illuminated: np.ndarray
    seconds: float
    patterns_per_second: float
    patches: np.ndarray | None = None
    stages: tuple[str, ...] = ("network",)
    network_object: np.ndarray | None = None
    network_seconds: float = 0.0
    probe: np.ndarray | None = None
    refinement: RefinementResult | None = None
    # photon-counting lower bounds on the noise of each object pixel (engine/confidence.py): phase
    # in radians, amplitude in object units; inf where no probe reached, None if not computed
    phase_std_rad: np.ndarray | None = None
    amplitude_std: np.ndarray | None = None
    # when two models' objects competed (``reconstruct_stages``' ``alternative``): each one's Poisson NLL per
    # pattern under this scan's counts, by name ("the model in use" and the alternative's); the lower one made
    # ``network_object``
    network_choice: dict[str, float] | None = None
    # how many square symmetries of the probe the network saw each pattern through (``symmetry_views``)
    symmetry_views: int = 1


def confidence_for(
    obj: np.ndarray, probe: np.ndarray, scan: Scan, illumination: np.ndarray | None = None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(σ_φ, σ_A) of a reconstruction and its probe on ``scan`` (the refinement's intensity scale).

    A failure costs the map, never the reconstruction: it is logged and (None, None) returned.
    """
    started = time.perf_counter()
    try:
        scale = confidence.scan_intensity_scale(scan.patterns, scan.probe, scan.bad_pixels)
        maps = confidence.confidence_maps(obj, probe, scan.positions_yx_px, scale, scan.bad_pixels, illumination=illumination)
    except ValueError as error:
        logger.warning("no confidence map: %s", error)
        return None, None
    logger.debug("confidence map: %.1f ms", 1e3 * (time.perf_counter() - started))
    return maps


def with_confidence(reconstruction: Reconstruction, scan: Scan) -> Reconstruction:
    """The reconstruction with its confidence maps, computed now if it has none (the network's object, when it
    becomes the result after all)."""
    if reconstruction.phase_std_rad is not None:
        return reconstruction
    phase_std, amplitude_std = confidence_for(
        reconstruction.object, reconstruction.probe if reconstruction.probe is not None else scan.probe, scan
    )
    return dataclasses.replace(reconstruction, phase_std_rad=phase_std, amplitude_std=amplitude_std)


def check_scan_fits(model: PinnModel, scan: Scan) -> None:
    if scan.size_px != model.config.N:
        raise ScanError(
            f"the model was trained for N={model.config.N} but the scan has {scan.size_px}-px patterns; "
            f"crop/bin the patterns to {model.config.N} px or train a model for N={scan.size_px}"
        )
    if scan.count < model.config.channels:
        raise ScanError(f"the model groups {model.config.channels} patterns but the scan has only {scan.count}")


# the order views are taken in (physics.square_symmetry): the identity, the half turn, the two axis reflections
# (four views measured to give most of what all eight give), the two diagonal reflections, the quarter turns
VIEW_ORDER = (0, 6, 2, 4, 1, 7, 3, 5)


def symmetry_views(execution: ExecutionConfig, scan: Scan, model: PinnModel, device: torch.device) -> tuple[int, ...]:
    """The square symmetries the network sees each pattern through (``ExecutionConfig.symmetry_views``): the first
    of :data:`VIEW_ORDER` that the scan's probe has, as many as asked (unset: all on a GPU, one on a CPU, where each
    view costs a forward pass: docs/quality.md); only the identity for gridsize > 1."""
    wanted = execution.symmetry_views or (1 if device.type == "cpu" else physics.SQUARE_SYMMETRIES)
    if wanted == 1 or model.config.channels > 1:
        return (0,)
    probe_has = physics.probe_symmetries(torch.from_numpy(np.asarray(scan.probe)))
    views = tuple(index for index in VIEW_ORDER if index in probe_has)[:wanted]
    if len(views) < wanted:  # a real probe is rarely symmetric: worth a line only where views were asked for
        log = logger.info if execution.symmetry_views else logger.debug
        log("The probe has %d of the %d symmetry views asked for; the network uses those", len(views), wanted)
    return views


@torch.no_grad()
def predict_patches(
    model: PinnModel, scan: Scan, batch_size: int, device: torch.device, views: tuple[int, ...] = (0,)
) -> torch.Tensor:
    """One complex patch per pattern (M, N, N); with gridsize > 1 each pattern seeds its own group.

    ``views``: square symmetries (``physics.square_symmetry``) of the probe; each pattern is also seen through
    them, the patches turned back and averaged (``physics.average_symmetry_views``), one forward pass per view.
    """
    config = model.config
    weight = physics.probe_weight(torch.from_numpy(np.asarray(scan.probe))) if len(views) > 1 else None
    groups = physics.group_neighbors(scan.positions_yx_px, config.gridsize, config.neighbor_count, None, seed=0)
    normalization = input_normalization_for(scan.mean_total_counts, scan.size_px)
    model.eval().to(device)
    outputs = []
    start = 0
    with channels_last_on_cpu(model.generator, device):
        while start < groups.shape[0]:
            batch = torch.from_numpy(scan.patterns[groups[start : start + batch_size]]).to(device)
            try:
                patches = _network_patches(model, network_input(batch, normalization), views, weight)
            except Exception as error:
                # out of memory: halve the batch and carry on, down to one pattern at a time
                if not is_out_of_memory(error) or batch_size == 1:
                    raise
                del batch
                release_cached_memory(device)
                batch_size //= 2
                logger.warning("out of memory during inference; inference batch size lowered to %d", batch_size)
                continue
            outputs.append(patches[:, 0].to(torch.complex64).cpu())
            start += batch_size
    return torch.cat(outputs)


def _network_patches(
    model: PinnModel, network_input: torch.Tensor, views: tuple[int, ...], weight: torch.Tensor | None
) -> torch.Tensor:
    if weight is None:
        return model.predict_patches(network_input)
    seen = [
        physics.square_symmetry(
            model.predict_patches(physics.square_symmetry(network_input, index)).to(torch.complex64),
            physics.SQUARE_SYMMETRY_INVERSES[index],
        )
        for index in views
    ]
    return physics.average_symmetry_views(seen, weight.to(network_input.device))


def reconstruct_network(
    model: PinnModel,
    scan: Scan,
    *,
    execution: ExecutionConfig | None = None,
    align_phases: bool = True,
    devices: DeviceSpec | None = None,
    confidence: bool = True,
) -> Reconstruction:
    """The network's object: one forward pass plus stitching onto ``scan.object_shape``.

    It runs on the execution's device (``engine.device.device_spec``: the first device chosen, the
    GPU training used), or on ``devices`` when given; the model is moved there. A mid-training preview
    passes the execution the training runs with, so the live model stays where Lightning put it.

    The network input normalisation is recomputed from this scan (so a different dose works).
    Patch phases are aligned on their overlaps before stitching (see physics.align_patch_phases).
    ``execution.middle_trim`` crops patch edges; ``execution.pad_eval`` keeps patches that hang
    over the grid edge (their in-grid part), otherwise such patches are left out. ``confidence``: also the
    photon-counting confidence maps (off when refinement follows: the result's maps are the refined object's).
    """
    execution = execution or ExecutionConfig()
    check_scan_fits(model, scan)
    device = (devices or device_spec(execution)).torch_device
    batch_size = execution.inference_batch_size or model.record.batch_size
    started = time.perf_counter()
    views = symmetry_views(execution, scan, model, device)
    patches = predict_patches(model, scan, batch_size, device, views)
    predicted = time.perf_counter()
    positions = scan.positions_yx_px
    keep = np.ones(scan.count, dtype=bool)
    if not execution.pad_eval:
        half = scan.size_px // 2
        integer = np.rint(positions).astype(int)
        keep = (
            (integer[:, 0] - half >= 0)
            & (integer[:, 1] - half >= 0)
            & (integer[:, 0] + scan.size_px - half <= scan.object_shape[0])
            & (integer[:, 1] + scan.size_px - half <= scan.object_shape[1])
        )
        if not keep.any():
            raise ScanError("pad_eval is off and no patch fits wholly inside the object grid; turn pad_eval on")
    patches, positions = patches[torch.from_numpy(keep)], positions[keep]
    weight = physics.probe_weight(torch.from_numpy(scan.probe), execution.middle_trim)
    if align_phases:
        patches = physics.align_patch_phases(patches, positions, weight, model.config.neighbor_count)
    fill = None if scan.object_guess is None else torch.from_numpy(scan.object_guess)
    obj, illuminated = physics.stitch(
        patches, positions, weight, scan.object_shape, fill=fill, fade_fraction=WEAK_ILLUMINATION_FADE
    )
    finished = time.perf_counter()
    release_cached_memory(device)
    phase_std, amplitude_std = confidence_for(obj.numpy(), scan.probe, scan) if confidence else (None, None)
    return Reconstruction(
        object=obj.numpy().astype(np.complex64),
        illuminated=illuminated.numpy(),
        seconds=finished - started,
        patterns_per_second=scan.count / max(predicted - started, 1e-9),
        patches=patches.numpy(),
        stages=("network",),
        network_object=obj.numpy().astype(np.complex64),
        network_seconds=finished - started,
        probe=scan.probe,
        phase_std_rad=phase_std,
        amplitude_std=amplitude_std,
        symmetry_views=len(views),
    )


def refine_reconstruction(
    scan: Scan,
    network: Reconstruction | None,
    refinement: RefinementConfig,
    *,
    execution: ExecutionConfig | None = None,
    on_epoch: Callable[[RefinementReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    devices: DeviceSpec | None = None,
) -> Reconstruction:
    """Refine the network's object (or a flat one, as the data decide) against every pattern, on the
    execution's device (the one training and the network use), or on ``devices`` when given."""
    execution = execution or ExecutionConfig()
    device = (devices or device_spec(execution)).torch_device
    start = None if network is None else network.object
    result = refine(scan, start, refinement, device=device, on_epoch=on_epoch, should_stop=should_stop)
    return _refined(scan, network, result, device)


def _refined(scan: Scan, network: Reconstruction | None, result: RefinementResult, device: torch.device) -> Reconstruction:
    """The Reconstruction of a refinement result (with its confidence map) after the network's (if any)."""
    network_seconds = 0.0 if network is None else network.seconds
    release_cached_memory(device)
    phase_std, amplitude_std = confidence_for(result.object, result.probe, scan, result.illumination)
    return Reconstruction(
        object=result.object,
        illuminated=result.illuminated,
        seconds=network_seconds + result.seconds,
        patterns_per_second=scan.count / max(network_seconds + result.seconds, 1e-9),
        patches=None,
        stages=(*(() if network is None else network.stages), "refinement"),
        network_object=None if network is None else network.object,
        network_seconds=network_seconds,
        probe=result.probe,
        refinement=result,
        phase_std_rad=phase_std,
        amplitude_std=amplitude_std,
        network_choice=None if network is None else network.network_choice,
    )


def network_shapes_result(refinement: RefinementConfig) -> bool:
    """Whether the network's object can change the result: not when refinement runs and starts flat.

    Then the network stage is only something to show while refinement runs; callers nobody watches
    (``watch``, the streaming workflow) skip it: on a 576-pattern N = 64 scan it is ~2 of ~6 s.
    """
    return refinement.epochs == 0 or refinement.start is not RefinementStart.FLAT


def reconstruct(
    model: PinnModel | None,
    scan: Scan,
    *,
    execution: ExecutionConfig | None = None,
    refinement: RefinementConfig | None = None,
    align_phases: bool = True,
    on_refinement_epoch: Callable[[RefinementReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    alternative: tuple[str, PinnModel] | None = None,
) -> Reconstruction:
    """Network, then refinement (``refinement=RefinementConfig()`` by default; ``epochs=0`` skips it):
    :func:`reconstruct_stages` driven to its result, with its rules (a flat start without a model; the
    network's object when refinement fails or is stopped right after the network; ``alternative``'s object
    competing with the model's by the scan's likelihood)."""
    for event in reconstruct_stages(
        model, scan, execution=execution, refinement=refinement, align_phases=align_phases, should_stop=should_stop,
        alternative=alternative,
    ):  # fmt: skip
        if isinstance(event, RefinementEpoch) and on_refinement_epoch is not None:
            on_refinement_epoch(event.report)
        elif isinstance(event, FinalResult):
            return event.reconstruction
    raise AssertionError("reconstruct_stages ended without a result")


# ------------------------------------------------------------------------ the stages, as events
# One implementation of network-then-refinement for every caller: ``reconstruct`` (the CLI's infer and
# watch, the demo) drives it to the end; the ptychodus plugin turns each event into a product.


@dataclass(frozen=True)
class NetworkStage:
    """The network's object is ready and refinement follows (a caller can show it at once)."""

    reconstruction: Reconstruction


@dataclass(frozen=True)
class RefinementEpoch:
    """One refinement epoch: ``report.snapshot()`` is the object so far; ``nll_floor`` is the Poisson NLL per
    pattern of a perfect fit (``physics.poisson_nll_floor``), so ``report.nll - nll_floor`` ≥ 0 is what is left
    (for the full-resolution epochs: a ``report.half_resolution`` one's NLL is over the detector's centre)."""

    report: RefinementReport
    nll_floor: float


@dataclass(frozen=True)
class FinalResult:
    """The result; ``fallback`` says why it is the network's object although refinement was due (else None)."""

    reconstruction: Reconstruction
    fallback: str | None = None


StageEvent = NetworkStage | RefinementEpoch | FinalResult
REFINEMENT_LOG_FRACTION = 0.1  # refinement's progress is logged every 10 % of its epochs
MODEL_IN_USE = "the model in use"


def network_object(
    model: PinnModel,
    scan: Scan,
    *,
    execution: ExecutionConfig | None = None,
    devices: DeviceSpec | None = None,
    align_phases: bool = True,
    release: bool = True,
    confidence: bool = True,
) -> Reconstruction:
    """:func:`reconstruct_network` that leaves the model in its training state (a preview of a model being
    trained) and, with ``release``, back on the CPU with cached accelerator memory returned."""
    was_training = bool(model.training)
    try:
        return reconstruct_network(
            model, scan, execution=execution, align_phases=align_phases, devices=devices, confidence=confidence
        )
    finally:
        model.train(was_training)
        if release:
            release_device_memory(model)  # nn.Module.to moves it in place


def likelier_network(
    network: Reconstruction,
    alternative: tuple[str, PinnModel],
    scan: Scan,
    *,
    execution: ExecutionConfig | None = None,
    devices: DeviceSpec | None = None,
    align_phases: bool = True,
    confidence: bool = True,
) -> Reconstruction:
    """``network`` (the model in use's object) or the ``alternative`` model's object on the same scan, whichever
    the scan's own counts find likelier (each scaled as refinement's starts are: ``refinement.scaled_start``).

    Why: a model trained on a few scans can be a worse start than the shipped one on the next scan (measured on
    natural images: docs/quality.md), and no validation split of its training scans shows that; the new scan's
    likelihood does, and ranked the networks' objects as their phase SSIM did (``training_targets_bench.py
    --track-epochs``). Costs the alternative's forward pass and two likelihood passes.
    """
    name, model = alternative
    started = time.perf_counter()
    devices = devices or device_spec(execution or ExecutionConfig())
    other = network_object(model, scan, execution=execution, align_phases=align_phases, devices=devices, confidence=confidence)
    problem = refinement_steps.RefinementProblem(scan, network.object, devices.torch_device)
    scores = {
        MODEL_IN_USE: refinement_steps.scaled_start(problem, network.object)[1],
        name: refinement_steps.scaled_start(problem, other.object)[1],
    }
    del problem
    release_cached_memory(devices.torch_device)
    chosen = other if scores[name] < scores[MODEL_IN_USE] else network  # NaN keeps the model in use
    logger.info(
        "Network: %s's object fits this scan %s (Poisson NLL per pattern %.5f against %.5f for %s's): %s",
        name,
        "better" if chosen is other else "no better",
        scores[name],
        scores[MODEL_IN_USE],
        MODEL_IN_USE,
        f"using {name}'s" if chosen is other else f"keeping {MODEL_IN_USE}'s",
    )
    seconds = network.seconds + time.perf_counter() - started  # both networks and the choice
    return dataclasses.replace(chosen, seconds=seconds, network_seconds=seconds, network_choice=scores)


def reconstruct_stages(
    model: PinnModel | None,
    scan: Scan,
    *,
    execution: ExecutionConfig | None = None,
    refinement: RefinementConfig | None = None,
    align_phases: bool = True,
    should_stop: Callable[[], bool] | None = None,
    alternative: tuple[str, PinnModel] | None = None,
) -> Iterator[StageEvent]:
    """Network, then refinement, as events: :class:`NetworkStage`, a :class:`RefinementEpoch` per epoch, and
    always a :class:`FinalResult` last (the only event when refinement is off).

    The rules, the same for every caller and each logged in one line: without a model refinement starts
    from a flat object (no model and refinement off is a ValueError); with refinement off the network's
    object is the result; ``should_stop`` (polled right after the network stage and by refinement
    between mini-batches) ends the run with the state reached; if refinement fails (e.g. out of GPU
    memory) the network's object is the result. Both stages run on the one device the execution maps
    to, checked before either starts; the model is left on the CPU, in its training state.

    ``alternative`` (name, model): with start ``auto``, that model's object competes with the model in use's
    by the scan's likelihood (:func:`likelier_network`); the plugin passes the shipped model when another one
    is in use. Start ``network`` uses the model in use's object, whatever fits better; an alternative with the
    model in use's very weights (the shipped model loaded from its file) is not run.
    """
    refinement = RefinementConfig() if refinement is None else refinement
    if model is None and refinement.epochs == 0:
        raise ValueError(
            f"nothing to reconstruct with: no network model for N={scan.size_px} patterns and refinement is off "
            "(refinement epochs 0)"
        )
    execution = execution or ExecutionConfig()
    devices = device_spec(execution)
    network = None
    if model is not None:
        # its confidence maps only where it can become the result: refinement off, stopped or failed
        network = network_object(
            model, scan, execution=execution, align_phases=align_phases, devices=devices, confidence=refinement.epochs == 0
        )
        if alternative is not None and refinement.start is RefinementStart.AUTO and not model.has_generator_of(alternative[1]):
            try:
                network = likelier_network(
                    network, alternative, scan, execution=execution, devices=devices, align_phases=align_phases,
                    confidence=refinement.epochs == 0,
                )  # fmt: skip
            except Exception as error:  # only a second opinion: its failure (out of memory, say) must not cost the run
                first_line = (str(error).strip().splitlines() or [""])[0]
                logger.warning(
                    "Network: %s's object could not be weighed against the model in use's (%s: %s); keeping the model in use's",
                    alternative[0],
                    type(error).__name__,
                    first_line,
                )
                release_cached_memory(devices.torch_device)
        views = f", each seen through {network.symmetry_views} symmetry views" if network.symmetry_views > 1 else ""
        logger.info(
            "Network: %d patterns in %.2f s (%.0f patterns/s%s)", scan.count, network.seconds, network.patterns_per_second, views
        )
        if refinement.epochs == 0:
            logger.info("Refinement is off (refinement epochs 0): the network's object is the result")
            yield FinalResult(network)
            return
        yield NetworkStage(network)
        if should_stop is not None and should_stop():
            logger.info("Stopped after the network stage: the network's object is the result")
            yield FinalResult(with_confidence(network, scan), fallback="stopped after the network stage")
            return
    try:
        refined = yield from _refinement_stage(scan, network, refinement, devices, should_stop)
    except Exception as error:
        if network is None:
            raise
        first_line = (str(error).strip().splitlines() or [""])[0]
        logger.error("Refinement failed (%s: %s); the network's object is the result", type(error).__name__, first_line)
        logger.debug("traceback", exc_info=error)
        yield FinalResult(with_confidence(network, scan), fallback=f"refinement failed: {type(error).__name__}: {first_line}")
        return
    yield FinalResult(refined)


def _refinement_stage(
    scan: Scan,
    network: Reconstruction | None,
    refinement: RefinementConfig,
    devices: DeviceSpec,
    should_stop: Callable[[], bool] | None,
) -> Generator[RefinementEpoch, None, Reconstruction]:
    floor = physics.poisson_nll_floor(scan.patterns, scan.bad_pixels)
    half_epochs = refinement.half_resolution_epochs_for(scan.size_px)
    total_epochs = refinement.total_epochs_for(scan.size_px)
    logger.info(
        "Refining the object against all %d patterns: %s%d epochs, start %s, %s noise, mini-batch %d (growing)%s",
        scan.count,
        f"{half_epochs} half-resolution, then " if half_epochs else "",
        total_epochs - half_epochs,
        refinement.start.value,
        refinement.noise_model.value,
        refinement.batch_size,
        ", probe refined too" if refinement.refine_probe else "",
    )
    log_every = max(1, round(total_epochs * REFINEMENT_LOG_FRACTION))
    start = None if network is None else network.object
    # looked up at call time: tests replace it to make refinement fail
    steps = refinement_steps.refine_steps(scan, start, refinement, device=devices, should_stop=should_stop, nll_floor=floor)
    try:
        while True:
            try:
                report = next(steps)
            except StopIteration as finished:
                result: RefinementResult = finished.value
                break
            due = report.epoch % log_every == 0 or report.stopped
            if due and report.half_resolution:
                logger.info(
                    "Refinement epoch %d/%d (half resolution): Poisson NLL %.4f over the detector's centre, mini-batch "
                    "%d, %.1f s",
                    report.epoch,
                    report.epochs,
                    report.nll,
                    report.batch_size,
                    report.seconds,
                )
            elif due:
                logger.info(
                    "Refinement epoch %d/%d: Poisson NLL %.4f (%.4g above a perfect fit), mini-batch %d, %.1f s",
                    report.epoch,
                    report.epochs,
                    report.nll,
                    report.nll - floor,
                    report.batch_size,
                    report.seconds,
                )
            yield RefinementEpoch(report, floor)
    finally:
        steps.close()
        release_cached_memory(devices.torch_device)
    logger.info(
        "Refinement started from the %s object (Poisson NLL per pattern: %s); %d of %d epochs in %.1f s%s, "
        "NLL %.4f, result from epoch %d",
        result.start.value,
        ", ".join(f"{name} {value:.4f}" for name, value in sorted(result.start_nll.items())),
        len(result.history),
        total_epochs,
        result.seconds,
        ", stopped" if result.stopped else ", converged" if result.converged else "",
        result.history[-1].nll if result.history else float("nan"),
        result.best_epoch,
    )
    return _refined(scan, network, result, devices.torch_device)
