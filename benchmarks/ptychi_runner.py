"""Run pty-chi (LSQML or ePIE) on a scan given in ptychodus_pinn's conventions (SPEC §4).

Needs the benchmark venv (``benchmarks/setup_bench_venv.sh``): ``ptychi`` 2.2 with a matching
torch/torchvision pair. Nothing here imports ``ptychodus_pinn``, so the runner can be checked on its
own (``benchmarks/check_ptychi_frame.py``).

Conventions mapped, each read from pty-chi 2.2's source:

* **Patterns.** Ours have zero frequency at (N//2, N//2); pty-chi's far-field model is a plain
  ``fft2(psi)`` with zero frequency at (0, 0) and ``data_options.fft_shift=True`` applies
  ``fftshift`` to the data, which for even N moves (N//2, N//2) to (0, 0). Our model's
  ``ifftshift`` on the exit wave only multiplies the spectrum by (-1)^(k+l), so intensities agree.
* **Intensity scale.** Our counts are ``scale * |fft2(psi, norm='ortho')|^2``; pty-chi's
  propagator is unnormalised (``norm=None``), i.e. N² times larger. A fixed probe is therefore
  handed to pty-chi as ``probe * sqrt(scale) / N`` and the object comes back in our units.
* **Positions.** pty-chi takes patch *centres* in pixels relative to ``pos_origin_coords`` and a
  patch covers rows ``round(p + origin - (N-1)/2)`` on. Ours cover rows ``y - N//2`` on, so with
  the origin set (``SPECIFIED``) to (-0.5, -0.5) our object-pixel positions pass unchanged and
  pty-chi's object buffer *is* our object grid (same shape, same pixel frame). The sub-pixel
  remainder is applied by pty-chi as a Fourier shift of the probe (``p - round(p)``), the same
  direction as our patch extraction.
* **Fixed probe, fixed positions.** ``probe_options.optimizable=False``,
  ``rescale_probe_intensity_in_first_epoch=False`` and
  ``remove_object_probe_ambiguity.enabled=False`` (that step rescales object and probe together,
  which would break a known probe's power).
"""

from __future__ import annotations

import math
import os
import resource
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch

Method = Literal["lsqml", "epie"]
NoiseModel = Literal["poisson", "gaussian"]
ObjectCallback = Callable[[np.ndarray], dict[str, float]]

#: Position origin that makes pty-chi's object buffer coincide with our object grid.
PTYCHI_POSITION_ORIGIN_PX = (-0.5, -0.5)


def intensity_scale_from_data(patterns: np.ndarray, probe: np.ndarray) -> float:
    """SPEC §4 scale: mean total counts per pattern ÷ Σ|P|² over all probe modes."""
    mean_counts = float(np.asarray(patterns, np.float64).sum() / patterns.shape[0])
    return mean_counts / float(np.sum(np.abs(probe) ** 2))


def to_ptychi_probe(probe: np.ndarray, intensity_scale: float) -> np.ndarray:
    """Our (P, N, N) probe in count units of pty-chi's unnormalised FFT: (1, P, N, N) complex64."""
    modes = np.asarray(probe, np.complex64).reshape(-1, probe.shape[-2], probe.shape[-1])
    size = modes.shape[-1]
    return (modes * (math.sqrt(intensity_scale) / size)).astype(np.complex64)[None]


class PeakRss:
    """Peak resident memory of this process while the context is open (sampled every 20 ms)."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.baseline_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm", encoding="ascii") as handle:
                return int(handle.read().split()[1]) * self._page
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._rss())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRss:
        self.baseline_bytes = self._rss()
        self.peak_bytes = self.baseline_bytes
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._rss())


def build_ptychi_task(
    patterns: np.ndarray,
    positions_yx_px: np.ndarray,
    probe: np.ndarray,
    object_shape: tuple[int, int],
    *,
    method: Method = "lsqml",
    noise_model: NoiseModel = "poisson",
    batch_size: int | None = None,
    intensity_scale: float | None = None,
    bad_pixels: np.ndarray | None = None,
    object_guess: np.ndarray | None = None,
    device: Literal["cpu", "gpu"] = "cpu",
    seed: int = 0,
    epie_alpha: float = 1.0,
    probe_optimizable: bool = False,
) -> Any:
    """A ready ``ptychi.api.task.PtychographyTask`` for a scan in our conventions.

    Positions are always fixed; the probe is fixed unless ``probe_optimizable`` (then pty-chi's
    first-epoch probe power rescaling and object/probe ambiguity removal stay on, as for a guess).
    Default batch sizes: 100 patterns for LSQML (pty-chi's default), 16 for ePIE (with
    ``epie_alpha`` = 1, classic ePIE's step; batch 1 is ~10x slower per epoch on a CPU).
    """
    import ptychi.api as api
    from ptychi.api.task import PtychographyTask

    patterns = np.asarray(patterns, np.float32)
    if patterns.ndim != 3 or patterns.shape[1] != patterns.shape[2] or patterns.shape[1] % 2:
        raise ValueError(f"patterns must be (M, N, N) with even N; got {patterns.shape}")
    positions = np.asarray(positions_yx_px, np.float64)
    if positions.shape != (patterns.shape[0], 2):
        raise ValueError(f"positions must be ({patterns.shape[0]}, 2) as (y, x); got {positions.shape}")
    scale = intensity_scale_from_data(patterns, probe) if intensity_scale is None else float(intensity_scale)

    if method == "lsqml":
        options: Any = api.LSQMLOptions()
        options.reconstructor_options.noise_model = (
            api.NoiseModels.POISSON if noise_model == "poisson" else api.NoiseModels.GAUSSIAN
        )
        options.reconstructor_options.rescale_probe_intensity_in_first_epoch = probe_optimizable
        options.reconstructor_options.batch_size = batch_size or 100
    elif method == "epie":
        options = api.EPIEOptions()
        options.object_options.alpha = epie_alpha
        options.reconstructor_options.batch_size = batch_size or 16
    else:
        raise ValueError(f"method={method!r} is not allowed; choose one of: lsqml, epie")

    options.data_options.fft_shift = True
    options.reconstructor_options.default_device = api.Devices.GPU if device == "gpu" else api.Devices.CPU
    options.reconstructor_options.random_seed = seed

    options.object_options.optimizable = True
    options.object_options.determine_position_origin_coords_by = api.ObjectPosOriginCoordsMethods.SPECIFIED
    options.object_options.position_origin_coords = np.asarray(PTYCHI_POSITION_ORIGIN_PX)
    options.object_options.remove_object_probe_ambiguity.enabled = probe_optimizable

    options.probe_options.optimizable = probe_optimizable
    options.probe_position_options.optimizable = False

    guess = np.ones(object_shape, np.complex64) if object_guess is None else np.asarray(object_guess, np.complex64)
    if guess.shape != tuple(object_shape):
        raise ValueError(f"object_guess has shape {guess.shape}, expected {tuple(object_shape)}")
    valid = None if bad_pixels is None else torch.from_numpy(~np.asarray(bad_pixels, bool))

    return PtychographyTask(
        options,
        diffraction_data=torch.from_numpy(patterns),
        object_data=torch.from_numpy(guess[None].copy()),
        probe_data=torch.from_numpy(to_ptychi_probe(probe, scale)),
        probe_position_x_px=torch.from_numpy(positions[:, 1].astype(np.float32)),
        probe_position_y_px=torch.from_numpy(positions[:, 0].astype(np.float32)),
        valid_pixel_mask=valid,
    )


def run_ptychi(
    patterns: np.ndarray,
    positions_yx_px: np.ndarray,
    probe: np.ndarray,
    object_shape: tuple[int, int],
    *,
    method: Method = "lsqml",
    epochs: int = 100,
    record_every: int = 10,
    callback_truth: ObjectCallback | None = None,
    threads: int = 2,
    noise_model: NoiseModel = "poisson",
    batch_size: int | None = None,
    intensity_scale: float | None = None,
    bad_pixels: np.ndarray | None = None,
    device: Literal["cpu", "gpu"] = "cpu",
    keep_snapshots: bool | None = None,
    seed: int = 0,
    epie_alpha: float = 1.0,
    probe_optimizable: bool = False,
) -> dict[str, Any]:
    """Reconstruct the object with pty-chi, probe and positions fixed; returns it on our grid.

    Every ``record_every`` epochs (and after the last) a record ``{epoch, wall_s, loss, ...}``
    is added; ``callback_truth(object)`` (e.g. metrics against a known truth) adds its numbers,
    and the object itself is kept when ``keep_snapshots`` (default: when no callback is given).
    ``wall_s`` counts only pty-chi's own run time (set-up excluded, reported as ``setup_s``);
    the callback and snapshot copies are not timed. ``cpu_s`` is this process's CPU time over the
    same spans (all threads): with other work on the machine it shows how much wall time was lost.
    """
    if epochs < 1 or record_every < 1:
        raise ValueError(f"epochs={epochs} and record_every={record_every} must be >= 1")
    torch.set_num_threads(threads)
    keep = callback_truth is None if keep_snapshots is None else keep_snapshots
    use_gpu = device == "gpu" and torch.cuda.is_available()
    if use_gpu:
        torch.cuda.reset_peak_memory_stats()

    if intensity_scale is None:
        intensity_scale = intensity_scale_from_data(np.asarray(patterns), np.asarray(probe))
    records: list[dict[str, Any]] = []
    with warnings.catch_warnings(), PeakRss() as rss:
        # pty-chi 2.2 converts a grad-carrying loss to float each epoch; the warning is noise here.
        warnings.filterwarnings("ignore", message=".*requires_grad=True to a scalar")
        started = time.perf_counter()
        task = build_ptychi_task(
            patterns,
            positions_yx_px,
            probe,
            object_shape,
            method=method,
            noise_model=noise_model,
            batch_size=batch_size,
            intensity_scale=intensity_scale,
            bad_pixels=bad_pixels,
            device="gpu" if use_gpu else "cpu",
            seed=seed,
            epie_alpha=epie_alpha,
            probe_optimizable=probe_optimizable,
        )
        setup_s = time.perf_counter() - started
        wall_s = 0.0
        cpu_s = 0.0
        done = 0
        while done < epochs:
            step = min(record_every, epochs - done)
            tick, tick_cpu = time.perf_counter(), time.process_time()
            task.run(n_epochs=step)
            if use_gpu:
                torch.cuda.synchronize()
            wall_s += time.perf_counter() - tick
            cpu_s += time.process_time() - tick_cpu
            done += step
            obj = task.get_data_to_cpu("object", as_numpy=True)[0]
            record: dict[str, Any] = {"epoch": done, "wall_s": wall_s, "cpu_s": cpu_s, "loss": _last_loss(task)}
            if callback_truth is not None:
                record.update(callback_truth(obj))
            if keep:
                record["object"] = obj.copy()
            records.append(record)
        final = task.get_data_to_cpu("object", as_numpy=True)[0]

    result: dict[str, Any] = {
        "method": method,
        "object": final,
        "records": records,
        "epochs": epochs,
        "total_s": wall_s,
        "cpu_s": cpu_s,
        "setup_s": setup_s,
        "seconds_per_epoch": wall_s / epochs,
        "peak_rss_bytes": rss.peak_bytes,
        "peak_rss_increase_bytes": rss.peak_bytes - rss.baseline_bytes,
        "threads": threads,
        "device": "gpu" if use_gpu else "cpu",
        "noise_model": noise_model if method == "lsqml" else "gaussian",
        "batch_size": task.reconstructor_options.batch_size,
    }
    result["intensity_scale"] = intensity_scale
    if probe_optimizable:
        refined = task.get_data_to_cpu("probe", as_numpy=True)[0]
        result["probe"] = (refined * (refined.shape[-1] / math.sqrt(intensity_scale))).astype(np.complex64)
    if use_gpu:
        result["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated())
    # no default device at all (pty-chi sets one): even "cpu" keeps a device mode that intercepts every later
    # torch call in this process, which made our own timings after an LSQML run ~8 % slower (measured)
    torch.set_default_device(None)
    return result


def _last_loss(task: Any) -> float:
    """pty-chi's displayed loss of the latest epoch (NaN when it has none)."""
    try:
        table = task.reconstructor.loss_tracker.table
        return float(table["loss"].iloc[-1])
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return math.nan
