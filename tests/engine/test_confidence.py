"""The confidence map against numpy and against the brute-force Fisher information of the exact forward model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptychodus_pinn.engine import confidence, physics
from ptychodus_pinn.engine.simulate import make_object, soft_disk_probe

N = 16
SCALE = 1e4
# a handful of positions with sub-pixel remainders, one of them hanging over the grid's edge
POSITIONS = np.array([[8.0, 8.0], [8.4, 13.3], [13.2, 8.7], [13.6, 13.1], [18.3, 18.4], [11.0, 16.5], [5.2, 21.6]])
SHAPE = (28, 28)


def numpy_illumination(probe: np.ndarray, positions: np.ndarray, shape: tuple[int, int], weights: np.ndarray) -> np.ndarray:
    """Σ_j Σ_p w_p |P_p(r − r_j)|² written with numpy alone: integer window + Fourier-shifted probe."""
    size = probe.shape[-1]
    ky = np.fft.fftfreq(size)[:, None]
    kx = np.fft.fftfreq(size)[None, :]
    illumination = np.zeros(shape)
    for y, x in positions:
        iy, ix = int(np.rint(y)), int(np.rint(x))
        ramp = np.exp(-2j * np.pi * (ky * (y - iy) + kx * (x - ix)))
        moved = np.fft.ifft2(np.fft.fft2(probe) * ramp)
        intensity = np.einsum("p,pij->ij", weights, np.abs(moved) ** 2)
        for i in range(size):
            for j in range(size):
                row, col = iy - size // 2 + i, ix - size // 2 + j
                if 0 <= row < shape[0] and 0 <= col < shape[1]:
                    illumination[row, col] += intensity[i, j]
    return illumination


def brute_force_fisher(obj: np.ndarray, probe: np.ndarray, positions: np.ndarray, valid: np.ndarray | None = None):
    """Diagonals of Jᵀ diag(1/λ) J for amplitude and phase of every object pixel (autograd Jacobians)."""
    pad = N // 2 + 2
    amplitude = torch.from_numpy(np.pad(np.abs(obj), pad, constant_values=1.0))
    phase = torch.from_numpy(np.pad(np.angle(obj), pad))
    probe_t = torch.from_numpy(probe.astype(np.complex128))
    keep = torch.ones(N * N, dtype=torch.bool) if valid is None else torch.from_numpy(valid.reshape(-1))

    def counts(a: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        expected = physics.expected_counts_on_grid(a * torch.exp(1j * p), probe_t, positions + pad, SCALE)
        return expected.reshape(len(positions), -1)[:, keep].reshape(-1)

    expected = counts(amplitude, phase).detach()
    jac_a = torch.autograd.functional.jacobian(lambda a: counts(a, phase), amplitude, vectorize=True)
    jac_p = torch.autograd.functional.jacobian(lambda p: counts(amplitude, p), phase, vectorize=True)
    crop = (slice(pad, pad + obj.shape[0]), slice(pad, pad + obj.shape[1]))
    fisher_a = (jac_a.reshape(expected.numel(), -1) ** 2 / expected[:, None]).sum(0).reshape(amplitude.shape)
    fisher_p = (jac_p.reshape(expected.numel(), -1) ** 2 / expected[:, None]).sum(0).reshape(phase.shape)
    return fisher_a.numpy()[crop], fisher_p.numpy()[crop]


@pytest.fixture(scope="module")
def single_mode_case():
    torch.set_num_threads(1)
    obj = make_object("siemens", SHAPE, seed=3).astype(np.complex128)
    probe = soft_disk_probe(N, 4.0)
    fisher_a, fisher_p = brute_force_fisher(obj, probe, POSITIONS)
    return obj, probe, fisher_a, fisher_p


def test_illumination_matches_numpy_with_fractional_positions_and_edge_windows():
    probe = np.concatenate([soft_disk_probe(N, 4.0), 0.4 * soft_disk_probe(N, 3.0, curvature_rad=-1.0)])
    weights = confidence.mode_weights(probe)
    assert weights.sum() == pytest.approx(1.0)
    ours = confidence.illumination_map(probe, POSITIONS, SHAPE, weights=weights)
    theirs = numpy_illumination(probe, POSITIONS, SHAPE, weights)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6 * theirs.max())


def test_closed_form_matches_brute_force_fisher_information(single_mode_case):
    obj, probe, fisher_a, fisher_p = single_mode_case
    dose = confidence.effective_dose(probe, POSITIONS, SHAPE, SCALE)
    lit = dose > 1e-3 * dose.max()
    amplitude = np.abs(obj)
    # exact: the trace F_AA + F_φφ/A² is 4·s·Σ_j|P_j|² (unitary F, one mode)
    np.testing.assert_allclose((fisher_a + fisher_p / amplitude**2)[lit], 4 * dose[lit], rtol=1e-5)  # float32 probe shifts
    # approximate: half of it is about the phase (cos²θ averaged over the detector ≈ ½)
    ratio = fisher_p[lit] / (2 * amplitude[lit] ** 2 * dose[lit])
    assert abs(np.median(ratio) - 1) < 0.02
    assert ratio.min() > 0.8 and ratio.max() < 1.2, (ratio.min(), ratio.max())
    # so the map is the phase bound 1/sqrt(F_φφ) within ±10 %
    std = confidence.phase_std(obj, dose)
    np.testing.assert_allclose(std[lit], 1 / np.sqrt(fisher_p[lit]), rtol=0.1)


def test_bad_pixels_scale_the_information_by_the_valid_fraction(single_mode_case):
    obj, probe, _, _ = single_mode_case
    rng = np.random.default_rng(0)
    valid = rng.random((N, N)) > 0.3
    fisher_a, fisher_p = brute_force_fisher(obj, probe, POSITIONS[:3], valid)
    fraction = confidence.valid_fraction(~valid)
    dose = confidence.effective_dose(probe, POSITIONS[:3], SHAPE, SCALE, valid_detector_fraction=fraction)
    lit = dose > 1e-3 * dose.max()
    np.testing.assert_allclose((fisher_a + fisher_p / np.abs(obj) ** 2)[lit], 4 * dose[lit], rtol=1e-5)  # float32 probe shifts


def test_incoherent_modes_use_power_weighted_illumination(single_mode_case):
    obj = single_mode_case[0]
    main = soft_disk_probe(N, 4.0)
    second = 0.5 * np.roll(main, 2, axis=-1) * np.exp(1j * np.linspace(0, 3, N))
    probe = np.concatenate([main, second])
    fisher_a, fisher_p = brute_force_fisher(obj, probe, POSITIONS)
    dose = confidence.effective_dose(probe, POSITIONS, SHAPE, SCALE)
    plain = SCALE * confidence.illumination_map(probe, POSITIONS, SHAPE)
    lit = dose > 1e-2 * dose.max()
    amplitude = np.abs(obj)
    # Cauchy–Schwarz: with modes the plain trace 4·s·Σ_p|P_p|² is an upper bound
    assert np.all((fisher_a + fisher_p / amplitude**2)[lit] <= 4 * plain[lit] * (1 + 1e-9))
    ratio = fisher_p[lit] / (2 * amplitude[lit] ** 2 * dose[lit])
    # measured: median 1.06, range 0.81–1.34 (the modes share each detector pixel unevenly)
    assert abs(np.median(ratio) - 1) < 0.1 and ratio.min() > 0.75 and ratio.max() < 1.4, (ratio.min(), ratio.max())


def test_unilluminated_pixels_have_infinite_std_and_zero_confidence():
    probe = soft_disk_probe(N, 3.0)
    shape = (60, 60)
    positions = np.array([[10.0, 10.0], [11.5, 12.25]])
    obj = np.ones(shape, np.complex64)
    phase, amplitude = confidence.confidence_maps(obj, probe, positions, SCALE)
    assert phase.dtype == np.float32 and phase.shape == shape
    assert np.isinf(phase[50:, 50:]).all() and np.isinf(amplitude[50:, 50:]).all()
    assert np.isfinite(phase[10, 10]) and phase[10, 10] > 0
    level = confidence.confidence(phase, tolerance_rad=0.1)
    assert (level[50:, 50:] == 0).all() and 0 < level[10, 10] <= 1
    # an opaque pixel tells nothing about its phase
    obj[10, 10] = 0
    assert np.isinf(confidence.confidence_maps(obj, probe, positions, SCALE)[0][10, 10])


def test_std_scales_as_one_over_sqrt_dose():
    probe = soft_disk_probe(N, 4.0)
    obj = make_object("lines", SHAPE, seed=1)
    low = confidence.confidence_maps(obj, probe, POSITIONS, 1e3)[0]
    high = confidence.confidence_maps(obj, probe, POSITIONS, 1e5)[0]
    lit = np.isfinite(low)
    np.testing.assert_allclose(low[lit] / high[lit], 10.0, rtol=1e-5)
    # twice the positions in the same place: half the variance
    doubled = confidence.confidence_maps(obj, probe, np.concatenate([POSITIONS, POSITIONS]), 1e3)[0]
    np.testing.assert_allclose(low[lit] / doubled[lit], np.sqrt(2), rtol=1e-5)


def test_the_scale_is_the_refinements_and_does_not_depend_on_bad_pixel_values():
    probe = soft_disk_probe(N, 4.0)
    patterns = np.full((3, N, N), 2.0, np.float32)
    bad = np.zeros((N, N), bool)
    bad[0, :4] = True
    patterns[:, bad] = 1e9  # a hot masked pixel must not set the scale
    scale = confidence.scan_intensity_scale(patterns, probe, bad)
    assert scale == pytest.approx(2.0 * (N * N - 4) / np.sum(np.abs(probe) ** 2), rel=1e-6)


def test_invalid_arguments_are_refused():
    probe = soft_disk_probe(N, 4.0)
    with pytest.raises(ValueError, match="intensity_scale"):
        confidence.effective_dose(probe, POSITIONS, SHAPE, 0.0)
    with pytest.raises(ValueError, match="probe"):
        confidence.mode_weights(np.zeros((1, N, N), np.complex64))
    with pytest.raises(ValueError, match="tolerance"):
        confidence.confidence(np.ones(3), tolerance_rad=-1)


def test_every_reconstruction_carries_the_map_and_object_npz_saves_it(small_scan, tmp_path):
    from ptychodus_pinn.app.outputs import save_reconstruction
    from ptychodus_pinn.engine.config import ModelConfig, RefinementConfig
    from ptychodus_pinn.engine.inference import reconstruct
    from ptychodus_pinn.engine.model import PinnModel, TrainingRecord

    scan = small_scan.subset(np.arange(60))
    scale = confidence.scan_intensity_scale(scan.patterns, scan.probe, scan.bad_pixels)
    # refinement: the preconditioner's illumination is reused, and gives the map computed from scratch
    refined = reconstruct(None, scan, refinement=RefinementConfig(epochs=2, refine_probe=True))
    assert refined.phase_std_rad is not None and refined.amplitude_std is not None
    direct = confidence.confidence_maps(refined.object, refined.probe, scan.positions_yx_px, scale, scan.bad_pixels)
    lit = refined.illuminated
    np.testing.assert_allclose(refined.phase_std_rad[lit], direct[0][lit], rtol=1e-4)
    np.testing.assert_allclose(refined.amplitude_std[lit], direct[1][lit], rtol=1e-4)
    # the network alone: the scan's probe and the stitched object
    record = TrainingRecord(intensity_scale=scale, input_normalization=1.0, mean_total_counts=scan.mean_total_counts)
    model = PinnModel(ModelConfig(N=32, n_filters_scale=1), scan.probe, record)
    network = reconstruct(model, scan, refinement=RefinementConfig(epochs=0))
    expected = confidence.confidence_maps(network.object, scan.probe, scan.positions_yx_px, scale, scan.bad_pixels)[0]
    np.testing.assert_allclose(network.phase_std_rad, expected, rtol=1e-6)

    save_reconstruction(refined, tmp_path / "object.npz")
    with np.load(tmp_path / "object.npz") as archive:
        assert archive["phase_std_rad"].dtype == np.float32
        np.testing.assert_array_equal(archive["phase_std_rad"], refined.phase_std_rad)
        assert np.isfinite(archive["amplitude_std"][archive["illuminated"]]).all()
