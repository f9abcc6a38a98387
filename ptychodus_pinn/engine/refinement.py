"""Joint refinement of object and probe against the likelihood of all patterns (SPEC §11).

A single pattern pins its patch down poorly; the overlap between patterns is where the
information is. Refinement takes a start object (the network's stitched output, or a flat one,
whichever the data prefer) and improves it against every pattern at once, with the engine's
forward model: exact integer windows of the object times the probe shifted by each position's
sub-pixel remainder in Fourier space (``physics.shifted_probes``), ``physics.far_field``, Poisson
(or Gaussian) likelihood over the valid detector pixels.

The update is a least-squares maximum-likelihood (LSQML, Odstrčil et al. 2018) step, written here
from the algorithm:

1. *Far field.* For Poisson counts the likelihood gradient with respect to the far field is
   ``Ψ·(1 − I/Î)``; one step along it, ``Ψ' = Ψ·(1 − a·(1 − I/Î))``, with a per-pattern length
   ``a`` in [0, 1] found by Newton iterations on the exact Poisson likelihood of that line. Every term
   with the counts vanishes where a pixel holds none, so the likelihood and the Newton sums run on the
   counted pixels alone (``CountedPixels``; 10–16 % of the pixels at 10⁵ photons) plus one dense Σ Î.
2. *Exit-wave residual* ``χ = F⁻¹(Ψ' − Ψ)``.
3. *Directions.* Object: ``Σ conj(P_j) χ_j`` placed on the canvas and divided by the scan's
   illumination (damped); probe: the mean of ``conj(O_j) χ_j`` moved back by each sub-pixel shift.
4. *Step lengths.* Per pattern, the real pair (α_O, α_P) that best explains χ by the two
   directions (a regularised 2×2 least-squares problem); a trimmed mean over the mini-batch.
5. *Acceleration.* After each epoch, when successive epoch updates keep pointing the same way
   (positive correlation), a velocity with friction estimated from how fast that correlation decays
   extrapolates the object (the momentum scheme of LSQML/PtychoShelves); it stops itself when
   updates disagree.
6. *Safeguard.* Once the batch is the whole scan, an epoch's NLL is exactly that of the state it
   started from. The first time it is worse than the epoch before, the velocity is dropped and
   whole-scan object steps switch from the trimmed mean of per-pattern lengths (long, fast while
   far from the answer) to the joint least-squares length Σb/Σa over all patterns. Without this,
   the likelihood climbed again after convergence (Siemens star from epoch ~50: phase SSIM 0.89 →
   0.84–0.87 by epoch 100; 10⁴ photons from epoch ~25), also with the momentum dropped; with it no
   run of the 16 measured rose again and the first 40 epochs are unchanged.

*Half resolution first.* ``refine_steps`` runs ``half_resolution_epochs`` of the above on the detector's
central N/2 × N/2 pixels (``half_resolution_scan``: the object at twice the pixel size, a quarter of the
cost per epoch), where the object's large features converge, and adds what they changed (upsampled) to
the start before the full-resolution epochs (docs/physics.md, "Half resolution first").

Everything runs in complex64 on the chosen device. ``iterate_refinement`` yields one
:class:`RefinementReport` per epoch (cdtools-style), ``refine`` runs it to the end and returns the
best state by likelihood. Stop (``should_stop``) is checked between mini-batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ptychodus_pinn.engine import physics
from ptychodus_pinn.engine.config import NoiseModel, RefinementConfig, RefinementStart
from ptychodus_pinn.engine.data import Scan, centre_crop
from ptychodus_pinn.engine.device import DeviceLike, torch_device


@dataclass
class RefinementReport:
    """Progress after one epoch: the mean Poisson NLL per pattern seen during it (dose-normalised) and
    the refinement loop's own seconds so far (time the caller spends between epochs is not counted)."""

    epoch: int
    epochs: int
    nll: float
    seconds: float
    batch_size: int = 0
    stopped: bool = False
    # an epoch of the half-resolution stage: its NLL is over the detector's central half (not comparable)
    half_resolution: bool = False
    snapshot: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)


@dataclass
class RefinementResult:
    """The refined object on the scan's grid, the refined probe, and how it went."""

    object: np.ndarray
    probe: np.ndarray
    illuminated: np.ndarray
    start: RefinementStart
    start_nll: dict[str, float]
    history: list[RefinementReport] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    stopped: bool = False
    converged: bool = False  # ended before ``epochs`` by ``stop_tolerance``
    # Σ_j Σ_p |P_p(r − r_j)|² of the returned probe on the scan's grid, in the scan's probe units (the
    # preconditioner's illumination, reused by the confidence map: engine/confidence.py)
    illumination: np.ndarray | None = None


#: Patterns of a mini-batch: indices, or a slice of the scan (the whole-scan batch needs no gathers).
Batch = torch.Tensor | slice


class RefinementProblem:
    """A scan and the state being refined, on an object canvas padded so every window fits.

    The intensity scale is folded into the probe (``sqrt(scale)·P``) so the model is plain
    ``Σ_p |F(O·P_p)|²``; ``probe`` and ``object`` give them back in the scan's units.
    """

    def __init__(self, scan: Scan, initial_object: np.ndarray, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.size = scan.size_px
        self.pad = self.size // 2 + 2
        height, width = scan.object_shape
        self.object_shape = (height, width)
        self.canvas_shape = (height + 2 * self.pad, width + 2 * self.pad)
        top_left, fraction = physics.window_top_left(scan.positions_yx_px + self.pad, self.size)
        self.top_left = torch.from_numpy(top_left).to(self.device)
        self.ramps = torch.from_numpy(fraction).to(self.device, torch.float32)
        # patterns and mask with zero frequency moved to the corner, once: for even N,
        # |fft2(ψ)|² = ifftshift(|far_field(ψ)|²) exactly, so the loop needs no fftshift rolls
        self.patterns = torch.fft.ifftshift(torch.from_numpy(scan.patterns).to(self.device), dim=(-2, -1))
        valid = np.ones((self.size, self.size), bool) if scan.bad_pixels is None else ~scan.bad_pixels
        self.valid = torch.fft.ifftshift(torch.from_numpy(valid).to(self.device, torch.float32), dim=(-2, -1))
        # counts on valid pixels only: a masked pixel may hold anything (hot, saturated, dead)
        self.mean_counts = max(float((self.patterns * self.valid).sum()) / self.count, physics.EPSILON_COUNTS)
        self.all_valid = bool(self.valid.all())
        self.masked_index = (self.valid.reshape(-1) == 0).nonzero().reshape(-1)  # flat, in the patterns' layout
        self._counted_scan = self._counted_pixels_of_scan()
        self.scale = self.mean_counts / float(np.sum(np.abs(scan.probe) ** 2))
        self.probe = torch.from_numpy(scan.probe).to(self.device, torch.complex64) * math.sqrt(self.scale)
        self.probe_power = float(physics.abs2(self.probe).sum())
        self.canvas = self._padded(initial_object)
        self._flat_cache: torch.Tensor | None = None
        # set once a whole-scan epoch found the likelihood worse: from then on, whole-scan steps use the joint
        # least-squares length Σb/Σa instead of the trimmed mean of per-pattern lengths (iterate_refinement)
        self.joint_step_length = False
        self._shifted_cache: torch.Tensor | None = None
        self._conjugate_cache: torch.Tensor | None = None
        self._intensity_cache: torch.Tensor | None = None
        # shifted probes, their conjugates (complex64) and intensities (float32): 20 bytes per probe value
        self._cache_fits = 20 * self.probe.numel() * self.count <= PROBE_CACHE_BUDGET_BYTES
        self.illumination = self.compute_illumination()

    # ------------------------------------------------------------------------------- geometry

    @property
    def count(self) -> int:
        return int(self.patterns.shape[0])

    def _padded(self, obj: np.ndarray) -> torch.Tensor:
        canvas = torch.ones(self.canvas_shape, dtype=torch.complex64, device=self.device)
        pad = self.pad
        canvas[pad : pad + self.object_shape[0], pad : pad + self.object_shape[1]] = torch.from_numpy(
            np.asarray(obj, np.complex64)
        ).to(self.device)
        return canvas

    def cropped(self, canvas: torch.Tensor) -> torch.Tensor:
        pad = self.pad
        return canvas[pad : pad + self.object_shape[0], pad : pad + self.object_shape[1]]

    def current_object(self) -> np.ndarray:
        """The object being refined, on the scan's grid."""
        return self.cropped(self.canvas).cpu().numpy().astype(np.complex64)

    def illuminated(self) -> np.ndarray:
        """Pixels of the scan's grid that any probe position lights (above 10⁻³ of the peak)."""
        return (self.cropped(self.illumination) > 1e-3 * float(self.illumination.max())).cpu().numpy()

    def windows(self, canvas: torch.Tensor, batch: Batch) -> torch.Tensor:
        """(B, N, N): the N×N windows of a canvas-shaped array at the batch's positions.

        Indexing the canvas's sliding-window view copies whole rows: 2.5× faster than a gather by flat index.
        """
        top_left = self.top_left[batch]
        return canvas.unfold(0, self.size, 1).unfold(1, self.size, 1)[top_left[:, 0], top_left[:, 1]]

    def flat_indices(self, batch: Batch) -> torch.Tensor:
        """(B, N, N) flat canvas indices of the batch's windows; for the whole scan formed once (when they fit
        the probe cache's budget), so a whole-scan batch takes them as views."""
        if self._flat_cache is None and 8 * self.count * self.size**2 <= PROBE_CACHE_BUDGET_BYTES:
            self._flat_cache = physics.window_flat_indices(self.top_left, self.size, self.canvas_shape[1])
        if self._flat_cache is not None:
            return self._flat_cache[batch]
        return physics.window_flat_indices(self.top_left[batch], self.size, self.canvas_shape[1])

    def probes_for(self, batch: Batch) -> torch.Tensor:
        """(B, P, N, N): the probe shifted by each pattern's sub-pixel remainder.

        Cached for the whole scan while the probe stays fixed and the cache fits its budget (it
        saves two of the four FFTs per pattern and step); ``probe_changed`` drops it.
        """
        if self._shifted_cache is None and self._cache_fits:
            self._shifted_cache = physics.shifted_probes(self.probe, self.ramps)
            self._conjugate_cache = self._shifted_cache.conj().resolve_conj()
            self._intensity_cache = _mode_sum(physics.abs2(self._shifted_cache))
        if self._shifted_cache is not None:
            return self._shifted_cache[batch]
        return physics.shifted_probes(self.probe, self.ramps[batch])

    def conjugate_probes_for(self, batch: Batch, probes: torch.Tensor) -> torch.Tensor:
        """conj(``probes_for(batch)``), given as ``probes``, materialised: a product with a lazily
        conjugated tensor copies it first and runs 3× slower than one with a plain tensor."""
        if self._conjugate_cache is not None and self._shifted_cache is not None:
            return self._conjugate_cache[batch]
        return probes.conj().resolve_conj()

    def probe_intensities_for(self, batch: Batch, probes: torch.Tensor) -> torch.Tensor:
        """(B, N, N): Σ_p |P_p|² of ``probes_for(batch)`` (given as ``probes``), from the cache when there is one."""
        if self._intensity_cache is not None and self._shifted_cache is not None:
            return self._intensity_cache[batch]
        return _mode_sum(physics.abs2(probes))

    def probe_changed(self) -> None:
        """A refined probe changes every mini-batch: shift it per batch from now on."""
        self._shifted_cache = None
        self._conjugate_cache = None
        self._intensity_cache = None
        self._cache_fits = False

    def compute_illumination(self) -> torch.Tensor:
        """Σ_j |P_j|² on the canvas (the preconditioner of the object update)."""
        illumination = torch.zeros(self.canvas_shape[0] * self.canvas_shape[1], device=self.device)
        for batch in self.scan_batches():
            intensity = physics.abs2(self.probes_for(batch)).sum(dim=1)
            physics.add_at(illumination, self.flat_indices(batch).reshape(-1), intensity.reshape(-1))
        return illumination.reshape(self.canvas_shape)

    def _counted_pixels_of(self, patterns: torch.Tensor, width: int) -> CountedPixels:
        """:class:`CountedPixels` of (B, N, N) patterns, ``width`` (at least their most counted pattern's) wide."""
        measured = (patterns if self.all_valid else patterns * self.valid).reshape(len(patterns), -1)
        # counted pixels first, then the other valid ones, then the masked ones; stable keeps pixel order
        rank = torch.where(measured != 0, 0, 1 + (self.valid.reshape(1, -1) == 0).to(torch.uint8)).to(torch.uint8)
        index = torch.sort(rank, dim=1, stable=True).indices[:, :width]
        return CountedPixels(index=index, counts=torch.gather(measured, 1, index))

    def _counted_pixels_of_scan(self) -> CountedPixels | None:
        """The whole scan's :class:`CountedPixels`, formed once; None when they would not fit their budget
        (large high-dose scans, where most pixels hold counts: ``counted_pixels`` then takes every valid pixel)."""
        width = 0
        for batch in self.scan_batches():
            measured = self.patterns[batch] if self.all_valid else self.patterns[batch] * self.valid
            width = max(width, int((measured != 0).sum(dim=(-2, -1)).max()))
        if 12 * self.count * width > COUNTED_CACHE_BUDGET_BYTES:
            return None
        parts = [self._counted_pixels_of(self.patterns[batch], width) for batch in self.scan_batches()]
        return CountedPixels(torch.cat([part.index for part in parts]), torch.cat([part.counts for part in parts]))

    def counted_pixels(self, chunk: Batch) -> CountedPixels:
        """The valid pixels of a chunk's patterns that hold counts (see :class:`CountedPixels`): from the scan's
        layout, or, where that did not fit, every valid pixel (exact too: the terms of an empty pixel vanish)."""
        if self._counted_scan is not None:
            return CountedPixels(self._counted_scan.index[chunk], self._counted_scan.counts[chunk])
        patterns = self.patterns[chunk].reshape(-1, self.size * self.size)
        index = self.valid.reshape(-1).nonzero().reshape(1, -1).expand(len(patterns), -1)
        return CountedPixels(index=index, counts=torch.gather(patterns, 1, index))

    # ------------------------------------------------------------------------------- physics

    def expected(self, canvas: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        windows = self.windows(canvas, batch)
        return physics.abs2(_far_field(windows[:, None] * self.probes_for(batch))).sum(dim=1)

    def nll(self, canvas: torch.Tensor) -> float:
        """Dose-normalised Poisson NLL per pattern of a canvas over the whole scan."""
        return self.scan_nll((self.expected(canvas, batch), batch) for batch in self.scan_batches())

    def scan_batches(self) -> tuple[torch.Tensor, ...]:
        """The whole scan in batches of 256 patterns, for whole-scan sums (illumination, likelihood)."""
        return torch.arange(self.count, device=self.device).split(256)

    def scan_nll(self, predictions: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """Dose-normalised Poisson NLL per pattern from (predicted counts, batch) pairs covering the scan."""
        total = sum(float(self._batch_nll(predicted, self.patterns[batch]).sum()) for predicted, batch in predictions)
        return total / self.count / self.mean_counts

    def _batch_nll(self, predicted: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
        return physics.poisson_nll_per_pattern(predicted, measured, self.valid)


def _far_field(exit_waves: torch.Tensor) -> torch.Tensor:
    """``physics.far_field`` without its shifts: zero frequency at the corner (see RefinementProblem)."""
    return torch.fft.fft2(exit_waves, norm="ortho")


@dataclass
class CountedPixels:
    """The valid detector pixels of a chunk's patterns that hold counts (I ≠ 0): (B, K) pixel indices within
    each pattern and their counts, padded to the scan's most counted pattern with other valid pixels at
    count 0 (distinct pixels, so values can be scattered back without collisions).

    Every term of the Poisson likelihood and of its step-length Newton iteration that involves the counts
    vanishes where I = 0; at 10⁵ photons only 10–16 % of the pixels of a 64–128 px pattern hold any. Those
    terms run on these pixels alone; the rest reduce to Σ Î over the valid pixels (one dense sum).
    """

    index: torch.Tensor
    counts: torch.Tensor


def _poisson_step_lengths(predicted_valid_sum: torch.Tensor, predicted: torch.Tensor, counted: CountedPixels) -> torch.Tensor:
    """Per-pattern a in [0, 1] minimising the Poisson NLL of Î·(1 − a·ξ)², ξ = (1 − I/Î) on valid pixels (Newton).

    With f = 1 − a·ξ (clamped at 10⁻³ inside the logarithm's term only): dNLL/da = 2·Σ(I·ξ/f − Î·ξ + a·Î·ξ²),
    d²NLL/da² = 2·Σ(Î·ξ² + I·ξ²/f²). The terms with I run on the counted pixels only; with r = I/Î,
    Σ Î·ξ = Σ Î − Σ Î·r and Σ Î·ξ² = Σ Î − 2·Σ Î·r + Σ Î·r², where the sums of r vanish outside them.
    ``predicted`` holds Î at the counted pixels, ``predicted_valid_sum`` Σ Î over each pattern's valid pixels.
    From a = 0.5, at most four iterations, fewer once no pattern's a moves by 10⁻³ (near convergence two or
    three suffice; a fixed three left a flat start with a two-mode probe 0.1 off after two steps).
    """
    ratio = counted.counts / (predicted + physics.EPSILON_COUNTS)
    xi = 1 - ratio
    # Σ Î − Σ Î·r cancels near convergence (both ≈ the pattern's counts): formed in float64
    predicted_ratio = (predicted * ratio).sum(dim=1, dtype=torch.float64)
    predicted_ratio2 = (predicted * ratio * ratio).sum(dim=1, dtype=torch.float64)
    predicted_xi_sum = (predicted_valid_sum - predicted_ratio).float()
    predicted_xi2 = (predicted_valid_sum - 2 * predicted_ratio + predicted_ratio2).float()
    measured_xi = counted.counts * xi
    measured_xi2 = measured_xi * xi
    step = torch.full((len(predicted),), 0.5, device=predicted.device)
    for _ in range(NEWTON_ITERATIONS):
        inverse = torch.addcmul(torch.ones_like(xi), step[:, None], xi, value=-1).clamp_min_(1e-3).reciprocal_()
        gradient = (measured_xi * inverse).sum(dim=1) - predicted_xi_sum + step * predicted_xi2
        curvature = predicted_xi2 + (measured_xi2 * inverse * inverse).sum(dim=1)
        previous, step = step, (step - gradient / curvature.clamp_min(1e-30)).clamp(0, 1)
        if float((step - previous).abs().max()) < NEWTON_TOLERANCE:
            break
    return step


NEWTON_ITERATIONS, NEWTON_TOLERANCE = 4, 1e-3  # at most; stop once no pattern's step length moves by more


def _real_inner(first: torch.Tensor, second: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Re(Σ conj(first)·second) over ``dims`` (complex dims), without forming the complex product."""
    real_dims = (*(d if d >= 0 else d - 1 for d in dims), -1)
    return (torch.view_as_real(first) * torch.view_as_real(second)).sum(dim=real_dims)


def _trimmed_mean(values: torch.Tensor, fraction: float = 0.1) -> torch.Tensor:
    count = values.numel()
    cut = int(count * fraction / 2)
    ordered = values.sort().values
    return ordered[cut : count - cut].mean() if count - 2 * cut > 0 else ordered.mean()


class _EpochUpdates:
    """The object's last epoch updates: how they correlate drives batch growth and momentum.

    Successive updates that point against each other (lag-1 correlation < 0) mean mini-batch
    noise has overtaken progress: the batch doubles. Updates that keep pointing the same way
    feed a heavy-ball velocity whose friction is the decay rate of that correlation with lag
    (the LSQML/PtychoShelves acceleration); when they disagree the velocity halves. When a
    whole-scan epoch finds the likelihood worse than the one before, ``restart`` drops the velocity
    (function-value restart, O'Donoghue & Candès 2015; step 6 of the module docstring).
    """

    MEMORY = 2

    def __init__(self, gain: float) -> None:
        self.gain = gain
        self.history: list[torch.Tensor] = []
        self.velocity: torch.Tensor | None = None

    def record(self, update: torch.Tensor) -> list[float]:
        """Add an epoch's update; return its correlations with the previous ones (lag 1, 2, …)."""
        norm = update.abs().square().mean().sqrt()
        if not torch.isfinite(norm) or norm == 0:
            return []
        self.history.append(update / norm)
        if len(self.history) > self.MEMORY + 1:
            self.history.pop(0)
        current = self.history[-1]
        return [float((previous.conj() * current).mean().real) for previous in self.history[-2::-1]]

    def restart(self) -> None:
        """Forget the velocity (the last extrapolation made the likelihood worse)."""
        if self.velocity is not None:
            self.velocity = torch.zeros_like(self.velocity)

    def extrapolation(self, update: torch.Tensor, correlations: list[float], weight: torch.Tensor) -> torch.Tensor | None:
        """The extra move to add after this epoch, or None."""
        if self.gain <= 0:
            return None
        if self.velocity is None:
            self.velocity = torch.zeros_like(update)
        if len(correlations) < self.MEMORY:
            return None
        if min(correlations) <= 0:
            self.velocity = self.velocity / 2
            return None
        # correlation ~ exp(-friction·lag): least-squares slope of log-correlation through the origin
        lags = np.arange(1, self.MEMORY + 1)
        slope = float(np.sum(lags * np.log(correlations)) / np.sum(lags**2))
        friction = 0.5 * max(-slope, 0.0)
        self.velocity = (1 - friction) * self.velocity + update
        return self.gain * weight * self.velocity


def choose_start(
    problem: RefinementProblem, network_object: np.ndarray | None, start: RefinementStart
) -> tuple[RefinementStart, dict[str, float]]:
    """Pick the start by likelihood (auto) so a poor network start can never hurt; returns the choice and NLLs.

    Each candidate's amplitude is first scaled so its predicted counts match the measured ones.
    """
    candidates: dict[RefinementStart, torch.Tensor] = {}
    scores: dict[str, float] = {}
    candidates[RefinementStart.FLAT], scores[RefinementStart.FLAT.value] = scaled_flat_start(problem)
    if network_object is not None and start is not RefinementStart.FLAT:
        candidates[RefinementStart.NETWORK], scores[RefinementStart.NETWORK.value] = scaled_start(problem, network_object)
    if start is RefinementStart.AUTO:
        chosen = min(candidates, key=lambda name: scores[name.value] if math.isfinite(scores[name.value]) else math.inf)
    else:
        chosen = start if start in candidates else RefinementStart.FLAT
    problem.canvas = candidates[chosen]
    return chosen, scores


def scaled_start(problem: RefinementProblem, obj: np.ndarray) -> tuple[torch.Tensor, float]:
    """A start object on the problem's canvas, its amplitude scaled so its predicted counts match the measured
    ones, and its dose-normalised Poisson NLL there: what starts are compared by."""
    canvas = problem._padded(obj)
    measured_total = float((problem.patterns * problem.valid).sum())
    batches = problem.scan_batches()
    # predictions kept while they fit the residual budget: scaling the canvas by s scales them by s², so the
    # scaled start's NLL needs no second pass over the scan (one forward model per start instead of two)
    keep = problem.count * problem.size * problem.size * 4 <= RESIDUAL_BUDGET_BYTES
    kept: list[torch.Tensor] = []
    predicted_total = 0.0
    for batch in batches:
        predicted = problem.expected(canvas, batch)
        predicted_total += float((predicted * problem.valid).sum())
        if keep:
            kept.append(predicted)
    intensity_scale = 1.0
    if predicted_total > 0 and math.isfinite(predicted_total):
        intensity_scale = measured_total / predicted_total
        canvas *= math.sqrt(intensity_scale)
    if not keep:
        return canvas, problem.nll(canvas)
    return canvas, problem.scan_nll((predicted * intensity_scale, batch) for predicted, batch in zip(kept, batches, strict=True))


def scaled_flat_start(problem: RefinementProblem) -> tuple[torch.Tensor, float]:
    """``scaled_start`` of a flat object, from one far field instead of one per pattern: the probe moves by Fourier
    shifts (``physics.shifted_probes``), phase ramps in the far field, so under a flat object every pattern's
    expected counts are the unshifted probe's (0.2 s less per reconstruction at N = 128 on 2 CPU threads)."""
    expected = physics.abs2(_far_field(problem.probe)).sum(dim=0) * problem.valid
    measured = (problem.patterns * problem.valid).sum(dim=0, dtype=torch.float64)
    predicted_total = problem.count * float(expected.sum(dtype=torch.float64))
    intensity_scale = 1.0
    if predicted_total > 0 and math.isfinite(predicted_total):
        intensity_scale = float(measured.sum()) / predicted_total
    expected = (expected * intensity_scale).double()
    per_pixel = problem.count * expected - measured * torch.log(expected + physics.EPSILON_COUNTS)
    nll = float((per_pixel * problem.valid).sum()) / problem.count / problem.mean_counts
    return torch.full(problem.canvas_shape, math.sqrt(intensity_scale), dtype=torch.complex64, device=problem.device), nll


RESIDUAL_BUDGET_BYTES = 256 * 2**20
COUNTED_CACHE_BUDGET_BYTES = 256 * 2**20
PROBE_CACHE_BUDGET_BYTES = 512 * 2**20


def max_batch_patterns(size_px: int, probe_modes: int = 1) -> int:
    """Largest batch refinement grows to: the whole scan while its residuals fit a 256 MiB budget."""
    return max(64, RESIDUAL_BUDGET_BYTES // (8 * probe_modes * size_px * size_px))


def iterate_refinement(
    problem: RefinementProblem,
    config: RefinementConfig,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[RefinementReport]:
    """Refine ``problem.canvas`` (and the probe on request) in place, yielding a report per epoch.

    Mini-batches start at ``config.batch_size`` (many cheap updates while far from the answer)
    and double whenever successive epoch updates disagree, up to the whole scan (or the memory
    cap), where the LSQML step and the momentum converge without mini-batch noise.
    """
    generator = torch.Generator().manual_seed(config.seed)
    updates = _EpochUpdates(config.momentum_gain)
    working_seconds = 0.0  # the loop's own time: what the caller does between epochs is not counted
    batch_size = min(config.batch_size, problem.count)
    largest_batch = min(problem.count, max(config.batch_size, max_batch_patterns(problem.size, problem.probe.shape[0])))
    previous_whole_scan_nll = math.inf  # NLL of the last epoch that ran as one batch: the state it started from
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.perf_counter()
        epoch_start_canvas = problem.canvas.clone()
        refine_probe = config.refine_probe and epoch >= config.probe_start_epoch
        illumination = problem.illumination.reshape(-1)
        preconditioner = torch.sqrt(illumination.square() + (config.preconditioner_damping * illumination.max()) ** 2)
        nll_sum = 0.0
        seen = 0
        stopped = False
        order = torch.randperm(problem.count, generator=generator).to(problem.device)
        for batch in order.split(batch_size):
            if should_stop is not None and should_stop():
                stopped = True
                break
            nll_sum += _minibatch_step(problem, batch, preconditioner, config.noise_model, refine_probe)
            seen += int(batch.numel())
        if refine_probe:
            # keep the probe's power (the intensity scale comes from the data); the object carries the rest
            power = float(physics.abs2(problem.probe).sum())
            problem.probe = problem.probe * math.sqrt(problem.probe_power / max(power, 1e-30))
            problem.probe_changed()
            problem.illumination = problem.compute_illumination()
        epoch_nll = nll_sum / max(seen, 1) / problem.mean_counts
        if not stopped:
            overshot = False
            if batch_size >= problem.count:  # one batch: its NLL is exactly that of the state the epoch began with
                overshot = epoch_nll > previous_whole_scan_nll
                previous_whole_scan_nll = epoch_nll
            update = problem.canvas - epoch_start_canvas
            correlations = updates.record(update)
            if correlations and correlations[0] < 0 and batch_size < largest_batch:
                batch_size = min(2 * batch_size, largest_batch)
            if overshot:
                updates.restart()
                problem.joint_step_length = True
            else:
                weight = problem.illumination / (problem.illumination + 0.1 * problem.illumination.max())
                extra = updates.extrapolation(update, correlations, weight)
                if extra is not None:
                    problem.canvas = problem.canvas + extra
        working_seconds += time.perf_counter() - epoch_started
        yield RefinementReport(
            epoch=epoch,
            epochs=config.epochs,
            nll=epoch_nll,
            seconds=working_seconds,
            batch_size=batch_size,
            stopped=stopped,
        )
        if stopped:
            return


CHUNK_PATTERNS = 128


def _minibatch_step(
    problem: RefinementProblem, batch: torch.Tensor, preconditioner: torch.Tensor, noise_model: NoiseModel, refine_probe: bool
) -> float:
    """One LSQML update of the canvas (and probe) from a mini-batch; returns the batch's summed NLL before it.

    The batch is worked through in chunks (cache-sized tensors): a first pass gathers the
    exit-wave residuals and the update directions, a second finds the step lengths. The update is
    applied once, after both, so the order of patterns within a batch does not matter: a batch of
    the whole scan is taken in slices, which need no gathers.
    """
    count = int(batch.numel())
    chunks: list[Batch] = (
        [slice(start, min(start + CHUNK_PATTERNS, count)) for start in range(0, count, CHUNK_PATTERNS)]
        if count == problem.count
        else list(batch.split(CHUNK_PATTERNS))
    )
    canvas_direction = torch.zeros(preconditioner.shape, dtype=torch.complex64, device=problem.device)
    probe_direction = torch.zeros_like(problem.probe)
    residuals: list[tuple[Batch, torch.Tensor | None, torch.Tensor, torch.Tensor]] = []
    batch_nll = 0.0
    for chunk in chunks:
        flat = problem.flat_indices(chunk)
        windows = problem.windows(problem.canvas, chunk)  # (B, N, N)
        probes = problem.probes_for(chunk)  # (B, P, N, N)
        chi, nll = _exit_wave_residual(problem, windows[:, None] * probes, chunk, noise_model)
        batch_nll += nll
        # Σ_p conj(P_p)·χ_p: the object's direction, and (with its window of the direction) its step length
        object_gradient = _mode_sum(problem.conjugate_probes_for(chunk, probes) * chi)
        physics.add_at(canvas_direction, flat.reshape(-1), object_gradient.reshape(-1))
        if refine_probe:
            probe_direction += physics.fourier_shift(windows.conj()[:, None] * chi, -problem.ramps[chunk]).sum(dim=0)
            residuals.append((chunk, windows, probes, chi))
        else:
            residuals.append((chunk, None, probes, object_gradient))  # the windows' memory goes back now
    canvas_direction = canvas_direction / preconditioner
    probe_direction = probe_direction / count  # the mean: in the probe's own frame

    sums: list[list[torch.Tensor]] = [[], [], [], [], []]  # a11, b1, a22, a12, b2 per pattern
    canvas_direction = canvas_direction.reshape(problem.canvas_shape)
    for chunk, kept_windows, probes, residual in residuals:
        direction = problem.windows(canvas_direction, chunk)
        if kept_windows is not None:  # refining the probe
            object_term = direction[:, None] * probes
            sums[0].append(_real_inner(object_term, object_term, (1, 2, 3)))
            sums[1].append(_real_inner(object_term, residual, (1, 2, 3)))
            probe_term = kept_windows[:, None] * physics.shifted_probes(probe_direction, problem.ramps[chunk])
            sums[2].append(_real_inner(probe_term, probe_term, (1, 2, 3)))
            sums[3].append(_real_inner(object_term, probe_term, (1, 2, 3)))
            sums[4].append(_real_inner(probe_term, residual, (1, 2, 3)))
        else:
            # ‖Σ_p d·P_p‖² terms without forming d·P_p: Σ|d|²·Σ_p|P_p|² and Re Σ conj(d)·Σ_p conj(P_p)χ_p
            intensity = problem.probe_intensities_for(chunk, probes)
            sums[0].append((physics.abs2(direction) * intensity).sum(dim=(-2, -1)))
            sums[1].append(_real_inner(direction, residual, (1, 2)))
    a11, b1 = torch.cat(sums[0]), torch.cat(sums[1])
    if refine_probe:
        a22, a12, b2 = torch.cat(sums[2]), torch.cat(sums[3]), torch.cat(sums[4])
        # per pattern, the real (α_O, α_P) that best explain χ by both directions; damped as in LSQML
        a11r = a11 + 0.1 * a11.mean() + 1e-20
        a22r = a22 + 0.1 * a22.mean() + 1e-20
        determinant = a11r * a22r - a12.square()
        alpha_object = ((a22r * b1 - a12 * b2) / determinant).clamp_min(0)
        alpha_probe = ((a11r * b2 - a12 * b1) / determinant).clamp_min(0)
        problem.probe = problem.probe + _trimmed_mean(alpha_probe) * probe_direction
        problem.probe_changed()
    else:
        alpha_object = (b1 / (a11 + 1e-20)).clamp_min(0)
    if problem.joint_step_length and count == problem.count and not refine_probe:
        # the one step that best explains all residuals together: never longer than the data support
        step_object = (b1.sum() / (a11.sum() + 1e-20)).clamp_min(0)
    else:
        step_object = _trimmed_mean(alpha_object)
    problem.canvas = problem.canvas + step_object * canvas_direction
    return batch_nll


def _mode_sum(values: torch.Tensor) -> torch.Tensor:
    """(B, P, N, N) summed over the probe modes; a view (no copy) for one mode."""
    return values[:, 0] if values.shape[1] == 1 else values.sum(dim=1)


def _exit_wave_residual(
    problem: RefinementProblem, exit_waves: torch.Tensor, chunk: Batch, noise_model: NoiseModel
) -> tuple[torch.Tensor, float]:
    """χ = F⁻¹(Ψ' − Ψ) for the exit waves (B, P, N, N) of a chunk, and the summed NLL of its patterns before the step."""
    far = _far_field(exit_waves)
    counted = problem.counted_pixels(chunk)
    if noise_model is NoiseModel.POISSON and 2 * counted.index.shape[1] <= problem.size**2:
        return _sparse_poisson_residual(problem, far, counted)
    predicted = _mode_sum(physics.abs2(far))
    predicted_valid_sum = (predicted if problem.all_valid else predicted * problem.valid).sum(dim=(-2, -1), dtype=torch.float64)
    predicted_flat = predicted.reshape(len(predicted), -1)
    predicted_counted = torch.gather(predicted_flat, 1, counted.index)
    nll = _chunk_nll(predicted_valid_sum, predicted_counted, counted)
    if noise_model is NoiseModel.POISSON:
        lengths = _poisson_step_lengths(predicted_valid_sum, predicted_counted, counted)
        # factor −a·ξ, ξ = 1 − I/Î: −a on every valid pixel, −a·ξ where there are counts (0 on masked ones)
        factor = (-lengths[:, None, None] * problem.valid).reshape(predicted_flat.shape)
        xi = 1 - counted.counts / (predicted_counted + physics.EPSILON_COUNTS)
        factor.scatter_(1, counted.index, xi.mul_(-lengths[:, None]))
        factor = factor.reshape(predicted.shape)
    else:
        measured = problem.patterns[chunk]
        factor = (torch.sqrt(measured / (predicted + physics.EPSILON_COUNTS)) - 1) * problem.valid
    # scale the complex far field by a real factor in place, on its real view: a complex × real product
    # would first copy the factor to complex
    torch.view_as_real(far).mul_(factor[:, None, :, :, None])
    return torch.fft.ifft2(far, norm="ortho"), nll


def _sparse_poisson_residual(problem: RefinementProblem, far: torch.Tensor, counted: CountedPixels) -> tuple[torch.Tensor, float]:
    """The Poisson residual where few pixels hold counts: Ψ' − Ψ = −a·ξ·Ψ is −a·Ψ wherever I = 0 (ξ = 1), so the
    far field is scaled in place by −a and only the counted pixels are set apart, from their gathered values.

    The dense path forms Î and the factor on every pixel (three full-size passes more); at N = 128 and 10⁵
    photons this one takes about a fifth off a whole-scan step on 2 CPU threads (docs/physics.md).
    """
    count, modes = far.shape[:2]
    far_flat = far.view(count, modes, -1)  # in place below: scaling it scales far
    index = counted.index[:, None, :].expand(-1, modes, -1)
    far_counted = torch.gather(far_flat, 2, index)
    predicted_counted = _mode_sum(physics.abs2(far_counted))
    predicted_valid_sum = _squared_norms(far_flat)
    if not problem.all_valid:
        predicted_valid_sum -= physics.abs2(far_flat[:, :, problem.masked_index]).sum(dim=(1, 2), dtype=torch.float64)
    nll = _chunk_nll(predicted_valid_sum, predicted_counted, counted)
    lengths = _poisson_step_lengths(predicted_valid_sum, predicted_counted, counted)
    xi = 1 - counted.counts / (predicted_counted + physics.EPSILON_COUNTS)
    torch.view_as_real(far).mul_(-lengths[:, None, None, None, None])
    if not problem.all_valid:
        far_flat.index_fill_(2, problem.masked_index, 0)
    far_flat.scatter_(2, index, far_counted * xi.mul_(-lengths[:, None])[:, None, :])
    return torch.fft.ifft2(far, norm="ortho"), nll


def _chunk_nll(predicted_valid_sum: torch.Tensor, predicted_counted: torch.Tensor, counted: CountedPixels) -> float:
    """Σ_valid (Î − I·log Î) over a chunk: the I terms on the counted pixels only."""
    measured_log = (counted.counts * torch.log(predicted_counted + physics.EPSILON_COUNTS)).sum(dtype=torch.float64)
    return float(predicted_valid_sum.sum()) - float(measured_log)


def _squared_norms(values: torch.Tensor) -> torch.Tensor:
    """Σ|z|² over all but the first axis of complex ``values``: float32 sums over 64 rows of each item, then a float64
    sum of the rows (error ~3·10⁻⁸ of the sum; one float32 dot over an N = 128 pattern is off by ~10⁻⁶).

    On the CPU at full float32 matmul precision the row sums are batched dot products, which read the values once
    (a whole-scan N = 128 step 8 % faster than squaring them first); TF32 or bf16 matmul settings
    (``torch.set_float32_matmul_precision``) would make those 10⁻⁵–10⁻³ wrong, so then, and off the CPU, they are not.
    """
    rows = math.gcd(2 * values[0].numel(), 64)
    real = torch.view_as_real(values).reshape(len(values) * rows, 1, -1)
    if values.device.type == "cpu" and torch.get_float32_matmul_precision() == "highest":
        row_sums = torch.bmm(real, real.transpose(1, 2))
    else:
        row_sums = real.square().sum(dim=2)
    return row_sums.reshape(len(values), rows).sum(dim=1, dtype=torch.float64)


# ------------------------------------------------------------------- half resolution, first
# The central N/2 × N/2 detector pixels see the object at twice the pixel size: an epoch there costs a quarter,
# and the object's large features (what full-resolution epochs are slowest to settle) converge in it. Measured on
# N = 128 lines / circuit (network start, 10⁵ photons): 40 half- + 30 full-resolution epochs reach phase SSIM
# 0.904 / 0.735 in the time 40 full ones reach 0.879 / 0.699 (80 full: 0.907 / 0.739); docs/physics.md.


def half_resolution_scan(scan: Scan) -> Scan:
    """The scan seen through the detector's central half: patterns (and mask) cropped to N/2 and the probe band-limited
    to the same frequencies (``data.centre_crop``, what a reader's crop does), positions and the object grid halved.
    Pixel j of its object is pixel 2j of the scan's.

    For an exit wave band-limited to that half, its far field on N/2 pixels is the full one's centre
    (Parseval fixes the scale; refinement takes the intensity scale from the counts anyway).
    """
    patterns, probe, bad_pixels = centre_crop(scan.patterns, scan.probe, scan.bad_pixels, scan.size_px // 2)
    height, width = scan.object_shape
    # built from a validated scan, so not validated again: N/2 = 16 (from N = 32) is below the sizes the network
    # and the file formats take, which refinement does not mind
    half = object.__new__(Scan)
    half.patterns = np.ascontiguousarray(patterns)
    half.positions_yx_px = scan.positions_yx_px / 2
    half.probe = probe.astype(np.complex64)
    half.object_shape = (height // 2 + 1, width // 2 + 1)
    half.bad_pixels = bad_pixels
    half.object_guess = half.ground_truth = None
    half.metadata = {}
    return half


def every_other_pixel(obj: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The object's even pixels (2j, 2k) on a half-resolution grid of ``shape``; the last row/column repeats
    where the grid reaches past the object."""
    rows = (2 * torch.arange(shape[0], device=obj.device)).clamp_max(obj.shape[0] - 1)
    columns = (2 * torch.arange(shape[1], device=obj.device)).clamp_max(obj.shape[1] - 1)
    return obj[rows][:, columns]


def upsampled(half: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A half-resolution object on the full grid of ``shape`` (pixel i at half-resolution i/2), bilinear."""
    channels = torch.view_as_real(half).permute(2, 0, 1)[None]
    size = (2 * half.shape[0] - 1, 2 * half.shape[1] - 1)
    full = torch.nn.functional.interpolate(channels, size=size, mode="bilinear", align_corners=True)
    return torch.view_as_complex(full[0].permute(1, 2, 0).contiguous())[: shape[0], : shape[1]]


def _half_resolution_stage(
    problem: RefinementProblem,
    scan: Scan,
    config: RefinementConfig,
    epochs: int,
    start_nll: float,
    history: list[RefinementReport],
    should_stop: Callable[[], bool] | None,
) -> Generator[RefinementReport, None, float]:
    """Refine at half resolution from ``problem``'s start, then add what it changed (upsampled) to that start: the
    start's fine detail stays. The result replaces the start only if the full scan's likelihood prefers it.
    Reports (``half_resolution``) go to ``history``; returns the full-resolution NLL of the state kept.

    With ``refine_probe`` the half-resolution probe is refined too and then dropped (the full-resolution epochs
    start from the scan's probe): with the probe held at a wrong guess, the guess's errors went into the object
    (real Siemens star: agreement with the LSQML reference, phase SSIM 0.605 → 0.483; refined too: 0.604)."""
    start = problem.cropped(problem.canvas).clone()

    def on_full_grid(half_object: torch.Tensor) -> np.ndarray:
        return (start + upsampled(half_object - half_start, problem.object_shape)).cpu().numpy()

    half_scan = half_resolution_scan(scan)
    half_start = every_other_pixel(start, half_scan.object_shape)
    half = RefinementProblem(half_scan, half_start.cpu().numpy(), problem.device)
    total = epochs + config.epochs
    for report in iterate_refinement(half, replace(config, epochs=epochs), should_stop):
        report.epochs, report.half_resolution = total, True
        report.snapshot = lambda: on_full_grid(half.cropped(half.canvas))
        history.append(report)
        yield report
    for report in history:  # a snapshot is for while the stage runs: the result's history must not keep it alive
        report.snapshot = None
    candidate, nll = scaled_start(problem, on_full_grid(half.cropped(half.canvas)))
    if not nll < start_nll:  # also NaN: the half-resolution epochs did not help the full scan's likelihood
        return start_nll
    problem.canvas = candidate
    return nll


CONVERGENCE_WINDOW_EPOCHS = 5  # the stop tolerance compares the NLL 5 full-resolution epochs apart, every 5
CONVERGENCE_FIRST_CHECK_EPOCH = 10  # epochs from the 10th (on the measured scans the batch is the whole scan by then)


class ConvergenceCheck:
    """``RefinementConfig.stop_tolerance``: whether the full-resolution epochs have stopped paying.

    Converged when the last ``CONVERGENCE_WINDOW_EPOCHS`` epochs lowered the NLL by less than ``tolerance`` × what
    is left above a perfect fit (``floor``: ``physics.poisson_nll_floor`` for the Poisson model, 0 for the
    Gaussian one, whose loss is ≥ 0). Relative to what is left, so it does not depend on the dose or the scan's
    size. Checked every window from epoch ``CONVERGENCE_FIRST_CHECK_EPOCH`` on.
    """

    def __init__(self, tolerance: float, floor: float) -> None:
        self.tolerance, self.floor = tolerance, floor
        self.nll: list[float] = []

    def converged(self, nll: float) -> bool:
        """Record one full-resolution epoch's NLL (that of the state it started from); True once converged."""
        self.nll.append(nll)
        epoch = len(self.nll) - 1  # epochs completed before the state this NLL scores
        if epoch < CONVERGENCE_FIRST_CHECK_EPOCH or epoch % CONVERGENCE_WINDOW_EPOCHS:
            return False
        earlier, now = self.nll[-1 - CONVERGENCE_WINDOW_EPOCHS], self.nll[-1]
        return math.isfinite(now) and earlier - now <= self.tolerance * max(now - self.floor, 0.0)


def convergence_check(scan: Scan, config: RefinementConfig, nll_floor: float | None) -> ConvergenceCheck | None:
    """The check ``config.stop_tolerance`` asks for (None when off); ``nll_floor``: the scan's Poisson NLL floor
    when the caller has it already (a pass over every pattern, 0.09 s at N = 128 × 576)."""
    if config.stop_tolerance <= 0:
        return None
    if config.noise_model is not NoiseModel.POISSON:
        nll_floor = 0.0
    elif nll_floor is None:
        nll_floor = physics.poisson_nll_floor(scan.patterns, scan.bad_pixels)
    return ConvergenceCheck(config.stop_tolerance, nll_floor)


def refine_steps(
    scan: Scan,
    network_object: np.ndarray | None = None,
    config: RefinementConfig | None = None,
    *,
    device: DeviceLike = "cpu",
    should_stop: Callable[[], bool] | None = None,
    nll_floor: float | None = None,
) -> Generator[RefinementReport, None, RefinementResult]:
    """Refinement as a generator: a report per epoch (``report.snapshot()`` gives the object so far),
    and the :class:`RefinementResult` as its return value. Callers that yield to a GUI between epochs
    (the ptychodus plugin) drive this one; ``refine`` drives it to the end.

    The result is the state with the lowest Poisson NLL among the epochs' starting states and the
    final one (the final one unless refinement went the wrong way); after Stop, the state reached.

    ``device``: the ``ExecutionConfig`` (or ``engine.device.DeviceSpec``) of the run, so refinement
    runs on the device training and the network use (``cuda:1`` when GPU 1 was chosen), or a
    ``torch.device``/device string taken as it is. ``nll_floor``: the scan's ``physics.poisson_nll_floor``, where
    the caller has computed it (only ``stop_tolerance`` needs it).
    """
    config = config or RefinementConfig()
    started = time.perf_counter()
    problem = RefinementProblem(scan, np.ones(scan.object_shape, np.complex64), torch_device(device))
    chosen, start_scores = choose_start(problem, network_object, config.start)
    best_nll = start_scores[chosen.value]
    history: list[RefinementReport] = []
    half_epochs = config.half_resolution_epochs_for(scan.size_px)
    if half_epochs:
        best_nll = yield from _half_resolution_stage(problem, scan, config, half_epochs, best_nll, history, should_stop)
    best = (problem.canvas.clone(), problem.probe.clone(), len(history))
    before = best
    half_seconds = history[-1].seconds if history else 0.0
    stopped_early = bool(history and history[-1].stopped)
    convergence, converged = convergence_check(scan, config, nll_floor), False
    for report in () if stopped_early else iterate_refinement(problem, config, should_stop):
        report.epoch += half_epochs
        report.epochs += half_epochs
        report.seconds += half_seconds
        history.append(report)
        report.snapshot = problem.current_object
        yield report
        # an epoch's NLL is gathered before each mini-batch's update: it scores the state it started from
        if math.isfinite(report.nll) and report.nll < best_nll:
            best_nll, best = report.nll, before
        before = (problem.canvas.clone(), problem.probe.clone(), report.epoch)
        last = report.stopped or report.epoch == report.epochs  # a stopped epoch's NLL is of part of the scan
        if convergence is not None and not last and convergence.converged(report.nll):
            converged = True
            break  # the state after this epoch is the final one, as after the last of ``epochs``
    stopped = bool(history and history[-1].stopped)
    if history and not stopped_early and (stopped or problem.nll(problem.canvas) <= best_nll):
        best = before
    canvas, probe, best_epoch = best
    if not torch.equal(probe, problem.probe):  # a refined probe: the illumination of the one returned
        problem.probe = probe
        problem.probe_changed()
        problem.illumination = problem.compute_illumination()
    return RefinementResult(
        object=problem.cropped(canvas).cpu().numpy().astype(np.complex64),
        probe=(probe / math.sqrt(problem.scale)).cpu().numpy().astype(np.complex64),
        illuminated=problem.illuminated(),
        start=chosen,
        start_nll=start_scores,
        history=history,
        best_epoch=best_epoch,
        seconds=time.perf_counter() - started,
        stopped=stopped,
        converged=converged,
        illumination=(problem.cropped(problem.illumination) / problem.scale).cpu().numpy(),
    )


def refine(
    scan: Scan,
    network_object: np.ndarray | None = None,
    config: RefinementConfig | None = None,
    *,
    device: DeviceLike = "cpu",
    on_epoch: Callable[[RefinementReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RefinementResult:
    """Refine a scan's object from the network's object (or flat, as the data decide); see ``refine_steps``."""
    steps = refine_steps(scan, network_object, config, device=device, should_stop=should_stop)
    while True:
        try:
            report = next(steps)
        except StopIteration as finished:
            result: RefinementResult = finished.value
            return result
        if on_epoch is not None:
            on_epoch(report)


def filled_start(obj: np.ndarray) -> np.ndarray:
    """The network's object with unlit (zero) and non-finite pixels set to its mean amplitude, at the
    phase of its mean complex value: the object's global phase is arbitrary, and a phase-0 fill would
    leave a step at the lit edge that no pattern can remove (as ``physics.stitch`` does with a fill)."""
    obj = np.asarray(obj, np.complex64)
    usable = np.isfinite(obj) & (np.abs(obj) > 0)
    if not usable.any():
        return np.ones(obj.shape, np.complex64)
    values = obj[usable]
    background = np.abs(values).mean() * np.exp(1j * np.angle(values.sum()))
    return np.where(usable, obj, background).astype(np.complex64)
