"""Scans in memory and on disk, validated once at the door (SPEC §4, §9).

Everything that reaches the engine is a :class:`Scan` in the engine's conventions; every reader
converts to it and every problem with the input becomes a :class:`ScanError` that names what is
wrong and how to fix it.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import io
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptychodus_pinn.engine.config import SUPPORTED_PATTERN_SIZES_PX, ConfigError

logger = logging.getLogger(__name__)


class ScanError(ValueError):
    """The scan cannot be used as given; the message says why and what to do."""


GIB = float(1 << 30)
# the largest object grid side accepted (a scan whose positions span more is almost surely in the wrong units)
MAX_OBJECT_SIDE_PX = 1 << 16
# bytes per object-grid pixel that stitching holds at once (complex object, weights, sums, mask, copies)
OBJECT_BYTES_PER_PIXEL = 48
MAX_MARGIN_PX = 4096


def available_memory_bytes() -> int | None:
    """Memory this process can still take: ``MemAvailable`` lowered by a cgroup limit; None when unknown."""
    available: int | None = None
    try:
        with open("/proc/meminfo", encoding="ascii") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        available = None
    if available is None:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            available = int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            room = int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            available = room if available is None else min(available, room)
    return available


def _describe_bytes(count: float) -> str:
    return f"{count / GIB:.1f} GiB" if count >= 0.1 * GIB else f"{count / (1 << 20):.1f} MiB"


def check_fits_in_memory(
    source: str, declared: dict[str, tuple[tuple[int, ...], np.dtype[Any]]], pattern_key: str | None
) -> None:
    """Refuse, before reading anything, a file whose declared arrays cannot fit in memory.

    ``declared`` maps array names to the (shape, dtype) the file declares; the patterns are also
    converted to float32, so they count twice.
    """
    total = 0.0
    largest: tuple[str, tuple[int, ...], np.dtype[Any], float] = ("", (), np.dtype(np.uint8), 0.0)
    for name, (shape, dtype) in declared.items():
        if any(int(side) < 0 for side in shape):
            raise ScanError(f"{source}: array {name} declares a negative size {tuple(shape)}; the file is damaged")
        size = float(math.prod(int(side) for side in shape)) * max(int(np.dtype(dtype).itemsize), 1)
        if name == pattern_key:
            size += float(math.prod(int(side) for side in shape)) * 4
        total += size
        if size > largest[3]:
            largest = (name, tuple(int(side) for side in shape), np.dtype(dtype), size)
    available = available_memory_bytes()
    if available is not None and total > available:
        name, shape, dtype, _ = largest
        raise ScanError(
            f"{source} declares {_describe_bytes(total)} of arrays (largest: {name} {shape} {dtype}) but only "
            f"{_describe_bytes(available)} of memory is available; read fewer patterns (--max-patterns), "
            "crop the file, or use a machine with more memory"
        )


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
            if mask.all():
                raise ScanError(
                    "every detector pixel is marked bad, so nothing is left to fit; fix the bad-pixel mask "
                    "(True marks a bad pixel)"
                )
            if not (self.patterns.sum(axis=0, dtype=np.float64) * ~mask).any():
                raise ScanError("the good (unmasked) detector pixels hold no photons in any pattern; check the bad-pixel mask")
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


def check_object_grid(object_shape: tuple[int, int]) -> None:
    """The object grid must be non-empty and small enough to reconstruct in memory."""
    height, width = object_shape
    if height < 1 or width < 1:
        raise ScanError(f"object grid {object_shape} is empty")
    need = float(height) * float(width) * OBJECT_BYTES_PER_PIXEL
    available = available_memory_bytes()
    if max(height, width) > MAX_OBJECT_SIDE_PX or (available is not None and need > available):
        limit = f"the limit is {MAX_OBJECT_SIDE_PX} px a side"
        if available is not None:
            limit += f" and {_describe_bytes(available)} of memory is available"
        raise ScanError(
            f"the object grid would be {height}x{width} px ({_describe_bytes(need)} to reconstruct); {limit}; "
            "positions must be in object pixels (check their units and the pixel size) and the margin small"
        )


def _check_positions_on_grid(positions: np.ndarray, size: int, object_shape: tuple[int, int]) -> None:
    """Every probe centre must lie on the object grid; patches may hang over its edge."""
    height, width = object_shape
    check_object_grid(object_shape)
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
    extent = np.ceil(np.asarray(positions_yx_px, dtype=np.float64).max(axis=0)) + size - size // 2 + margin_px
    if not np.isfinite(extent).all():
        raise ScanError("positions contain NaN or infinite values")
    shape = (int(extent[0]), int(extent[1]))
    check_object_grid(shape)  # before anything allocates it
    return shape


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

    def __post_init__(self) -> None:
        def is_int(value: Any) -> bool:
            return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))

        problems = (
            (self.dc_at_corner is None or isinstance(self.dc_at_corner, bool), "dc_at_corner", self.dc_at_corner,
             "None (automatic), True or False"),
            (is_int(self.margin_px) and 0 <= self.margin_px <= MAX_MARGIN_PX, "margin_px", self.margin_px,
             f"an integer in 0..{MAX_MARGIN_PX} (pixels of object grid around the scan)"),
            (self.crop_px is None or (is_int(self.crop_px) and self.crop_px in SUPPORTED_PATTERN_SIZES_PX), "crop_px",
             self.crop_px, f"one of {', '.join(map(str, SUPPORTED_PATTERN_SIZES_PX))} (the pattern size after cropping)"),
            (self.max_patterns is None or (is_int(self.max_patterns) and self.max_patterns >= 1), "max_patterns",
             self.max_patterns, "an integer >= 1 (how many patterns of each file to use)"),
        )  # fmt: skip
        for ok, name, value, allowed in problems:
            if not ok:
                raise ConfigError("ReadOptions", name, value, allowed)


def load_scan(path: str | os.PathLike[str], options: ReadOptions | None = None) -> Scan:
    """Read a scan: ptychodus training-data ``.npz``, our ``.npz``/``.h5``, CXI, or a tike-style ``.npz(.bz2)``.

    The format is recognised from the file's first bytes (not only its name), and every array's
    declared size is checked against the memory available before anything is read.
    """
    options = options or ReadOptions()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"scan file not found: {path}")
    if path.is_dir():
        raise ScanError(f"{path} is a directory; give a scan file (.npz, .h5, .cxi)")
    try:
        kind, head = _sniff(path)
        if kind == "hdf5":
            arrays = _read_hdf5(path, options.max_patterns)
        elif kind == "bz2":
            content = _read_bz2(path)
            inner, inner_head = _sniff_bytes(content[:8])
            if inner != "zip":
                raise ScanError(_not_a_scan(path, inner, inner_head, " once decompressed"))
            arrays = _read_npz(io.BytesIO(content), str(path))
        elif kind == "zip":
            arrays = _read_npz(path, str(path))
        else:
            raise ScanError(_not_a_scan(path, kind, head, ""))
    except ScanError:
        raise
    except MemoryError as error:
        raise ScanError(f"cannot read {path}: not enough memory for its arrays; read fewer patterns (--max-patterns)") from error
    except (OSError, EOFError, zipfile.BadZipFile, ValueError, KeyError, TypeError, RuntimeError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ScanError(f"cannot read {path}: {first}; is it a complete .npz/.h5 scan file?") from error
    return _scan_from_arrays(arrays, options, source=str(path))


HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
NPY_MAGIC = b"\x93NUMPY"


def _sniff_bytes(head: bytes) -> tuple[str, bytes]:
    if not head:
        return "empty", head
    if head.startswith(HDF5_MAGIC):
        return "hdf5", head
    if head.startswith(b"PK"):
        return "zip", head
    if head.startswith(NPY_MAGIC):
        return "npy", head
    if head.startswith(b"BZh"):
        return "bz2", head
    return "unknown", head


def _sniff(path: Path) -> tuple[str, bytes]:
    """The file's format from its content (HDF5 may carry a user block, so h5py is asked for .h5 names)."""
    with open(path, "rb") as stream:
        head = stream.read(16)
    kind, head = _sniff_bytes(head)
    if kind == "unknown" and path.suffix.lower() in (".h5", ".hdf5", ".cxi"):
        import h5py

        if h5py.is_hdf5(str(path)):
            return "hdf5", head
    return kind, head


def _not_a_scan(path: Path, kind: str, head: bytes, where: str) -> str:
    if kind == "empty":
        return f"cannot read {path}: the file is empty{where}; is it a complete .npz/.h5 scan file?"
    if kind == "npy":
        return (
            f"cannot read {path}: it holds a single array (.npy){where}, not a scan; save the patterns with their "
            "positions and probe (numpy.savez with keys diff3d, xcoords, ycoords, probeGuess) or use an .h5 scan"
        )
    return (
        f"cannot read {path}: it is neither an .npz (zip) archive nor an HDF5 file{where} (it starts with "
        f"{head[:8]!r}); is it a complete .npz/.h5 scan file?"
    )


def _read_bz2(path: Path) -> bytes:
    """Decompress in chunks, stopping before the content outgrows the memory (a small file can expand hugely)."""
    available = available_memory_bytes()
    limit = None if available is None else available // 3
    buffer = io.BytesIO()
    with bz2.open(path) as stream:
        while chunk := stream.read(1 << 24):
            buffer.write(chunk)
            if limit is not None and buffer.tell() > limit:
                raise ScanError(
                    f"{path} decompresses to more than {_describe_bytes(limit)}, more than a third of the memory "
                    "available; decompress it on a machine with more memory or give a smaller file"
                )
    return buffer.getvalue()


def _npy_header(stream: Any) -> tuple[tuple[int, ...], np.dtype[Any]] | None:
    """Shape and dtype a .npy member declares, read from its header only (None if unreadable)."""
    from numpy.lib import format as npy_format

    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = npy_format.read_array_header_2_0(stream)
        else:
            reader = getattr(npy_format, "_read_array_header", None)
            if reader is None:
                return None
            shape, _, dtype = reader(stream, version)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError):
        return None
    return tuple(int(side) for side in shape), np.dtype(dtype)


PATTERN_KEYS = ("diff3d", "patterns", "cxi_data", "data")


def _read_npz(source: Any, label: str) -> dict[str, Any]:
    with np.load(source, allow_pickle=False) as archive:
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ScanError(f"cannot read {label}: it is not an .npz archive")
        declared: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
        zipped = archive.zip
        assert zipped is not None
        members = set(zipped.namelist())
        for key in archive.files:
            member = key + ".npy" if key + ".npy" in members else key
            header = None
            if member.endswith(".npy"):
                with zipped.open(member) as stream:
                    header = _npy_header(stream)
            if header is None:
                header = ((zipped.getinfo(member).file_size,), np.dtype(np.uint8))
            declared[key] = header
        check_fits_in_memory(label, declared, next((key for key in PATTERN_KEYS if key in declared), None))
        return {key: archive[key] for key in archive.files}


CXI_DATA = "entry_1/instrument_1/detector_1/data"
CXI_TRANSLATION = "entry_1/sample_1/geometry_1/translation"


def _read_hdf5(path: Path, max_patterns: int | None = None) -> dict[str, Any]:
    """Read the datasets a scan needs; patterns are sliced to ``max_patterns`` while reading."""
    import h5py

    datasets: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    with h5py.File(path, "r") as handle:
        if "entry_1" in handle:
            for name in (CXI_DATA, CXI_TRANSLATION):
                if not isinstance(handle.get(name), h5py.Dataset):
                    raise ScanError(
                        f"{path}: the CXI file has no dataset {name}; a CXI scan needs the detector data "
                        f"({CXI_DATA}) and the sample translations ({CXI_TRANSLATION})"
                    )
            datasets["cxi_data"] = handle[CXI_DATA]
            datasets["cxi_translation"] = handle[CXI_TRANSLATION]
            for name in ("entry_1/instrument_1/detector_1/probe", "probe"):
                if isinstance(handle.get(name), h5py.Dataset):
                    datasets["probeGuess"] = handle[name]
                    break
            for key in ("x_pixel_size_m", "y_pixel_size_m"):
                if key in handle.attrs:
                    attributes[key] = handle.attrs[key]
        else:
            for key, dataset in handle.items():
                if isinstance(dataset, h5py.Dataset):
                    datasets[key] = dataset
            if "metadata" in handle.attrs:
                attributes["metadata"] = np.asarray(handle.attrs["metadata"])

        def sliced(key: str, dataset: Any) -> bool:
            return max_patterns is not None and key in PATTERN_KEYS and dataset.ndim == 3

        declared = {}
        for key, dataset in datasets.items():
            shape = tuple(dataset.shape or ())
            if sliced(key, dataset):
                shape = (min(shape[0], int(max_patterns or 0)), *shape[1:])
            declared[key] = (shape, dataset.dtype)
        check_fits_in_memory(str(path), declared, next((key for key in PATTERN_KEYS if key in declared), None))
        arrays: dict[str, Any] = {
            key: np.asarray(dataset[:max_patterns] if sliced(key, dataset) else dataset[()]) for key, dataset in datasets.items()
        }
    arrays.update(attributes)
    return arrays


def _scan_from_arrays(arrays: dict[str, Any], options: ReadOptions, source: str) -> Scan:
    """Interpret a file's arrays; malformed ones (wrong ranks, empty, mismatched) become ScanError."""
    try:
        return _parse_arrays(arrays, options, source)
    except ScanError as error:
        if source in str(error):
            raise
        # several files are often read together: every problem names the file it is in
        raise ScanError(f"{source}: {error}") from error
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
        patterns, probe, bad_pixels = centre_crop(patterns, probe, bad_pixels, options.crop_px)
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


def centre_crop(
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


class DiskFullError(OSError):
    """A write failed because the disk (or the quota) is full; the previous file is intact."""

    def __str__(self) -> str:
        return str(self.strerror)


# temporary files are ".NAME.pinn-PID-XXXXXXXX.tmp": recognisable, and removable once PID has exited
TEMPORARY_PATTERN = re.compile(r"^\.(?P<name>.+)\.pinn-(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp$")
# what earlier versions left behind (".NAME.XXXXXXXX.tmp"); removed once older than this many seconds
LEGACY_TEMPORARY_AGE_S = 3600.0


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove temporary files that an interrupted write of ``path`` left (``kill -9`` mid-save)."""
    folder = path.parent if str(path.parent) else Path(".")
    removed: list[Path] = []
    legacy = re.compile(r"^\." + re.escape(path.name) + r"\.[A-Za-z0-9_]{8}\.tmp$")
    try:
        candidates = list(folder.glob(f".{glob_escape(path.name)}.*.tmp"))
    except OSError:
        return removed
    for candidate in candidates:
        match = TEMPORARY_PATTERN.match(candidate.name)
        try:
            if match is not None and match.group("name") == path.name:
                stale = not _process_alive(int(match.group("pid")))
            else:
                stale = legacy.match(candidate.name) is not None and (
                    time.time() - candidate.stat().st_mtime > LEGACY_TEMPORARY_AGE_S
                )
            if stale and candidate.is_file() and not candidate.is_symlink():
                candidate.unlink()
                removed.append(candidate)
        except OSError:
            continue
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def is_disk_full(error: BaseException, folder: Path) -> bool:
    """Whether a failed write was a full disk: errno, torch's wording, or (almost) no space left."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG):
        return True
    text = str(error).lower()
    if any(phrase in text for phrase in ("no space left", "disk quota", "file write failed", "unexpected pos")):
        return True
    if isinstance(error, (OSError, RuntimeError)):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(folder).free < (1 << 20)
    return False


def atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder and rename it over ``path``.

    A failure (full disk, Ctrl-C) leaves any previous file untouched and no partial file behind; a
    full disk is reported as :class:`DiskFullError`. A symbolic link is followed (its target is
    replaced, the link stays). Temporary files left by a killed process are removed on the next write.
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.exists():
        raise FileNotFoundError(f"output folder does not exist: {folder}")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is an existing folder; give a file name")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"cannot write to {folder}: the folder is read-only; choose another output location")
    remove_stale_temporaries(path)
    handle, temporary_name = tempfile.mkstemp(prefix=f".{path.name}.pinn-{os.getpid()}-", suffix=".tmp", dir=folder)
    os.close(handle)
    temporary = Path(temporary_name)
    try:
        # mkstemp makes the file private (0600); give it the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        write(temporary)
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, Exception) and not isinstance(error, DiskFullError) and is_disk_full(error, folder):
            detail = (str(error).splitlines() or [type(error).__name__])[0][:120]
            with contextlib.suppress(OSError):
                detail += f"; {_describe_bytes(shutil.disk_usage(folder).free)} free"
            raise DiskFullError(
                errno.ENOSPC,
                f"cannot write {path}: the disk is full ({detail}); free some space or choose another output "
                f"location (any previous {path.name} is unchanged)",
            ) from error
        raise


SCAN_FILE_SUFFIXES = (".npz", ".h5", ".hdf5", ".cxi")


def load_training_scans(path: str | os.PathLike[str], *, supervised: bool = False) -> list[Scan]:
    """Every readable scan file in a folder (or the one file given), for one training run.

    Unreadable files, and for ``supervised`` files without an object, are skipped with a warning;
    none left, or scans of different pattern sizes, is a :class:`ScanError` (FileNotFoundError when
    ``path`` does not exist).
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SCAN_FILE_SUFFIXES)
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"training data not found: {path}")
    scans = []
    for file in files:
        try:
            scan = load_scan(file)
        except (ScanError, OSError, KeyError) as error:
            logger.warning("Skipping %s: %s", file.name, error)
            continue
        if supervised and scan.object_guess is None and scan.ground_truth is None:
            logger.warning("Skipping %s: supervised training needs an object in the file", file.name)
            continue
        scans.append(scan)
    if not scans:
        raise ScanError(
            f"no usable training files in {path} (looked for {', '.join(SCAN_FILE_SUFFIXES)}); "
            "write them with ptychodus's Export Training Data or ptychodus-pinn simulate"
        )
    sizes = {scan.size_px for scan in scans}
    if len(sizes) > 1:
        raise ScanError(f"training files have different pattern sizes {sorted(sizes)}; train on one size at a time")
    logger.info("Training on %d file(s), %d patterns", len(scans), sum(scan.count for scan in scans))
    return scans
