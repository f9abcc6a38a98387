"""The real Siemens-star scan in ../shared/data (tike layout) trains and gives a recognisable star."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from skimage.feature import match_template

from ptychodus_pinn.engine.config import ExecutionConfig, ModelConfig, RunConfig, TrainingConfig
from ptychodus_pinn.engine.data import ReadOptions, load_scan
from ptychodus_pinn.engine.inference import reconstruct
from ptychodus_pinn.engine.training import train

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SCAN = DATA / "siemens-star-small.npz.bz2"
REFERENCE = DATA / "siemens-star-small_lsqml-reference.npz"

pytestmark = pytest.mark.skipif(not SCAN.exists(), reason="../shared/data is not beside this checkout")


@pytest.fixture(scope="module")
def real_scan():
    return load_scan(SCAN, ReadOptions(crop_px=32))


def test_real_scan_is_read_in_engine_conventions(real_scan):
    assert real_scan.count == 516 and real_scan.size_px == 32
    # zero frequency moved from the corner to the centre: the central crop holds the bulk of the
    # photons (~30 %); read without the shift it would hold almost none (~1e-4)
    full = load_scan(SCAN, ReadOptions(max_patterns=50)).mean_total_counts
    cropped = load_scan(SCAN, ReadOptions(crop_px=32, max_patterns=50)).mean_total_counts
    unshifted = load_scan(SCAN, ReadOptions(crop_px=32, max_patterns=50, dc_at_corner=False)).mean_total_counts
    assert cropped / full > 0.2 and unshifted / full < 0.01
    # positions centred on zero were moved onto a grid with a margin, scaled to the coarser pixels
    assert real_scan.positions_yx_px.min() >= 16 + 16 - 1e-6
    extent = np.ptp(real_scan.positions_yx_px, axis=0)
    assert np.allclose(extent, [332 / 4, 332 / 4], rtol=0.05)


@pytest.mark.slow
def test_training_on_the_real_scan_gives_a_recognisable_star(real_scan):
    config = RunConfig(
        ModelConfig(N=32, n_filters_scale=1),
        TrainingConfig(epochs=8, batch_size=16, validation_fraction=0.0, learning_rate=3e-3),
        ExecutionConfig(accelerator="cpu", logger="none", enable_progress_bar=False),
    )
    result = train([real_scan], config)
    reconstruction = reconstruct(result.model, real_scan)
    with np.load(REFERENCE) as archive:
        reference = np.abs(archive["object"])
    # the LSQML reference is sampled 4x finer (128-px patterns); bring it to our pixel and find it in our image
    zoomed = ndimage.zoom(reference, 32 / 128, order=1)
    height, width = zoomed.shape
    template = zoomed[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4]
    ours = match_template(np.abs(reconstruction.object), template).max()
    noise = match_template(np.random.default_rng(0).random(reconstruction.object.shape), template).max()
    assert ours > 0.15 and ours > 2.5 * noise, (ours, noise)
