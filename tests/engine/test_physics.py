"""Golden cases for the physics conventions of SPEC §4, checked against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptychodus_pinn.engine import physics
from ptychodus_pinn.engine.simulate import make_object, soft_disk_probe


def test_far_field_matches_numpy_centred_unitary_fft():
    rng = np.random.default_rng(0)
    wave = rng.standard_normal((8, 8)) + 1j * rng.standard_normal((8, 8))
    expected = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(wave), norm="ortho"))
    np.testing.assert_allclose(physics.far_field(torch.from_numpy(wave)).numpy(), expected, atol=1e-12)


def test_zero_frequency_sits_at_centre_pixel():
    flat = torch.ones(16, 16, dtype=torch.complex128)
    spectrum = physics.far_field(flat).abs()
    assert np.unravel_index(int(spectrum.argmax()), (16, 16)) == (8, 8)


def test_parseval_total_counts_equal_scale_times_exit_wave_power():
    rng = np.random.default_rng(1)
    obj = torch.from_numpy((rng.uniform(0.5, 1, (3, 32, 32)) * np.exp(1j * rng.uniform(-1, 1, (3, 32, 32)))).astype(np.complex64))
    probe = torch.from_numpy(soft_disk_probe(32, 8))
    counts = physics.predicted_counts(obj, probe, 7.5)
    expected = 7.5 * (obj[:, None] * probe).abs().square().sum(dim=(-3, -2, -1))
    np.testing.assert_allclose(counts.sum(dim=(-2, -1)).numpy(), expected.numpy(), rtol=1e-5)


def test_incoherent_probe_modes_add_intensities():
    rng = np.random.default_rng(2)
    obj = torch.from_numpy(np.exp(1j * rng.uniform(-1, 1, (32, 32))).astype(np.complex64))
    modes = torch.from_numpy((rng.standard_normal((2, 32, 32)) + 1j * rng.standard_normal((2, 32, 32))).astype(np.complex64))
    both = physics.predicted_counts(obj, modes, 1.0)
    separate = physics.predicted_counts(obj, modes[:1], 1.0) + physics.predicted_counts(obj, modes[1:], 1.0)
    np.testing.assert_allclose(both.numpy(), separate.numpy(), rtol=1e-5, atol=1e-6)


def test_asymmetric_subpixel_shift_lands_where_it_should_not_mirrored():
    image = torch.zeros(32, 32)
    image[10, 20] = 1.0
    moved = physics.shift_images(image, torch.tensor([1.5, -3.0]))
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    centroid = ((moved * rows).sum() / moved.sum(), (moved * cols).sum() / moved.sum())
    assert float(centroid[0]) == pytest.approx(11.5, abs=1e-5)
    assert float(centroid[1]) == pytest.approx(17.0, abs=1e-5)
    assert float(moved.sum()) == pytest.approx(1.0, abs=1e-6)


def test_integer_shift_is_exact_for_complex_images():
    rng = np.random.default_rng(3)
    image = torch.from_numpy((rng.standard_normal((16, 16)) + 1j * rng.standard_normal((16, 16))).astype(np.complex64))
    moved = physics.shift_images(image, torch.tensor([2.0, -1.0]))
    np.testing.assert_allclose(moved[2:, :-1].numpy(), image[:-2, 1:].numpy(), atol=1e-6)


def test_patch_convention_probe_centre_pixel_sits_on_position():
    obj = torch.zeros(64, 64, dtype=torch.complex64)
    obj[30, 41] = 1.0
    patch = physics.extract_patches(obj, np.array([[30.0, 41.0]]), 16)[0]
    assert np.unravel_index(int(patch.abs().argmax()), (16, 16)) == (8, 8)
    # integer centre (y, x) covers rows y - N//2 .. y + N//2 - 1
    patch = physics.extract_patches(obj, np.array([[38.0, 48.0]]), 16)[0]
    assert np.unravel_index(int(patch.abs().argmax()), (16, 16)) == (0, 1)


def test_stitching_patches_of_a_known_object_gives_it_back():
    obj = torch.from_numpy(make_object("siemens", (96, 96), seed=4))
    positions = np.stack(np.meshgrid(np.arange(20, 77, 6), np.arange(20, 77, 6), indexing="ij"), -1).reshape(-1, 2).astype(float)
    patches = physics.extract_patches(obj, positions, 32)
    weight = physics.probe_weight(torch.from_numpy(soft_disk_probe(32, 8)))
    stitched, illuminated = physics.stitch(patches, positions, weight, (96, 96))
    assert illuminated.sum() > 3000
    assert float((stitched - obj)[illuminated].abs().max()) < 1e-4
    assert not illuminated[0, 0] and stitched[0, 0] == 0


def test_stitching_sub_pixel_patches_of_a_smooth_object_keeps_their_detail(monkeypatch):
    """Patches of a band-limited object seen at sub-pixel positions: the probe-weighted Fourier shift gives the
    object back where probes overlap, where the bilinear shift (kept for weights that stop abruptly) blurs it."""
    rng = np.random.default_rng(8)
    spectrum = np.fft.fft2(rng.standard_normal((96, 96)) + 1j * rng.standard_normal((96, 96)))
    frequencies = np.hypot(*np.meshgrid(np.fft.fftfreq(96), np.fft.fftfreq(96), indexing="ij"))
    obj = torch.from_numpy(np.exp(0.5j * np.fft.ifft2(spectrum * (frequencies < 0.15)).real).astype(np.complex64))
    grid = np.arange(20, 77, 6, dtype=float)
    positions = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2) + rng.uniform(-0.5, 0.5, (100, 2))
    integer, fraction = physics.split_positions(positions)
    # patch i shows the object at its window + fraction: the periodic, band-limited object moved by -fraction
    moved = physics.fourier_shift(obj.expand(len(positions), 96, 96), torch.from_numpy(-fraction))
    patches = torch.stack([image[y - 16 : y + 16, x - 16 : x + 16] for image, (y, x) in zip(moved, integer, strict=True)])
    weight = physics.probe_weight(torch.from_numpy(soft_disk_probe(32, 8)))
    assert physics.vanishes_smoothly(weight)
    stitched, _ = physics.stitch(patches, positions, weight, (96, 96))
    monkeypatch.setattr(physics, "vanishes_smoothly", lambda weight: False)
    bilinear, _ = physics.stitch(patches, positions, weight, (96, 96))
    centre = (slice(24, 72), slice(24, 72))  # where several probes overlap (the rim is lit by their tails only)
    error, bilinear_error = (float((image - obj)[centre].abs().mean()) for image in (stitched, bilinear))
    assert error < 2e-4 and 20 * error < bilinear_error  # measured: 5.2e-5 against 4.4e-3


def test_a_weight_that_stops_abruptly_is_shifted_bilinearly():
    weight = physics.probe_weight(torch.from_numpy(soft_disk_probe(32, 8)))
    assert physics.vanishes_smoothly(weight)
    assert not physics.vanishes_smoothly(physics.probe_weight(torch.from_numpy(soft_disk_probe(32, 8)), 10))  # a deep trim
    assert not physics.vanishes_smoothly(torch.ones(32, 32))  # a flat weight ends at the patch border


def _spiral_like_stitch_case(phase_rad: float) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, torch.Tensor]:
    """Patches of a known object carrying one common phase, from a scan that lights only the grid's middle."""
    obj = torch.from_numpy(make_object("grains", (96, 96), seed=6))
    positions = np.stack(np.meshgrid(np.arange(34, 63, 4), np.arange(34, 63, 4), indexing="ij"), -1).reshape(-1, 2).astype(float)
    patches = physics.extract_patches(obj, positions, 32) * np.exp(1j * phase_rad)
    weight = physics.probe_weight(torch.from_numpy(soft_disk_probe(32, 8)))
    return obj, positions, patches.to(torch.complex64), weight


def test_stitching_onto_a_fill_turns_the_patches_to_the_fill_phase():
    """The patches' common phase is arbitrary: a phase-0 fill beside them must not leave a step at the lit edge."""
    obj, positions, patches, weight = _spiral_like_stitch_case(phase_rad=1.2)
    fill = torch.ones(96, 96, dtype=torch.complex64)
    stitched, illuminated = physics.stitch(patches, positions, weight, (96, 96), fill=fill)
    assert 0 < int(illuminated.sum()) < 96 * 96 and stitched[0, 0] == 1
    # still the object up to one global phase, and that phase now matches the fill's (0) on average
    turn = (stitched[illuminated] * obj[illuminated].conj()).sum()
    assert float((stitched - obj * turn / turn.abs())[illuminated].abs().max()) < 1e-3
    assert abs(float(torch.angle(stitched[illuminated].sum()))) < 0.1
    without_fill, _ = physics.stitch(patches, positions, weight, (96, 96))
    assert abs(float(torch.angle(without_fill[illuminated].sum()))) > 1.0


def test_stitching_fade_pulls_only_weakly_lit_pixels_to_the_mean():
    _, positions, patches, weight = _spiral_like_stitch_case(phase_rad=0.0)
    rng = np.random.default_rng(7)
    noisy = patches + 0.5 * torch.from_numpy(rng.standard_normal(patches.shape).astype(np.float32))
    plain, illuminated = physics.stitch(noisy, positions, weight, (96, 96))
    faded, _ = physics.stitch(noisy, positions, weight, (96, 96), fade_fraction=0.02)
    summed_weight = np.zeros((96, 96))
    for row, col in positions.astype(int):  # integer centre (y, x) covers rows y - N//2 .. y + N//2 - 1
        summed_weight[row - 16 : row + 16, col - 16 : col + 16] += weight.numpy()
    lit = illuminated.numpy()
    well_lit = torch.from_numpy(lit & (summed_weight > 0.5 * summed_weight.max()))
    weakly_lit = torch.from_numpy(lit & (summed_weight < 0.005 * summed_weight.max()))
    assert int(well_lit.sum()) > 100 and int(weakly_lit.sum()) > 20
    change = (faded - plain).abs()
    assert float(change[well_lit].max()) < 0.05
    mean = (plain[illuminated]).mean()
    assert float((faded - mean)[weakly_lit].abs().mean()) < 0.5 * float((plain - mean)[weakly_lit].abs().mean())


def test_stitching_survives_random_per_patch_phase_offsets():
    obj = torch.from_numpy(make_object("lines", (96, 96), seed=5))
    rng = np.random.default_rng(5)
    positions = np.stack(np.meshgrid(np.arange(20, 77, 6), np.arange(20, 77, 6), indexing="ij"), -1).reshape(-1, 2) + rng.uniform(
        -1, 1, (100, 2)
    )
    patches = physics.extract_patches(obj, positions, 32)
    offsets = torch.from_numpy(np.exp(1j * rng.uniform(-np.pi, np.pi, len(positions))).astype(np.complex64))
    weight = physics.probe_weight(torch.from_numpy(soft_disk_probe(32, 8)))
    naive, illuminated = physics.stitch(patches * offsets[:, None, None], positions, weight, (96, 96))
    aligned_patches = physics.align_patch_phases(patches * offsets[:, None, None], positions, weight)
    aligned, _ = physics.stitch(aligned_patches, positions, weight, (96, 96))
    reference, _ = physics.stitch(patches, positions, weight, (96, 96))
    global_phase = torch.angle((aligned[illuminated] * reference[illuminated].conj()).sum())
    aligned = aligned * torch.exp(-1j * global_phase)
    error_aligned = float((aligned - reference)[illuminated].abs().mean())
    error_naive = float((naive - reference)[illuminated].abs().mean())
    assert error_aligned < 1e-3
    assert error_naive > 0.3


def test_grouping_takes_nearest_neighbours():
    positions = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0), indexing="ij"), -1).reshape(-1, 2) * 5
    groups = physics.group_neighbors(positions, gridsize=2, neighbor_count=3, seed=0)
    assert groups.shape == (100, 4)
    assert (groups[:, 0] == np.arange(100)).all()
    distances = np.linalg.norm(positions[groups[:, 1:]] - positions[groups[:, :1]], axis=-1)
    assert distances.max() <= 5 * np.sqrt(2) + 1e-9
    assert all(len(set(group)) == 4 for group in groups)
    assert physics.group_neighbors(positions, 1, 6).shape == (100, 1)
    assert physics.group_neighbors(positions, 2, 6, n_groups=10).shape == (10, 4)


def test_grouping_refuses_too_few_patterns():
    with pytest.raises(ValueError, match="gridsize=2 needs at least 4 patterns"):
        physics.group_neighbors(np.zeros((3, 2)), 2, 6)


def test_merge_on_shared_canvas_keeps_consistent_patches_and_ties_phases():
    obj = torch.from_numpy(make_object("siemens", (64, 64), seed=6))
    positions = np.array([[30.0, 30.0], [30.0, 36.0], [36.0, 30.0], [36.0, 36.0]])
    patches = physics.extract_patches(obj, positions, 32)[None]
    offsets = torch.from_numpy(positions - positions.mean(axis=0))[None].float()
    weight = physics.probe_weight(torch.from_numpy(soft_disk_probe(32, 8)))
    merged = physics.merge_group_on_canvas(patches, offsets, weight)
    core = weight > 0.1
    assert float((merged - patches)[..., core].abs().max()) < 1e-4
    # a patch with a wrong phase offset is pulled toward its neighbours
    rotated = patches.clone()
    rotated[0, 0] *= np.exp(1j * 1.0)
    merged = physics.merge_group_on_canvas(rotated, offsets, weight)
    residual = torch.angle((merged[0, 0][core] * patches[0, 0][core].conj()).sum())
    assert abs(float(residual)) < 0.6


def test_poisson_loss_excludes_bad_pixels_and_is_minimal_at_the_truth():
    rng = np.random.default_rng(7)
    expected = torch.from_numpy(rng.uniform(1, 50, (4, 1, 8, 8)).astype(np.float32))
    measured = torch.poisson(expected)
    valid = torch.ones(8, 8)
    valid[2, 3] = 0
    corrupted = measured.clone()
    corrupted[..., 2, 3] = 1e6
    assert float(physics.poisson_nll(expected, corrupted, valid, 100.0)) == pytest.approx(
        float(physics.poisson_nll(expected, measured, valid, 100.0))
    )
    assert float(physics.poisson_nll(expected, corrupted, None, 100.0)) != pytest.approx(
        float(physics.poisson_nll(expected, measured, None, 100.0))
    )
    at_truth = physics.poisson_nll(expected, expected, None, 100.0)
    assert float(at_truth) < float(physics.poisson_nll(expected * 1.2, expected, None, 100.0))
    assert float(at_truth) < float(physics.poisson_nll(expected * 0.8, expected, None, 100.0))


def test_poisson_loss_size_does_not_depend_on_dose():
    expected = torch.ones(2, 1, 8, 8)
    low = physics.poisson_nll(expected * 10, expected * 10, None, 640.0)
    high = physics.poisson_nll(expected * 1000, expected * 1000, None, 64000.0)
    assert abs(float(low)) < 10 and abs(float(high)) < 10


def test_intensity_scale_makes_object_amplitude_order_one():
    probe = soft_disk_probe(32, 8)
    assert physics.intensity_scale_from_data(1e5, probe) == pytest.approx(1e5 / np.sum(np.abs(probe) ** 2))
    with pytest.raises(ValueError, match="probe has zero"):
        physics.intensity_scale_from_data(1e5, np.zeros((1, 32, 32)))


def test_middle_trim_zeroes_patch_edges():
    weight = physics.probe_weight(torch.ones(1, 16, 16, dtype=torch.complex64), middle_trim_px=3)
    assert float(weight[:3].abs().sum()) == 0 and float(weight[3:13, 3:13].min()) == 1.0
    with pytest.raises(ValueError, match="middle_trim"):
        physics.probe_weight(torch.ones(1, 16, 16, dtype=torch.complex64), middle_trim_px=8)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.float32, torch.float64])
def test_add_at_sums_repeated_indices_as_numpy_and_as_index_add(dtype):
    """Overlapping windows put many values on one pixel: every one is added (numpy's ``add.at``), and the CPU's
    scatter path gives index_add_'s result bit for bit (the same sum in the same order)."""
    rng = np.random.default_rng(1)
    index = torch.from_numpy(rng.integers(0, 50, size=4000))
    values = torch.randn(4000, dtype=dtype, generator=torch.Generator().manual_seed(2))
    expected = np.zeros(50, dtype=values.numpy().dtype)
    np.add.at(expected, index.numpy(), values.numpy())
    got = physics.add_at(torch.zeros(50, dtype=dtype), index, values)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(got, torch.zeros(50, dtype=dtype).index_add_(0, index, values))
