"""Scans in memory and on disk, validated once at the door (SPEC §4, §9).

Everything that reaches the engine is a :class:`Scan` in the engine's conventions; every reader
converts to it and every problem with the input becomes a :class:`ScanError` that names what is
wrong and how to fix it.
"""

from __future__ import annotations

import bz2
import contextlib
import io
import json
import math
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptychodus_pinn.config import SUPPORTED_PATTERN_SIZES_PX


class ScanError(ValueError):
    """The scan cannot be used as given; the message says why and what to do."""


@dataclass
class Scan:
    """One ptychographic scan in the engine's conventions.

    ``patterns``: (M, N, N) float32 counts, zero frequency at (N//2, N//2).
    ``positions_yx_px``: (M, 2) float64 probe centres in object pixels (row y, column x).
    ``probe``: (P, N, N) complex64 incoherent modes.
    ``object_shape``: (H, W) of the object grid the positions refer to.
    ``bad_pixels``: (N, N) bool, True where the detector pixel is bad (excluded from the loss).
    """

    patterns: np.ndarray
    positions_yx_px: np.ndarray
    probe: np.ndarray
    object_shape: tuple[int, int]
    bad_pixels: np.ndarray | None = None
    object_guess: np.ndarray | None = None
    ground_truth: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.patterns = _validated_patterns(self.patterns)
        count, size = self.patterns.shape[0], self.patterns.shape[-1]
        self.positions_yx_px = _validated_positions(self.positions_yx_px, count)
        self.probe = _validated_probe(self.probe, size)
        self.object_shape = (int(self.object_shape[0]), int(self.object_shape[1]))
        if self.bad_pixels is not None:
            mask = np.asarray(self.bad_pixels).astype(bool)
            if mask.shape != (size, size):
                raise ScanError(
                    f"bad-pixel mask has shape {mask.shape} but patterns are {size}x{size}; "
                    "give a (N, N) boolean mask matching the detector"
                )
            self.bad_pixels = mask
        for name in ("object_guess", "ground_truth"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value).astype(np.complex64)
                if value.shape != self.object_shape:
                    raise ScanError(f"{name} has shape {value.shape} but the object grid is {self.object_shape}")
                setattr(self, name, value)
        _check_positions_on_grid(self.positions_yx_px, size, self.object_shape)

    @property
    def count(self) -> int:
        return int(self.patterns.shape[0])

    @property
    def size_px(self) -> int:
        return int(self.patterns.shape[-1])

    @property
    def mean_total_counts(self) -> float:
        return float(self.patterns.sum(dtype=np.float64) / self.count)

    def subset(self, indices: np.ndarray) -> Scan:
        """The same scan restricted to some patterns (same object grid and probe)."""
        return Scan(
            patterns=self.patterns[indices],
            positions_yx_px=self.positions_yx_px[indices],
            probe=self.probe,
            object_shape=self.object_shape,
            bad_pixels=self.bad_pixels,
            object_guess=self.object_guess,
            ground_truth=self.ground_truth,
            metadata=dict(self.metadata),
        )


def _validated_patterns(patterns: Any) -> np.ndarray:
    array = np.asarray(patterns)
    if array.ndim != 3:
        raise ScanError(f"patterns must be a (M, N, N) stack of diffraction counts, got shape {array.shape}")
    count, rows, cols = array.shape
    if count == 0:
        raise ScanError("the scan is empty: it holds no diffraction patterns")
    if rows != cols:
        raise ScanError(f"patterns must be square, got {rows}x{cols}; crop them to a square N x N")
    if rows not in SUPPORTED_PATTERN_SIZES_PX:
        raise ScanError(
            f"pattern size N={rows} is not supported; use one of {SUPPORTED_PATTERN_SIZES_PX} "
            "(crop around the zero frequency or bin the detector to fit)"
        )
    if not (np.issubdtype(array.dtype, np.number) and not np.iscomplexobj(array)):
        raise ScanError(f"patterns must be real counts, got dtype {array.dtype}")
    # float32 copy also materialises memory-mapped and integer detector data
    array = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(np.count_nonzero(~finite.all(axis=(1, 2))))
        raise ScanError(f"{bad} pattern(s) contain NaN or infinite counts; remove them or mark those pixels bad")
    if (array < 0).any():
        bad = int(np.count_nonzero((array < 0).any(axis=(1, 2))))
        raise ScanError(
            f"{bad} pattern(s) contain negative counts; subtract the background so that counts are >= 0 "
            "(clip negatives to 0) before reconstructing"
        )
    totals = array.sum(axis=(1, 2))
    if not (totals > 0).any():
        raise ScanError("every pattern is all zero: the scan holds no photons")
    return array


def _validated_positions(positions: Any, count: int) -> np.ndarray:
    array = np.asarray(positions, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ScanError(f"positions must be (M, 2) as (y, x) in object pixels, got shape {array.shape}")
    if array.shape[0] != count:
        raise ScanError(f"the scan has {count} patterns but {array.shape[0]} positions; they must match one to one")
    if not np.isfinite(array).all():
        raise ScanError("positions contain NaN or infinite values")
    return array


def _validated_probe(probe: Any, size: int) -> np.ndarray:
    array = np.asarray(probe)
    if array.ndim == 2:
        array = array[None]
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or array.shape[-2:] != (size, size):
        raise ScanError(
            f"probe has shape {np.asarray(probe).shape} but patterns are {size}x{size}; "
            "give a (N, N) or (modes, N, N) probe sampled like the patterns"
        )
    array = array.astype(np.complex64)
    power = float(np.sum(np.abs(array) ** 2))
    if not math.isfinite(power):
        raise ScanError("the probe contains NaN or infinite values")
    if power == 0:
        raise ScanError("the probe is zero everywhere; give a probe guess with non-zero values")
    return array


def _check_positions_on_grid(positions: np.ndarray, size: int, object_shape: tuple[int, int]) -> None:
    """Every probe centre must lie on the object grid; patches may hang over its edge."""
    height, width = object_shape
    if height < 1 or width < 1:
        raise ScanError(f"object grid {object_shape} is empty")
    off = (positions[:, 0] < 0) | (positions[:, 0] > height - 1) | (positions[:, 1] < 0) | (positions[:, 1] > width - 1)
    if off.any():
        first = int(np.flatnonzero(off)[0])
        raise ScanError(
            f"{int(off.sum())} probe position(s) lie off the {height}x{width} object grid "
            f"(first: #{first} at y={positions[first, 0]:.1f}, x={positions[first, 1]:.1f} px); "
            "positions are probe centres in object pixels: shift them or enlarge the object grid"
        )


def object_shape_for(positions_yx_px: np.ndarray, size: int, margin_px: int = 0) -> tuple[int, int]:
    """Smallest grid holding every patch of a scan whose positions start at N//2 + margin."""
    extent = np.ceil(positions_yx_px.max(axis=0)).astype(int) + size - size // 2 + margin_px
    return int(extent[0]), int(extent[1])


def centred_on_grid(positions_yx_px: np.ndarray, size: int, margin_px: int) -> np.ndarray:
    """Shift positions so the first patch edge sits ``margin_px`` inside a fresh object grid."""
    return positions_yx_px - positions_yx_px.min(axis=0) + size // 2 + margin_px


# ---------------------------------------------------------------------------------------------- readers

PTYCHODUS_KEYS = ("diff3d", "xcoords", "ycoords", "probeGuess")
# our files say where the probe's centre pixel is; ptychodus's exports put pixel (N-1)/2 at a position
POSITION_CONVENTION = "probe pixel N//2 at position"


def ptychodus_position_offset_px(size: int) -> float:
    """What to add to ptychodus object-pixel positions to put our probe pixel N//2 on them (+0.5 for even N)."""
    return size // 2 - (size - 1) / 2


@dataclass(frozen=True)
class ReadOptions:
    """How to interpret files that do not follow the engine's conventions.

    ``dc_at_corner``: patterns have zero frequency at pixel (0, 0) (fftshift them).
    ``margin_px``: when positions are not on a grid (e.g. centred on zero), shift them onto a new
    grid with this margin around the scan. ``crop_px``: centre-crop patterns (and the probe's far field) to
    this size; real-space pixels grow by N/crop, so positions are rescaled onto a new grid.
    ``max_patterns``: keep only the first patterns (quick tests).
    """

    dc_at_corner: bool | None = None
    margin_px: int = 16
    crop_px: int | None = None
    max_patterns: int | None = None


def load_scan(path: str | os.PathLike[str], options: ReadOptions | None = None) -> Scan:
    """Read a scan: ptychodus training-data ``.npz``, our ``.npz``/``.h5``, CXI, or a tike-style ``.npz(.bz2)``."""
    options = options or ReadOptions()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"scan file not found: {path}")
    if path.is_dir():
        raise ScanError(f"{path} is a directory; give a scan file (.npz, .h5, .cxi)")
    suffixes = "".join(path.suffixes[-2:]).lower()
    try:
        if suffixes.endswith((".h5", ".hdf5", ".cxi")):
            arrays = _read_hdf5(path)
        elif suffixes.endswith(".bz2"):
            with bz2.open(path) as stream:
                arrays = _read_npz(io.BytesIO(stream.read()))
        else:
            arrays = _read_npz(path)
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as error:
        if isinstance(error, (ScanError, FileNotFoundError)):
            raise
        raise ScanError(f"cannot read {path}: {error}; is it a complete .npz/.h5 scan file?") from error
    return _scan_from_arrays(arrays, options, source=str(path))


def _read_npz(source: Any) -> dict[str, Any]:
    with np.load(source, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def _read_hdf5(path: Path) -> dict[str, Any]:
    import h5py

    arrays: dict[str, Any] = {}
    with h5py.File(path, "r") as handle:
        if "entry_1" in handle:
            entry = handle["entry_1"]
            arrays["cxi_data"] = np.asarray(entry["instrument_1/detector_1/data"])
            arrays["cxi_translation"] = np.asarray(entry["sample_1/geometry_1/translation"])
            if "instrument_1/detector_1/probe" in entry:
                arrays["probeGuess"] = np.asarray(entry["instrument_1/detector_1/probe"])
            elif "probe" in handle:
                arrays["probeGuess"] = np.asarray(handle["probe"])
            for key in ("x_pixel_size_m", "y_pixel_size_m"):
                if key in handle.attrs:
                    arrays[key] = handle.attrs[key]
            return arrays
        for key, dataset in handle.items():
            if hasattr(dataset, "shape"):
                arrays[key] = np.asarray(dataset)
        if "metadata" in handle.attrs:
            arrays["metadata"] = np.asarray(handle.attrs["metadata"])
    return arrays


def _scan_from_arrays(arrays: dict[str, Any], options: ReadOptions, source: str) -> Scan:
    """Interpret a file's arrays; malformed ones (wrong ranks, empty, mismatched) become ScanError."""
    try:
        return _parse_arrays(arrays, options, source)
    except ScanError:
        raise
    except (ValueError, IndexError, TypeError, KeyError) as error:
        raise ScanError(
            f"{source}: the arrays do not form a scan ({error}); expected counts (M, N, N), M positions per axis "
            "and a (N, N) or (modes, N, N) probe"
        ) from error


def _parse_arrays(arrays: dict[str, Any], options: ReadOptions, source: str) -> Scan:
    metadata: dict[str, Any] = {"source": source}
    if "metadata" in arrays:
        with contextlib.suppress(ValueError, TypeError):
            metadata.update(json.loads(str(np.asarray(arrays["metadata"]).item())))
    object_guess = arrays.get("objectGuess")
    ground_truth = arrays.get("ground_truth")
    bad_pixels = arrays.get("bad_pixels")
    if all(key in arrays for key in PTYCHODUS_KEYS):
        patterns = np.asarray(arrays["diff3d"])
        positions = np.stack([np.asarray(arrays["ycoords"], float).ravel(), np.asarray(arrays["xcoords"], float).ravel()], axis=1)
        probe = np.asarray(arrays["probeGuess"])
        dc_at_corner = bool(options.dc_at_corner)
        on_grid = object_guess is not None
    elif {"patterns", "probe", "probe_position_x_px", "probe_position_y_px"} <= set(arrays):
        # ptychodus's HDF5 training-data file (save_training_data)
        patterns = np.asarray(arrays["patterns"])
        positions = np.stack(
            [np.asarray(arrays["probe_position_y_px"], float), np.asarray(arrays["probe_position_x_px"], float)], axis=1
        )
        probe = np.asarray(arrays["probe"])
        object_guess = arrays.get("object")
        if object_guess is not None:
            object_guess = np.asarray(object_guess).reshape(-1, *np.shape(object_guess)[-2:])[0]
        dc_at_corner = bool(options.dc_at_corner)
        on_grid = object_guess is not None
    elif {"data", "scan", "probe"} <= set(arrays):
        # tike-style: (1, M, N, N) counts with DC at the corner, (1, M, 2) positions centred on zero
        patterns = np.asarray(arrays["data"]).reshape(-1, *np.asarray(arrays["data"]).shape[-2:])
        positions = np.asarray(arrays["scan"], float).reshape(-1, 2)
        probe = np.asarray(arrays["probe"]).reshape(-1, *np.asarray(arrays["probe"]).shape[-2:])
        dc_at_corner = True if options.dc_at_corner is None else options.dc_at_corner
        on_grid = False
        metadata["format"] = "tike"
    elif "cxi_data" in arrays:
        patterns = np.asarray(arrays["cxi_data"])
        translation = np.asarray(arrays["cxi_translation"], float)
        if "probeGuess" not in arrays:
            raise ScanError(f"{source}: the CXI file holds no probe; add entry_1/instrument_1/detector_1/probe")
        probe = np.asarray(arrays["probeGuess"])
        pixel_size = float(arrays.get("x_pixel_size_m", 1.0))
        positions = translation[:, [1, 0]] / pixel_size
        dc_at_corner = bool(options.dc_at_corner)
        on_grid = False
        metadata["format"] = "cxi"
    else:
        raise ScanError(
            f"{source}: unrecognised scan layout (keys {sorted(arrays)}); expected ptychodus training data "
            f"({', '.join(PTYCHODUS_KEYS)}), a tike-style file (data, scan, probe) or CXI"
        )
    patterns = np.asarray(patterns)
    if patterns.ndim != 3:
        raise ScanError(f"{source}: patterns must be (M, N, N), got shape {patterns.shape}")
    if options.max_patterns is not None:
        patterns = patterns[: options.max_patterns]
        positions = positions[: options.max_patterns]
    if dc_at_corner:
        patterns = np.fft.fftshift(patterns, axes=(-2, -1))
        if bad_pixels is not None:
            bad_pixels = np.fft.fftshift(bad_pixels)
    if options.crop_px is not None and options.crop_px != patterns.shape[-1]:
        # a smaller far-field window means coarser real-space pixels: positions shrink by the same factor
        positions = positions * (options.crop_px / patterns.shape[-1])
        patterns, probe, bad_pixels = _centre_crop(patterns, probe, bad_pixels, options.crop_px)
        on_grid = False
    size = patterns.shape[-1]
    from_ptychodus = metadata.get("position_convention") != POSITION_CONVENTION and "format" not in metadata
    if from_ptychodus:
        positions = positions + ptychodus_position_offset_px(size)
        metadata["position_convention"] = POSITION_CONVENTION
    if not on_grid:
        positions = centred_on_grid(positions, size, options.margin_px)
        object_shape = object_shape_for(positions, size, options.margin_px)
        object_guess = None
        ground_truth = None if ground_truth is None or np.shape(ground_truth) != object_shape else ground_truth
    else:
        object_shape = (int(np.shape(object_guess)[0]), int(np.shape(object_guess)[1]))  # type: ignore[arg-type]
    scan_index = arrays.get("scan_index")
    if scan_index is not None:
        metadata["scan_index_count"] = int(np.unique(scan_index).size)
    return Scan(
        patterns=patterns,
        positions_yx_px=positions,
        probe=probe,
        object_shape=object_shape,
        bad_pixels=bad_pixels,
        object_guess=object_guess,
        ground_truth=ground_truth,
        metadata=metadata,
    )


def _centre_crop(
    patterns: np.ndarray, probe: np.ndarray, bad_pixels: np.ndarray | None, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Crop detector frames around zero frequency and resample the probe to the new real-space pixel.

    Cropping the far field by a factor coarsens real-space pixels by the same factor, so the probe
    is cropped in its own far field too (the only consistent way to keep both on one grid).
    """
    full = patterns.shape[-1]
    if size > full:
        raise ScanError(f"cannot crop {full}-px patterns to {size} px")
    start = full // 2 - size // 2
    window = slice(start, start + size)
    patterns = patterns[..., window, window]
    probe = np.asarray(probe)
    if probe.shape[-1] != size:
        spectrum = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(probe, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
        spectrum = spectrum[..., window, window]
        probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(spectrum, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    if bad_pixels is not None:
        bad_pixels = np.asarray(bad_pixels)[window, window]
    return patterns, probe, bad_pixels


def save_scan(scan: Scan, path: str | os.PathLike[str]) -> Path:
    """Write a scan as ptychodus training-data ``.npz`` (plus ground truth and metadata) or ``.h5``, atomically."""
    path = Path(path)
    arrays: dict[str, Any] = {
        "diff3d": scan.patterns,
        "xcoords": scan.positions_yx_px[:, 1],
        "ycoords": scan.positions_yx_px[:, 0],
        "probeGuess": scan.probe if scan.probe.shape[0] > 1 else scan.probe[0],
        "objectGuess": scan.object_guess if scan.object_guess is not None else np.ones(scan.object_shape, np.complex64),
        "scan_index": np.zeros(scan.count, dtype=np.int64),
        "metadata": np.asarray(json.dumps({**scan.metadata, "position_convention": POSITION_CONVENTION}, default=str)),
    }
    if scan.bad_pixels is not None:
        arrays["bad_pixels"] = scan.bad_pixels
    if scan.ground_truth is not None:
        arrays["ground_truth"] = scan.ground_truth
    suffix = path.suffix.lower()

    def write(temporary: Path) -> None:
        if suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(temporary, "w") as handle:
                for key, value in arrays.items():
                    if key == "metadata":
                        handle.attrs["metadata"] = str(value)
                    else:
                        handle.create_dataset(key, data=value)
        else:
            with open(temporary, "wb") as stream:
                np.savez(stream, **arrays)

    atomic_write(path, write)
    return path


def atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder and rename it over ``path``.

    A failure (full disk, Ctrl-C) leaves any previous file untouched and no partial file behind.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.exists():
        raise FileNotFoundError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"cannot write to {folder}: the folder is read-only; choose another output location")
    handle, temporary_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(handle)
    temporary = Path(temporary_name)
    try:
        write(temporary)
        # mkstemp makes the file private (0600); give it the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
