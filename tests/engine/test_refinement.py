"""Refinement (SPEC §11): the forward model it shares with the simulator, its fixed point, quality from
a flat start, probe recovery, the start choice, Stop and progress."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

from ptychodus_pinn.engine import physics
from ptychodus_pinn.engine import refinement as refinement_module
from ptychodus_pinn.engine.config import RefinementConfig, RefinementStart
from ptychodus_pinn.engine.data import Scan
from ptychodus_pinn.engine.metrics import compare
from ptychodus_pinn.engine.refinement import (
    ConvergenceCheck,
    RefinementProblem,
    RefinementReport,
    choose_start,
    every_other_pixel,
    filled_start,
    half_resolution_scan,
    iterate_refinement,
    refine,
    refine_steps,
    upsampled,
)
from ptychodus_pinn.engine.simulate import simulate_scan


@pytest.fixture(scope="module")
def bright_scan() -> Scan:
    """N = 32, 144 jittered positions with fractional coordinates, 10⁶ photons."""
    return simulate_scan("siemens", photons=1e6, n_positions=144, N=32, seed=3)


def _noiseless(scan: Scan) -> Scan:
    """The same scan with its expected counts as data (not integers: a pure model check)."""
    scale = float(np.sum(np.abs(scan.patterns), dtype=np.float64) / scan.count)
    truth = torch.from_numpy(scan.ground_truth)
    expected = physics.expected_counts_on_grid(truth, torch.from_numpy(scan.probe), scan.positions_yx_px, 1.0)
    expected = expected * (scale / float(expected.sum() / scan.count))
    return Scan(
        patterns=expected.numpy(),
        positions_yx_px=scan.positions_yx_px,
        probe=scan.probe,
        object_shape=scan.object_shape,
        ground_truth=scan.ground_truth,
    )


def _two_modes(scan: Scan) -> np.ndarray:
    """Two incoherent probe modes from the scan's probe: the first scaled, the second a shifted copy."""
    first = scan.probe[0]
    return np.stack([0.9 * first, 0.4 * np.roll(first, 2, axis=0)]).astype(np.complex64)


def _with_bad_pixels(scan: Scan, bad: np.ndarray) -> Scan:
    """The scan with ``bad`` pixels masked, holding junk counts (a masked pixel may hold anything)."""
    patterns = scan.patterns.copy()
    patterns[:, bad] = 7.0
    return dataclasses.replace(scan, patterns=patterns, bad_pixels=bad)


def test_fourier_shift_moves_content_by_plus_d_not_mirrored():
    """Asymmetric golden case: a smooth blob at (10, 20) shifted by (+1.5, -3) peaks at (11.5, 17)."""
    yy, xx = np.mgrid[0:32, 0:40].astype(np.float64)
    blob = np.exp(-((yy - 10) ** 2 + (xx - 20) ** 2) / 8.0)
    moved = physics.fourier_shift(torch.from_numpy(blob), torch.tensor([1.5, -3.0], dtype=torch.float64)).numpy()
    expected = np.exp(-((yy - 11.5) ** 2 + (xx - 17) ** 2) / 8.0)
    assert np.abs(moved - expected).max() < 1e-6


def test_shifted_probe_model_matches_integer_extraction_at_integer_positions(bright_scan):
    """At integer positions the exact model and the engine's patch model agree to float precision."""
    positions = np.rint(bright_scan.positions_yx_px[:20])
    truth = torch.from_numpy(bright_scan.ground_truth)
    probe = torch.from_numpy(bright_scan.probe)
    exact = physics.expected_counts_on_grid(truth, probe, positions, 3.0)
    patches = physics.extract_patches(truth, positions, 32)
    reference = physics.predicted_counts(patches, probe, 3.0)
    assert torch.allclose(exact, reference.to(exact.dtype), rtol=1e-4, atol=1e-4)


def test_truth_is_a_fixed_point_with_fractional_positions(bright_scan):
    """Noiseless data from the simulator: refinement's model is the same, so the truth does not move."""
    scan = _noiseless(bright_scan)
    assert np.abs(scan.positions_yx_px - np.rint(scan.positions_yx_px)).max() > 0.2  # truly sub-pixel
    problem = RefinementProblem(scan, scan.ground_truth)
    # the data's intensity scale differs from the simulator's by the object's mean power: fit it once
    start = problem.canvas.clone()
    from ptychodus_pinn.engine.refinement import choose_start

    choose_start(problem, scan.ground_truth, RefinementStart.NETWORK)
    start = problem.canvas.clone()
    start_nll = problem.nll(start)
    for _ in iterate_refinement(problem, RefinementConfig(epochs=3)):
        pass
    lit = problem.illumination > 0.05 * problem.illumination.max()
    change = float((problem.canvas - start)[lit].abs().max() / start[lit].abs().mean())
    assert change < 0.02, f"the truth moved by {change:.3f} of its mean amplitude"
    assert problem.nll(problem.canvas) <= start_nll + 1e-6


def test_scaled_start_scores_its_scaled_canvas_in_one_pass(bright_scan, monkeypatch):
    """The start's NLL comes from its kept, rescaled predictions: equal to a fresh pass over the scaled canvas,
    and computed without one (also when the predictions exceed the budget and a second pass is needed)."""
    from ptychodus_pinn.engine import refinement

    problem = RefinementProblem(bright_scan, None)
    start = 0.5 * bright_scan.ground_truth
    canvas, nll = refinement.scaled_start(problem, start)
    unhalved, _ = refinement.scaled_start(problem, bright_scan.ground_truth)
    # the amplitude scale comes from the counts (the padding outside the object, ones, is scaled too)
    assert torch.allclose(problem.cropped(canvas), problem.cropped(unhalved), rtol=1e-4, atol=1e-5)
    assert nll == pytest.approx(problem.nll(canvas), rel=1e-5)
    passes = []
    monkeypatch.setattr(RefinementProblem, "nll", lambda self, canvas: passes.append(1) or 0.0)
    refinement.scaled_start(problem, start)
    assert passes == []
    monkeypatch.setattr(refinement, "RESIDUAL_BUDGET_BYTES", 1)
    assert refinement.scaled_start(problem, start)[1] == 0.0 and passes == [1]


@pytest.mark.parametrize("masked", [False, True], ids=["every pixel valid", "bad pixels masked"])
def test_flat_start_from_one_far_field_equals_the_full_pass(bright_scan, masked):
    """A flat object's scaled start and NLL, formed from the unshifted probe's far field alone, equal those of the
    pass over every position (fractional ones, two probe modes, masked pixels that hold junk)."""
    from ptychodus_pinn.engine import refinement

    scan = dataclasses.replace(bright_scan, probe=_two_modes(bright_scan))
    if masked:
        bad = np.zeros((32, 32), bool)
        bad[3:5, 7:20] = True
        bad[15:18, 14:19] = True  # a beamstop: where the far field is brightest
        scan = _with_bad_pixels(scan, bad)
    problem = RefinementProblem(scan, None)
    assert np.abs(problem.ramps.numpy()).max() > 0.1  # sub-pixel shifts: what the one far field must stand for
    canvas, nll = refinement.scaled_flat_start(problem)
    full_canvas, full_nll = refinement.scaled_start(problem, np.ones(scan.object_shape, np.complex64))
    assert torch.allclose(canvas, full_canvas, rtol=1e-5)
    assert nll == pytest.approx(full_nll, rel=1e-6)


def _dense_residual(
    problem: RefinementProblem, chunk: torch.Tensor, step_lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """The exit-wave residual step on every pixel, in float64 numpy: per-pattern step lengths a by a fine grid
    search of the Poisson NLL of Î·(1 − a·ξ)² over the valid pixels, χ for the given ``step_lengths`` (so the
    residual is checked apart from the step lengths' tolerance), and the chunk's NLL before the step."""
    exit_waves = (problem.windows(problem.canvas, chunk)[:, None] * problem.probes_for(chunk)).numpy().astype(np.complex128)
    far = np.fft.fft2(exit_waves, norm="ortho")
    predicted = (np.abs(far) ** 2).sum(axis=1)
    measured = problem.patterns[chunk].numpy().astype(np.float64)
    valid = problem.valid.numpy().astype(bool)
    xi = np.where(valid, 1 - measured / (predicted + physics.EPSILON_COUNTS), 0.0)
    nll = float(np.where(valid, predicted - measured * np.log(predicted + physics.EPSILON_COUNTS), 0).sum())
    grid = np.linspace(0, 1, 2001)
    lengths = []
    for counts, model, x in zip(measured, predicted, xi, strict=True):
        along = model[valid] * (1 - grid[:, None] * x[valid]) ** 2
        lengths.append(grid[np.argmin((along - counts[valid] * np.log(along + 1e-30)).sum(axis=1))])
    factor = -step_lengths[:, None, None] * xi
    return np.asarray(lengths), np.fft.ifft2(far * factor[:, None], norm="ortho"), nll


@pytest.mark.parametrize("scan_wide", [True, False], ids=["counted pixels of the scan", "every valid pixel (over budget)"])
def test_residual_step_on_counted_pixels_matches_the_dense_likelihood(bright_scan, monkeypatch, scan_wide):
    """The Poisson step works on the pixels that hold counts only (and masked pixels not at all): its step
    lengths, residuals and NLL equal those of the likelihood over every valid pixel, for a whole-scan slice
    and for a mini-batch of scattered patterns, at a dose where most pixels hold no counts."""
    from ptychodus_pinn.engine import refinement

    if not scan_wide:
        monkeypatch.setattr(refinement, "COUNTED_CACHE_BUDGET_BYTES", 0)
    sparse = simulate_scan("siemens", photons=1e3, n_positions=64, N=32, seed=4)
    bad = np.zeros((32, 32), bool)
    bad[3:5, 7:20] = True
    scan = _with_bad_pixels(sparse, bad)
    problem = RefinementProblem(scan, np.ones(scan.object_shape, np.complex64))
    assert (problem._counted_scan is not None) == scan_wide
    assert float((problem.patterns == 0).float().mean()) > 0.5  # mostly empty pixels: the case this is for
    rng = np.random.default_rng(0)
    problem.canvas = problem.canvas * torch.from_numpy(np.exp(0.3j * rng.random(problem.canvas_shape)).astype(np.complex64))
    for chunk in (slice(0, 32), torch.tensor([40, 3, 17, 63, 8])):
        indices = torch.arange(problem.count)[chunk]
        exit_waves = problem.windows(problem.canvas, chunk)[:, None] * problem.probes_for(chunk)
        counted = problem.counted_pixels(chunk)
        assert counted.counts.shape[0] == len(indices)
        predicted = refinement._mode_sum(physics.abs2(refinement._far_field(exit_waves)))
        got_lengths = refinement._poisson_step_lengths(
            (predicted * problem.valid).sum(dim=(-2, -1), dtype=torch.float64),
            torch.gather(predicted.reshape(len(predicted), -1), 1, counted.index),
            counted,
        )
        lengths, chi, nll = _dense_residual(problem, indices, got_lengths.numpy().astype(np.float64))
        got_chi, got_nll = refinement._exit_wave_residual(problem, exit_waves, chunk, refinement.NoiseModel.POISSON)
        assert got_nll == pytest.approx(nll, rel=1e-6)
        assert np.abs(got_chi.numpy() - chi).max() < 1e-4 * np.abs(chi).max()
        assert np.abs(got_lengths.numpy() - lengths).max() < 2e-3, (got_lengths, lengths)


def test_sparse_residual_equals_the_dense_one_behind_a_beamstop(monkeypatch):
    """The counted-pixel residual (far field scaled by −a in place, counted pixels set apart, masked ones zeroed and
    left out of Σ Î) equals the dense one pixel for pixel where the mask covers the brightest pixels (a beamstop
    holding junk counts), for two probe modes."""
    from ptychodus_pinn.engine import refinement

    sparse = simulate_scan("siemens", photons=1e3, n_positions=64, N=32, seed=4)
    bad = np.zeros((32, 32), bool)
    bad[15:18, 14:19] = True
    scan = _with_bad_pixels(dataclasses.replace(sparse, probe=_two_modes(sparse)), bad)
    rng = np.random.default_rng(0)
    start = np.exp(0.3j * rng.random(scan.object_shape)).astype(np.complex64)
    counted_layout = RefinementProblem(scan, start)
    monkeypatch.setattr(refinement, "COUNTED_CACHE_BUDGET_BYTES", 0)  # every valid pixel: the dense path
    every_pixel = RefinementProblem(scan, start)
    for chunk in (slice(0, 32), torch.tensor([40, 3, 17, 63, 8])):
        results = []
        for problem in (counted_layout, every_pixel):
            exit_waves = problem.windows(problem.canvas, chunk)[:, None] * problem.probes_for(chunk)
            results.append(refinement._exit_wave_residual(problem, exit_waves, chunk, refinement.NoiseModel.POISSON))
        (chi, nll), (dense_chi, dense_nll) = results
        assert nll == pytest.approx(dense_nll, rel=1e-6)
        assert float((chi - dense_chi).abs().max()) < 1e-5 * float(dense_chi.abs().max())


def test_two_probe_modes_keep_the_truth_and_recover_it_from_flat(bright_scan):
    """Incoherent modes go through every mode sum of the update (Σ_p conj(P_p)·χ_p, Σ_p |P_p|², the caches)."""
    scan = _noiseless(dataclasses.replace(bright_scan, probe=_two_modes(bright_scan)))
    problem = RefinementProblem(scan, scan.ground_truth)
    choose_start(problem, scan.ground_truth, RefinementStart.NETWORK)
    start = problem.canvas.clone()
    for _ in iterate_refinement(problem, RefinementConfig(epochs=3)):
        pass
    lit = problem.illumination > 0.05 * problem.illumination.max()
    assert float((problem.canvas - start)[lit].abs().max() / start[lit].abs().mean()) < 0.02
    result = refine(scan, None, RefinementConfig(epochs=25))
    assert compare(result.object, scan.ground_truth, result.illuminated).phase_ssim > 0.85


def test_refinement_from_flat_recovers_the_object(bright_scan):
    result = refine(bright_scan, None, RefinementConfig(epochs=25))
    quality = compare(result.object, bright_scan.ground_truth, result.illuminated)
    assert result.start is RefinementStart.FLAT
    assert quality.phase_ssim > 0.85, quality
    assert quality.phase_ssim > quality.flat_phase_ssim + 0.6
    # likelihood went down epoch over epoch (within noise of the mini-batch estimate)
    nll = [report.nll for report in result.history]
    assert nll[-1] < nll[0]


@pytest.mark.parametrize("kind,path", [("natural", "raster"), ("grains", "spiral")])
def test_refinement_works_on_other_objects_and_scan_paths(kind, path):
    scan = simulate_scan(kind, photons=1e6, n_positions=144, N=32, seed=5, path=path)
    result = refine(scan, None, RefinementConfig(epochs=25))
    quality = compare(result.object, scan.ground_truth, result.illuminated)
    assert quality.phase_ssim > 0.75, (kind, path, quality)


def test_a_worse_than_flat_network_start_does_not_lower_the_result(bright_scan):
    rng = np.random.default_rng(0)
    garbage = (0.3 + rng.random(bright_scan.object_shape)) * np.exp(3j * rng.standard_normal(bright_scan.object_shape))
    config = RefinementConfig(epochs=8, start="auto")
    from_garbage = refine(bright_scan, garbage.astype(np.complex64), config)
    from_flat = refine(bright_scan, None, config)
    assert from_garbage.start is RefinementStart.FLAT
    assert from_garbage.start_nll["network"] > from_garbage.start_nll["flat"]
    good = compare(from_flat.object, bright_scan.ground_truth, from_flat.illuminated).phase_ssim
    after_garbage = compare(from_garbage.object, bright_scan.ground_truth, from_garbage.illuminated).phase_ssim
    assert after_garbage == pytest.approx(good, abs=1e-6)


def test_a_good_network_start_is_chosen_and_helps(bright_scan):
    rng = np.random.default_rng(1)
    # a blurred, noisy truth plays the role of a decent network output
    from scipy.ndimage import gaussian_filter

    truth = bright_scan.ground_truth
    decent = gaussian_filter(truth.real, 1.5) + 1j * gaussian_filter(truth.imag, 1.5)
    decent = (decent + 0.02 * rng.standard_normal(truth.shape)).astype(np.complex64)
    config = RefinementConfig(epochs=4, start="auto")
    from_network = refine(bright_scan, decent, config)
    from_flat = refine(bright_scan, None, config)
    assert from_network.start is RefinementStart.NETWORK
    network_quality = compare(from_network.object, truth, from_network.illuminated).phase_ssim
    flat_quality = compare(from_flat.object, truth, from_flat.illuminated).phase_ssim
    assert network_quality > flat_quality


def _probe_error(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Relative error after removing the global phase and scale (the probe's own ambiguities)."""
    inner = np.vdot(estimate, truth)
    fitted = estimate * (inner / np.vdot(estimate, estimate))
    return float(np.linalg.norm(fitted - truth) / np.linalg.norm(truth))


def test_likelihood_does_not_climb_again_after_convergence():
    """Long whole-scan refinement at low dose: the safeguard (step 6 of refinement.py) keeps the NLL at its
    best. Without it the trimmed-mean step and momentum overshot once converged: here the last epoch ended
    3.8e-3 per pattern above the best one (it rose in 45 of the last 120 epochs)."""
    scan = simulate_scan("siemens", photons=1e4, n_positions=144, N=32, seed=3)
    problem = RefinementProblem(scan, np.ones(scan.object_shape, np.complex64))
    nlls = [report.nll for report in iterate_refinement(problem, RefinementConfig(epochs=150))]
    assert problem.joint_step_length  # the safeguard engaged
    assert nlls[-1] - min(nlls) < 1e-5
    assert sum(later > earlier for earlier, later in itertools.pairwise(nlls[30:])) <= 3


def test_filled_start_fills_unlit_pixels_at_the_objects_own_phase():
    """A network object carries an arbitrary global phase; its unlit fill must carry it too (no edge step)."""
    obj = np.zeros((16, 16), np.complex64)
    obj[4:12, 4:12] = 0.8 * np.exp(1j * (1.3 + 0.2 * np.sin(np.arange(8))))[None, :]
    obj[5, 5] = np.nan
    filled = filled_start(obj)
    assert np.isfinite(filled).all()
    np.testing.assert_allclose(filled[4:12, 6:12], obj[4:12, 6:12])
    unlit = filled[0, 0]
    assert unlit == filled[15, 15] == filled[5, 5]
    assert abs(abs(unlit) - 0.8) < 1e-5 and abs(np.angle(unlit) - 1.3) < 0.1


def test_probe_refinement_recovers_a_perturbed_probe():
    scan = simulate_scan("grains", photons=1e6, n_positions=144, N=32, seed=7)
    true_probe = scan.probe.copy()
    yy, xx = np.mgrid[0:32, 0:32] - 16
    guess = true_probe * np.exp(1.2j * ((yy**2 + xx**2) / 8.0**2))  # wrong defocus
    guess_scan = Scan(
        patterns=scan.patterns,
        positions_yx_px=scan.positions_yx_px,
        probe=guess.astype(np.complex64),
        object_shape=scan.object_shape,
        ground_truth=scan.ground_truth,
    )
    fixed = refine(guess_scan, None, RefinementConfig(epochs=30))
    refined = refine(guess_scan, None, RefinementConfig(epochs=30, refine_probe=True))
    before = _probe_error(guess[0], true_probe[0])
    after = _probe_error(refined.probe[0], true_probe[0])
    assert after < 0.5 * before, (before, after)
    quality_fixed = compare(fixed.object, scan.ground_truth, fixed.illuminated).phase_ssim
    quality_refined = compare(refined.object, scan.ground_truth, refined.illuminated).phase_ssim
    assert quality_refined > quality_fixed + 0.05, (quality_fixed, quality_refined)
    # power kept: the intensity scale comes from the data, the object carries the rest
    assert np.sum(np.abs(refined.probe) ** 2) == pytest.approx(np.sum(np.abs(guess) ** 2), rel=1e-3)


def test_bad_pixels_are_ignored(bright_scan):
    rng = np.random.default_rng(2)
    bad = rng.random((32, 32)) < 0.05
    patterns = bright_scan.patterns.copy()
    patterns[:, bad] = 1e6  # hot pixels: garbage that must not matter
    scan = Scan(
        patterns=patterns,
        positions_yx_px=bright_scan.positions_yx_px,
        probe=bright_scan.probe,
        object_shape=bright_scan.object_shape,
        bad_pixels=bad,
        ground_truth=bright_scan.ground_truth,
    )
    config = RefinementConfig(epochs=15)
    masked = refine(scan, None, config)
    clean = refine(bright_scan, None, config)
    masked_quality = compare(masked.object, scan.ground_truth, masked.illuminated).phase_ssim
    clean_quality = compare(clean.object, scan.ground_truth, clean.illuminated).phase_ssim
    assert masked_quality > clean_quality - 0.1, (masked_quality, clean_quality)


def test_progress_per_epoch_and_stop_keeps_the_state(bright_scan):
    reports = []
    calls = {"count": 0}

    def stop_after_some_batches() -> bool:
        calls["count"] += 1
        return calls["count"] > 12

    result = refine(bright_scan, None, RefinementConfig(epochs=200), on_epoch=reports.append, should_stop=stop_after_some_batches)
    assert result.stopped
    assert [report.epoch for report in reports] == list(range(1, len(reports) + 1))
    assert reports[-1].stopped and len(reports) < 200
    assert np.isfinite(result.object).all()
    quality = compare(result.object, bright_scan.ground_truth, result.illuminated)
    assert quality.phase_ssim > quality.flat_phase_ssim


def test_convergence_check_stops_once_five_epochs_gain_less_than_the_tolerance():
    def first_converged(nll_after_epochs: list[float], tolerance: float = 1e-3, floor: float = -6.0) -> int | None:
        check = ConvergenceCheck(tolerance, floor)
        return next((epochs for epochs, nll in enumerate(nll_after_epochs) if check.converged(nll)), None)

    # what is left above the floor falls 10 % an epoch for 20 epochs, then by 10⁻⁵ of itself an epoch
    left = [0.9**epoch for epoch in range(21)] + [0.9**20 * (1 - 1e-5 * epoch) for epoch in range(1, 40)]
    assert first_converged([-6.0 + value for value in left]) == 25  # the first check after the fall slows
    assert first_converged([-6.0 + value for value in left], tolerance=0.0) is None
    assert first_converged([-6.0 + 0.9**epoch for epoch in range(60)]) is None  # 41 % per 5 epochs: never
    # no check before epoch 10, then one every 5 epochs, even when nothing changes at all
    assert first_converged([-5.0] * 30) == 10
    assert first_converged([-6.0] * 30) == 10  # a perfect fit: nothing left to gain
    assert first_converged([math.nan] * 30) is None
    # relative to what is left: 5·10⁻⁴ in 5 epochs is too little with 1 left, and worth going on for with 0.1 left
    assert first_converged([-5.0 - 1e-4 * epoch for epoch in range(30)]) == 10
    assert first_converged([-5.9 - 1e-4 * epoch for epoch in range(30)]) is None


def test_refinement_stops_where_it_has_converged_with_a_stop_tolerance(bright_scan, monkeypatch):
    config = RefinementConfig(epochs=300, half_resolution_epochs=0, stop_tolerance=1e-3)
    result = refine(bright_scan, None, config)
    # a caller that has the NLL floor already (inference logs with it) passes it: the same stop, no second pass
    floor = physics.poisson_nll_floor(bright_scan.patterns, bright_scan.bad_pixels)
    monkeypatch.setattr(physics, "poisson_nll_floor", lambda *args, **kwargs: pytest.fail("floor computed again"))
    steps = refine_steps(bright_scan, None, config, nll_floor=floor)
    assert sum(1 for _ in steps) == len(result.history)
    assert result.converged and not result.stopped
    full_epochs = len(result.history)
    assert 11 <= full_epochs < 300 and (full_epochs - 1) % 5 == 0  # decided after a check epoch (10, 15, ...)
    longer = refine(bright_scan, None, dataclasses.replace(config, epochs=full_epochs + 100, stop_tolerance=0.0))
    assert not longer.converged and len(longer.history) == full_epochs + 100
    # what the 100 epochs more add is small: the likelihood had stopped paying
    scores = [compare(run.object, bright_scan.ground_truth, run.illuminated).phase_ssim for run in (result, longer)]
    assert scores[0] > 0.85 and scores[1] - scores[0] < 0.01, scores


def _band_limited_scan(positions_yx_px: np.ndarray) -> tuple[Scan, np.ndarray]:
    """N = 64 counts (noise-free) of a smooth object under a Gaussian, defocused probe: every exit wave's
    spectrum lies inside the detector's central half; and the object."""
    size, (height, width) = 64, (96, 100)
    yy, xx = np.mgrid[0:size, 0:size] - size // 2
    probe = np.exp(-(yy**2 + xx**2) / (2 * 5.0**2) + 0.01j * (yy**2 + xx**2)).astype(np.complex64)
    rows, columns = np.mgrid[0:height, 0:width]
    phase = sum(
        amplitude * np.cos(2 * np.pi * (fy * rows + fx * columns) / size + offset)
        for amplitude, fy, fx, offset in [(0.3, 1, 2, 0.3), (0.2, 3, -2, 1.1), (0.25, 2, 3, 2.0), (0.2, -4, 1, 4.0)]
    )
    obj = ((1 + 0.1 * np.cos(2 * np.pi * 3 * columns / size)) * np.exp(1j * phase)).astype(np.complex64)
    counts = physics.expected_counts_on_grid(torch.from_numpy(obj), torch.from_numpy(probe[None]), positions_yx_px, 1.0)
    return Scan(patterns=counts.numpy(), positions_yx_px=positions_yx_px, probe=probe, object_shape=(height, width)), obj


def test_half_resolution_scan_predicts_the_centre_of_the_full_patterns():
    """Golden case: for exit waves band-limited to the detector's central half, the half-resolution scan's model
    (the object's even pixels, the cropped band-limited probe, halved sub-pixel positions) gives the full model's
    central counts, at the same scale (the cropped probe keeps the probe's power: unitary DFTs)."""
    rng = np.random.default_rng(0)
    positions = rng.uniform((32, 32), (64, 68), size=(12, 2))
    scan, obj = _band_limited_scan(positions)
    half = half_resolution_scan(scan)
    assert half.size_px == 32 and half.object_shape == (49, 51)
    np.testing.assert_array_equal(half.patterns, scan.patterns[:, 16:48, 16:48])
    np.testing.assert_allclose(half.positions_yx_px, positions / 2)
    half_object = every_other_pixel(torch.from_numpy(obj), half.object_shape)
    assert complex(half_object[3, 5]) == complex(obj[6, 10])

    def misfit(half_positions: np.ndarray) -> float:
        predicted = physics.expected_counts_on_grid(half_object, torch.from_numpy(half.probe), half_positions, 1.0)
        return float(np.abs(predicted.numpy() - half.patterns).max() / half.patterns.max())

    assert misfit(half.positions_yx_px) < 1e-5
    assert misfit(half.positions_yx_px + 0.25) > 10 * misfit(half.positions_yx_px)  # the test can see a wrong frame


def test_upsampled_puts_half_resolution_pixel_j_on_pixel_2j():
    """Bilinear, exact on a linear ramp: half pixel j lands on full pixel 2j, odd pixels halfway between."""
    rows, columns = np.mgrid[0:49, 0:51]
    half = torch.from_numpy((rows + 2j * columns).astype(np.complex64))
    full = upsampled(half, (96, 100)).numpy()
    rows, columns = np.mgrid[0:96, 0:100]
    np.testing.assert_allclose(full, rows / 2 + 1j * columns, atol=1e-4)
    np.testing.assert_array_equal(every_other_pixel(torch.from_numpy(full), (49, 51)).numpy()[:48, :50], half[:48, :50])


def test_half_resolution_epochs_settle_the_object_faster():
    """N = 64 lines from flat: 20 half-resolution epochs (a quarter of the cost each) and 5 full ones end above 15 full
    ones (measured 0.894 against 0.867; 10 full: 0.814). Reports are numbered on through both stages."""
    scan = simulate_scan("lines", photons=1e5, n_positions=144, N=64, seed=3)

    def quality(config: RefinementConfig) -> tuple[float, list[RefinementReport]]:
        result = refine(scan, None, config)
        return compare(result.object, scan.ground_truth, result.illuminated).phase_ssim, result.history

    staged, history = quality(RefinementConfig(epochs=5, half_resolution_epochs=20))
    full_only, _ = quality(RefinementConfig(epochs=15, half_resolution_epochs=0))
    assert staged > full_only + 0.01, (staged, full_only)
    assert [report.epoch for report in history] == list(range(1, 26))
    assert {report.epochs for report in history} == {25}
    assert [report.half_resolution for report in history] == [True] * 20 + [False] * 5
    # a snapshot while the half-resolution stage runs is on the full grid; after it, none keeps that stage alive
    shapes = [
        report.snapshot().shape for report in refine_steps(scan, None, RefinementConfig(epochs=1, half_resolution_epochs=2))
    ]
    assert shapes == [scan.object_shape] * 3
    assert all(report.snapshot is None for report in history[:20])


def test_half_resolution_epochs_are_skipped_where_they_cannot_run():
    config = RefinementConfig(epochs=30, half_resolution_epochs=40)
    assert [config.half_resolution_epochs_for(size) for size in (30, 32, 64, 128)] == [0, 40, 40, 40]
    assert config.total_epochs_for(128) == 70 and config.total_epochs_for(32) == 70
    assert RefinementConfig(epochs=30, half_resolution_epochs=0).total_epochs_for(64) == 30
    assert RefinementConfig(epochs=0).total_epochs_for(64) == 0  # refinement off: network only


def test_half_resolution_result_is_kept_only_if_the_full_likelihood_prefers_it(monkeypatch):
    """A half-resolution stage that makes the full scan's likelihood worse leaves the start as it was."""
    scan = simulate_scan("siemens", photons=1e5, n_positions=64, N=64, seed=4)
    problem = RefinementProblem(scan, np.ones(scan.object_shape, np.complex64))
    _, scores = choose_start(problem, None, RefinementStart.FLAT)
    start = problem.canvas.clone()
    rng = np.random.default_rng(0)
    noise = torch.from_numpy((3 * rng.standard_normal(scan.object_shape)).astype(np.complex64))
    monkeypatch.setattr(refinement_module, "upsampled", lambda half, shape: noise)
    stage = refinement_module._half_resolution_stage(problem, scan, RefinementConfig(), 2, scores["flat"], [], None)
    with pytest.raises(StopIteration) as finished:
        while True:
            next(stage)
    assert finished.value.value == scores["flat"]
    assert torch.equal(problem.canvas, start)


def test_stop_during_the_half_resolution_epochs_returns_a_usable_object():
    scan = simulate_scan("lines", photons=1e5, n_positions=144, N=64, seed=3)
    calls = {"count": 0}

    def stop_soon() -> bool:
        calls["count"] += 1
        return calls["count"] > 30

    result = refine(scan, None, RefinementConfig(epochs=10, half_resolution_epochs=20), should_stop=stop_soon)
    assert result.stopped and result.history[-1].half_resolution
    assert all(report.half_resolution for report in result.history)
    assert np.isfinite(result.object).all() and result.object.shape == scan.object_shape
    quality = compare(result.object, scan.ground_truth, result.illuminated)
    assert quality.phase_ssim > quality.flat_phase_ssim


def test_config_is_validated_with_the_field_named():
    with pytest.raises(ValueError, match=r"RefinementConfig\.epochs=-1"):
        RefinementConfig(epochs=-1)
    with pytest.raises(ValueError, match=r"RefinementConfig\.start='best'.*auto, network, flat"):
        RefinementConfig(start="best")
    with pytest.raises(ValueError, match=r"momentum_gain"):
        RefinementConfig(momentum_gain=math.nan)


@pytest.mark.gpu
def test_refinement_on_gpu_matches_cpu(bright_scan):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    config = RefinementConfig(epochs=5)
    on_cpu = refine(bright_scan, None, config, device="cpu")
    on_gpu = refine(bright_scan, None, config, device="cuda")
    cpu_quality = compare(on_cpu.object, bright_scan.ground_truth, on_cpu.illuminated).phase_ssim
    gpu_quality = compare(on_gpu.object, bright_scan.ground_truth, on_gpu.illuminated).phase_ssim
    assert gpu_quality == pytest.approx(cpu_quality, abs=0.02)


@pytest.mark.parametrize("matmul_precision", ["highest", "medium"])
def test_squared_norms_keep_float64_accuracy_at_any_matmul_precision(matmul_precision):
    """Σ|z|² feeds the Newton step lengths and the NLL, where Σ Î − Σ I cancels: it must stay accurate even where
    a user has allowed reduced-precision (TF32 / bf16) matrix products."""
    from ptychodus_pinn.engine import refinement

    values = torch.randn(16, 1, 128, 128, dtype=torch.complex64, generator=torch.Generator().manual_seed(3)) * 3 + 1
    exact = torch.view_as_real(values).double().square().sum(dim=(1, 2, 3, 4))
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(matmul_precision)
    try:
        got = refinement._squared_norms(values)
    finally:
        torch.set_float32_matmul_precision(before)
    assert got.dtype == torch.float64
    assert float(((got - exact) / exact).abs().max()) < 1e-7
