"""``ptychodus-pinn watch DIR --out OUT``: reconstruct every scan file that arrives in a folder.

Each scan ``DIR/NAME.*`` (the formats ``engine.data.load_scan`` reads) gets ``OUT/NAME/`` with
what ``infer`` writes (``app/infer.write_infer_outputs``). The backlog already in DIR goes first,
oldest first (modification time, then name); then DIR is polled. A file counts as arrived once its
size and modification time are unchanged between two polls, so a half-written file is never read
(hidden files, such as the temporary files of atomic writes, are ignored). A file that cannot be
reconstructed is logged in one line naming it and the reason, and skipped (retried only if it
changes); the loop goes on. ``OUT/NAME/object.npz`` marks a scan done, so a restart skips it.
The model is loaded once: ``--model``, else the shipped model for the scan's N (once per N), else
refinement from a flat object, as ``infer`` does. With refinement starting flat
(``--refine-start flat``; the default is ``auto``) the network's object cannot change the result, so
the network stage is skipped (``engine.inference.network_shapes_result``): the result comes ~1 s sooner. Ctrl-C
stops cleanly with a summary (exit 130); ``--once`` processes what is there and exits.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptychodus_pinn.app.infer import (
    SCAN_SUFFIXES,
    device_width,
    model_path_for,
    shipped_alternative,
    shipped_model_path,
    write_infer_outputs,
)

logger = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (value > 0 and value < 1e6):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; it must be a number of seconds in (0, 1e6)")
    return value


def positive_integer(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; it must be an integer >= 1")
    return value


def add_watch_arguments(parser: argparse.ArgumentParser) -> None:
    """The watch subcommand's arguments, with infer's refinement, execution and reading options."""
    from ptychodus_pinn.app.cli import add_execution_arguments, add_read_arguments, add_refinement_arguments

    parser.add_argument("folder", metavar="DIR", help="folder to watch for scan files (.npz, .h5, .cxi, .npz.bz2)")
    parser.add_argument("--out", required=True, help="folder that gets OUT/NAME/ (object.npz, object.png, ...) per scan")
    parser.add_argument("--model", default=None, help="model file (default: the shipped model for each scan's N, if any)")
    parser.add_argument(
        "--poll-interval", type=_positive_seconds, default=2.0,
        help="seconds between looks at DIR; a file is read once its size held for one interval (default 2)",
    )  # fmt: skip
    parser.add_argument("--once", action="store_true", help="process the scans already in DIR, then exit")
    # tests: stop after this many looks at DIR (deterministic, no Ctrl-C needed)
    parser.add_argument("--max-polls", type=positive_integer, default=None, help=argparse.SUPPRESS)
    add_refinement_arguments(parser)
    add_execution_arguments(parser)
    add_read_arguments(parser)


def scan_name(path: Path) -> str:
    """NAME of ``DIR/NAME.npz``, ``NAME.h5``, ``NAME.npz.bz2`` ...: the output folder's name."""
    name = path.name
    if name.lower().endswith(".bz2"):
        name = name[: -len(".bz2")]
    for suffix in SCAN_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class WatchSummary:
    reconstructed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    polls: int = 0

    def line(self) -> str:
        return (
            f"{len(self.reconstructed)} scan(s) reconstructed, {len(self.skipped)} skipped (unreadable or failed), "
            f"{len(self.already_done)} already done, {self.polls} look(s) at the folder"
        )


Signature = tuple[int, int]  # (size, mtime in ns)


class FolderWatcher:
    """Which scan files in a folder have arrived (unchanged for one poll) and are not yet handled."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: dict[Path, Signature] = {}
        self.handled: dict[Path, Signature] = {}

    def candidates(self) -> dict[Path, Signature]:
        found: dict[Path, Signature] = {}
        for path in self.folder.iterdir():
            if path.name.startswith(".") or not path.name.lower().endswith(SCAN_SUFFIXES):
                continue
            try:
                status = path.stat()
            except OSError:  # removed between listing and looking
                continue
            if path.is_file():
                found[path] = (status.st_size, status.st_mtime_ns)
        return found

    def poll(self) -> tuple[list[Path], int]:
        """Files ready to process, oldest first (mtime, then name), and how many are still arriving."""
        current = self.candidates()
        ready = [
            path
            for path, signature in current.items()
            if self.seen.get(path) == signature and self.handled.get(path) != signature
        ]
        arriving = sum(1 for path, signature in current.items() if self.seen.get(path) != signature)
        self.seen = current
        ready.sort(key=lambda path: (current[path][1], path.name))
        return ready, arriving

    def mark_handled(self, path: Path) -> None:
        if path in self.seen:
            self.handled[path] = self.seen[path]


class ScanReconstructor:
    """infer's code path for one file, with the model loaded once (per pattern size when shipped)."""

    def __init__(self, arguments: argparse.Namespace, out: Path) -> None:
        from ptychodus_pinn.app.cli import execution_config_from, read_options_from, refinement_config_from

        self.out = out
        self.refinement = refinement_config_from(arguments)
        self.execution = execution_config_from(arguments)
        self.read_options = read_options_from(arguments)
        self.model_path = Path(arguments.model) if arguments.model else None
        self.models: dict[Path, Any] = {}
        from ptychodus_pinn.engine.inference import network_shapes_result

        self.use_network = network_shapes_result(self.refinement)
        if self.model_path is not None:
            if not self.model_path.exists():
                raise FileNotFoundError(f"file not found: {self.model_path}")
            self._model(self.model_path)  # refused at start, not once per file
        if not self.use_network:
            logger.info(
                "refinement starts from a flat object (--refine-start flat): the network cannot change the result, "
                "so it is not run%s; --refine-start auto lets the network's object compete as the start",
                " (--model is checked but not used)" if self.model_path is not None else "",
            )

    def get_ready(self) -> None:
        """Pay the one-time costs before the first scan arrives: the modules a scan needs and the models.

        Importing the reconstruction, metrics and figure modules, loading the model (the given one, else
        every shipped one) and running it once took the first scan's time from arrival to result from
        13 s to that of the later scans (N = 64, 2 CPU threads).
        """
        import importlib

        for module in ("ptychodus_pinn.app.figures", "ptychodus_pinn.engine.inference", "ptychodus_pinn.engine.metrics"):
            importlib.import_module(module)  # matplotlib, torch's reconstruction path, scikit-image
        from ptychodus_pinn.engine.config import SUPPORTED_PATTERN_SIZES_PX

        if not self.use_network:
            self._warm_up(None, min(SUPPORTED_PATTERN_SIZES_PX))
            return
        shipped = [shipped_model_path(N, device_width(N, self.execution)) for N in SUPPORTED_PATTERN_SIZES_PX]
        models = [self.model_path] if self.model_path is not None else list(filter(None, shipped))
        for path in models:
            model = self._model(path)
            self._warm_up(model, model.config.N)

    def _warm_up(self, model: Any, size_px: int) -> None:
        """Run the model (if any) and a few refinement epochs (both resolutions) once on a tiny simulated scan
        (torch's first calls are slow)."""
        from ptychodus_pinn.engine.config import replace
        from ptychodus_pinn.engine.inference import reconstruct
        from ptychodus_pinn.engine.simulate import simulate_scan

        try:
            scan = simulate_scan("siemens", 1e5, 16, size_px, seed=0)
            refinement = replace(
                self.refinement,
                epochs=min(self.refinement.epochs, 2),
                half_resolution_epochs=min(self.refinement.half_resolution_epochs, 1),
            )
            reconstruct(model, scan, execution=self.execution, refinement=refinement)
        except Exception as error:  # a warm-up never stops the watcher; the first scan pays instead
            logger.debug("warm-up skipped: %s", error)

    def _model(self, path: Path | None) -> Any:
        from ptychodus_pinn.engine.persistence import load_model

        if path is None:
            return None
        if path not in self.models:
            self.models[path] = load_model(path)
        return self.models[path]

    def output_folder(self, path: Path) -> Path:
        return self.out / scan_name(path)

    def __call__(self, path: Path) -> str:
        from ptychodus_pinn.app.cli import check_infer_outputs
        from ptychodus_pinn.engine.data import load_scan
        from ptychodus_pinn.engine.inference import reconstruct

        started = time.perf_counter()
        folder = self.output_folder(path)
        inputs = {path: "DIR"} if self.model_path is None else {path: "DIR", self.model_path: "--model"}
        check_infer_outputs(folder, inputs)
        scan = load_scan(path, self.read_options)
        width = device_width(scan.size_px, self.execution)
        model_path = model_path_for(scan.size_px, self.model_path, self.refinement, width) if self.use_network else None
        alternative = shipped_alternative(model_path, scan.size_px, self.refinement, self._model, width)
        reconstruction = reconstruct(
            self._model(model_path), scan, execution=self.execution, refinement=self.refinement, alternative=alternative
        )
        write_infer_outputs(reconstruction, scan, folder, model_path)
        seconds = time.perf_counter() - started
        return f"{path.name}: {scan.count} patterns, {seconds:.1f} s, wrote {folder}"


def _reason(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return text or type(error).__name__


def run_watch(arguments: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Watch ``arguments.folder`` until Ctrl-C (130), ``--once`` (0), ``--max-polls`` or ``stop`` is set (0)."""
    from ptychodus_pinn.app.outputs import check_output_folder

    logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))  # per-file lines show without --verbose
    folder = Path(arguments.folder)
    out = Path(arguments.out)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder to watch not found: {folder}" if not folder.exists() else f"{folder} is not a folder")
    check_output_folder(out, "--out")
    process = ScanReconstructor(arguments, out)
    if not arguments.once:  # a watcher waits for scans: pay the first-scan costs now (with --once the first scan pays them)
        process.get_ready()
    out.mkdir(parents=True, exist_ok=True)
    watcher = FolderWatcher(folder)
    summary = WatchSummary()
    stop = stop or threading.Event()
    logger.info("watching %s -> %s (every %.3g s%s)", folder, out, arguments.poll_interval, ", once" if arguments.once else "")
    try:
        while not stop.is_set():
            ready, arriving = watcher.poll()
            summary.polls += 1
            for path in ready:
                if stop.is_set():
                    break
                watcher.mark_handled(path)
                if (process.output_folder(path) / "object.npz").exists():
                    summary.already_done.append(path.name)
                    logger.info("%s: already done (%s exists), skipped", path.name, process.output_folder(path) / "object.npz")
                    continue
                try:
                    logger.info("%s", process(path))
                    summary.reconstructed.append(path.name)
                except Exception as error:  # one bad file never stops the loop
                    summary.skipped.append(path.name)
                    logger.warning("skipped %s: %s", path, _reason(error))
            if arguments.once and arriving == 0 and summary.polls > 1:
                break
            if arguments.max_polls is not None and summary.polls >= arguments.max_polls:
                break
            stop.wait(arguments.poll_interval)
    except KeyboardInterrupt:
        logger.warning("interrupted: %s", summary.line())
        return EXIT_INTERRUPTED
    logger.info("stopped: %s", summary.line())
    return 0
