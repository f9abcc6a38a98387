"""Train on the real Siemens-star scan (../shared/data) and draw it beside the pty-chi LSQML reference.

    python docs/make_real_data_figure.py [--epochs 10] [--crop 64]

Writes resources/real-data.png and resources/real-data.json (timings, FRC against the reference).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from ptychodus_pinn.app.figures import _crop, _pyplot
from ptychodus_pinn.engine.config import ExecutionConfig, ModelConfig, RunConfig, TrainingConfig
from ptychodus_pinn.engine.data import ReadOptions, load_scan
from ptychodus_pinn.engine.inference import reconstruct
from ptychodus_pinn.engine.metrics import flatten_phase, frc_threshold_crossing
from ptychodus_pinn.engine.training import train

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--crop", type=int, default=64)
    arguments = parser.parse_args()
    started = time.perf_counter()
    scan = load_scan(DATA / "siemens-star-small.npz.bz2", ReadOptions(crop_px=arguments.crop))
    config = RunConfig(
        ModelConfig(N=arguments.crop, n_filters_scale=1),
        TrainingConfig(epochs=arguments.epochs, batch_size=16, validation_fraction=0.0, learning_rate=3e-3),
        ExecutionConfig(accelerator="auto", logger="none", enable_progress_bar=False),
    )
    result = train([scan], config)
    reconstruction = reconstruct(result.model, scan)
    ours = _crop(flatten_phase(reconstruction.object, reconstruction.illuminated), reconstruction.illuminated)
    with np.load(DATA / "siemens-star-small_lsqml-reference.npz") as archive:
        reference = archive["object"]
    # the reference is sampled on 128-px patterns: bring it to our (coarser) pixel
    factor = arguments.crop / 128
    reference = ndimage.zoom(reference.real, factor, order=1) + 1j * ndimage.zoom(reference.imag, factor, order=1)
    reference = flatten_phase(reference, np.abs(reference) > 0)
    size = min(*ours.shape, *reference.shape)

    def centre(image: np.ndarray) -> np.ndarray:
        top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
        return image[top : top + size, left : left + size]

    from skimage.registration import phase_cross_correlation

    ours_c, reference_c = centre(ours), centre(reference)
    shift, _, _ = phase_cross_correlation(np.abs(reference_c), np.abs(ours_c), upsample_factor=10)
    ours_c = ndimage.shift(ours_c.real, shift) + 1j * ndimage.shift(ours_c.imag, shift)
    frc = frc_threshold_crossing(np.abs(ours_c), np.abs(reference_c), threshold=1 / 7)
    plt = _pyplot()
    figure, axes = plt.subplots(1, 4, figsize=(16, 4.3))
    panels = (
        (np.abs(ours_c), f"PINN amplitude ({arguments.epochs} epochs, {result.seconds:.0f} s)", "gray"),
        (np.angle(ours_c), "PINN phase (ramp removed)", "viridis"),
        (np.abs(reference_c), "pty-chi LSQML amplitude (100 epochs)", "gray"),
        (np.angle(reference_c), "pty-chi LSQML phase", "viridis"),
    )
    for axis, (values, title, cmap) in zip(axes, panels, strict=True):
        axis.imshow(values, cmap=cmap)
        axis.set_title(title, fontsize=9)
        axis.set_axis_off()
    figure.tight_layout()
    figure.savefig(ROOT / "resources" / "real-data.png", dpi=100)
    summary = {
        "patterns": scan.count,
        "crop_px": arguments.crop,
        "epochs": arguments.epochs,
        "seconds_train": result.seconds,
        "seconds_total": time.perf_counter() - started,
        "patterns_per_second_infer": reconstruction.patterns_per_second,
        "frc_amplitude_vs_lsqml_1_7_fraction_of_nyquist": frc,
        "registration_shift_px": [float(value) for value in shift],
    }
    (ROOT / "resources" / "real-data.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
