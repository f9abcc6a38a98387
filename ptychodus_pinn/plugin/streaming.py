"""The "PtychoPINN (PyTorch) streaming" file-based workflow for ptychodus's Automation view.

Unit of work: a ptychodus standard workflow directory (``ptychodus.api.io.StandardFileLayout``), i.e.
a folder holding ``diffraction.h5`` and ``product.h5``. The workflow watches the data directory
recursively for ``product.h5``; for each one that has a ``diffraction.h5`` beside it, it writes
``product-ptychopinn.h5`` into the same folder (a name the watch pattern does not match, so our own
outputs never trigger a run).

ptychodus's automation buffer calls :meth:`StreamingWorkflow.execute` as a *foreground* task, i.e. on
the GUI thread, and does not handle exceptions from it. ``execute`` therefore only does what needs
ptychodus's models (load the diffraction data and the product into ptychodus, take the
``ReconstructInput``, snapshot the settings and the loaded model) and hands the rest to one
background worker thread per workflow: scans are reconstructed one at a time, in arrival order, a
backlog in order. ``execute`` never raises: a bad scan is logged in one line naming the file and the
reason, and skipped; the stream continues.

The worker reconstructs like the one-click "Reconstruct" entry without "Train On The Scan First":
the model the library has loaded when the scan arrived (if its N fits), else the shipped pretrained
model for the scan's N, else refinement alone from a flat object; then refinement with the panel's
settings. When Refinement Start is flat the network's object cannot change the result and nobody
watches a stream, so the network is not run (about a third of a scan's time); the default, auto, runs it. Its product is
written with ptychodus's own ``save_product``, atomically.

ptychodus 1.7 gives file-based workflows no shutdown hook (``ModelCore.__exit__`` stops the
watcher and the buffer only), so the worker is a daemon thread and an ``atexit`` hook stops it:
refinement sees the stop request at its next epoch, and a scan stopped part-way is not written.

Importing this module imports ``ptychodus.api`` only (no torch, no engine): it is registered while
ptychodus loads its plugins.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import itertools
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptychodus.api.io import StandardFileLayout
from ptychodus.api.reconstruct import ReconstructInput
from ptychodus.api.workflow import FileBasedWorkflow, WorkflowAPI

from ptychodus_pinn.engine.config import shipped_model_name

logger = logging.getLogger(__name__)

SIMPLE_NAME = "PtychoPINN_Streaming"
DISPLAY_NAME = "PtychoPINN (PyTorch) streaming"
TRIGGER_NAME = StandardFileLayout.PRODUCT.value  # product.h5
DIFFRACTION_NAME = StandardFileLayout.DIFFRACTION.value  # diffraction.h5
OUTPUT_NAME = "product-ptychopinn.h5"  # must not match TRIGGER_NAME (Path.match from the right)
FLAT_START_SOURCE = "no network (refinement from a flat object)"
FLAT_BY_SETTING_SOURCE = "no network (Refinement Start is flat: the network's object could not change the result)"
STOP_TIMEOUT_S = 10.0

_temp_counter = itertools.count()


class UnusableScanError(ValueError):
    """A scan that cannot be reconstructed; the message says why (logged, and the stream continues)."""


@dataclass(frozen=True)
class StreamJob:
    """One scan handed from the GUI thread to the worker: everything it needs, taken at arrival."""

    source: Path  # the product.h5 that triggered it
    output: Path
    parameters: ReconstructInput
    values: dict[str, Any]  # the plugin's settings when the scan arrived
    model: Any | None  # the library's loaded model when the scan arrived
    model_source: str


def _reason(error: BaseException) -> str:
    """One line: the exception's first line, named by its type unless it is one of ours."""
    first = (str(error).strip().splitlines() or [""])[0]
    return first if isinstance(error, UnusableScanError) else f"{type(error).__name__}: {first}"


def library_for(api: WorkflowAPI) -> Any | None:
    """The PtychoPINN library in the ptychodus instance that owns ``api`` (its settings and model slot).

    ptychodus's ``WorkflowAPI`` does not expose its ``ProcessingAPI``; ptychodus 1.7's
    ``ConcreteWorkflowAPI`` keeps it as ``_processing_api``, under which activation records the
    libraries it added. None when that cannot be found (the workflow then uses default settings).
    """
    from ptychodus_pinn.plugin.activation import installed_libraries

    processing_api = getattr(api, "_processing_api", None)
    if processing_api is None:
        return None
    for library in installed_libraries(processing_api):
        if hasattr(library, "model_slot") and hasattr(library, "settings"):
            return library
    return None


def default_values() -> dict[str, Any]:
    """The plugin's settings at their defaults (when no library can be found)."""
    from ptychodus_pinn.plugin.settings import FIELDS

    return {field.key: field.default for field in FIELDS}


def save_product_atomically(product: Any, path: Path) -> Path:
    """Write ``product`` with ptychodus's ``save_product`` to a temporary name beside ``path``, then rename."""
    from ptychodus.api.io import save_product

    temporary = path.with_name(f".{path.name}.{os.getpid()}.{next(_temp_counter)}.tmp")
    try:
        save_product(temporary, product)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


class StreamingWorkflow(FileBasedWorkflow):
    """Reconstructs every standard workflow directory that lands in the watched folder, one at a time."""

    def __init__(self, find_library: Callable[[WorkflowAPI], Any | None] = library_for) -> None:
        self._find_library = find_library
        self._lock = threading.Condition()
        self._jobs: deque[StreamJob] = deque()
        self._busy = False  # the worker holds a job
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self._model_copy: tuple[Any, Any] | None = None  # (the library's model, our private copy of it)
        self._pretrained: dict[tuple[int, int], Any | None] = {}  # by (N, width)
        self._warned_no_library = False
        _workflows.add(self)

    # ------------------------------------------------------------------ FileBasedWorkflow

    @property
    def is_watch_recursive(self) -> bool:
        return True

    def get_watch_file_pattern(self) -> str:
        return TRIGGER_NAME

    def execute(self, api: WorkflowAPI, file_path: Path) -> None:
        """Queue the scan in ``file_path``'s folder (GUI thread: quick, never raises)."""
        started = time.perf_counter()
        try:
            waiting = self.submit(self.prepare(api, Path(file_path)))
        except Exception as error:
            logger.warning("Streaming: %s skipped: %s", file_path, _reason(error))
            logger.debug("traceback", exc_info=error)
            return
        except BaseException as error:  # never let anything escape into ptychodus's task loop
            if isinstance(error, KeyboardInterrupt):
                raise
            logger.error("Streaming: %s skipped: %s", file_path, _reason(error))
            return
        logger.info(
            "Streaming: queued %s (%d scan(s) ahead of it; %.2f s on the GUI thread)",
            file_path,
            waiting,
            time.perf_counter() - started,
        )

    # ------------------------------------------------------------------ GUI thread

    @staticmethod
    def output_path_for(file_path: Path) -> Path:
        return Path(file_path).with_name(OUTPUT_NAME)

    def prepare(self, api: WorkflowAPI, file_path: Path) -> StreamJob:
        """Load the folder's diffraction data and product into ptychodus and take what the worker needs."""
        from ptychodus.api.io import load_product

        diffraction_path = file_path.with_name(DIFFRACTION_NAME)
        if not diffraction_path.is_file():
            raise UnusableScanError(f"no {DIFFRACTION_NAME} beside it (write it before {TRIGGER_NAME})")
        try:
            # ptychodus's standard-layout reader, whatever product format the GUI has selected
            product = load_product(file_path)
        except Exception as error:
            raise UnusableScanError(f"unreadable product: {_reason(error)}") from error
        try:
            diffraction = api.load_assembled_diffraction_data(diffraction_path)
        except Exception as error:
            raise UnusableScanError(f"unreadable {DIFFRACTION_NAME}: {_reason(error)}") from error
        if diffraction.get_dataset_index() < 0:
            raise UnusableScanError(f"ptychodus could not open {DIFFRACTION_NAME}")
        handle = api.register_product(product, diffraction=diffraction)
        parameters = handle.get_reconstruct_input()
        library = self._find_library(api)
        if library is None:
            if not self._warned_no_library:
                logger.warning("Streaming: the PtychoPINN (PyTorch) library is not found; default settings, no loaded model")
                self._warned_no_library = True
            values, model, source = default_values(), None, ""
        elif library.shipped_in_slot():  # put there by a GUI run, no choice of the user's: the stream takes its own
            values, model, source = library.settings.values(), None, ""
        else:
            values, model, source = library.settings.values(), library.model_slot.get(), library.model_slot.source
        return StreamJob(file_path, self.output_path_for(file_path), parameters, values, model, source)

    def submit(self, job: StreamJob) -> int:
        """Queue ``job`` for the worker (started on first use); returns how many scans are ahead of it."""
        with self._lock:
            ahead = len(self._jobs) + int(self._busy)
            self._jobs.append(job)
            if self._worker is None or not self._worker.is_alive():
                self._stopping.clear()
                self._worker = threading.Thread(target=self._work, name="ptychodus-pinn-streaming", daemon=True)
                self._worker.start()
            self._lock.notify_all()
        return ahead

    def pending(self) -> int:
        """Scans queued or being reconstructed."""
        with self._lock:
            return len(self._jobs) + int(self._busy)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every queued scan is done; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._jobs and not self._busy, timeout)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """Stop the worker: queued scans are dropped, the running one stops at its next refinement epoch
        and is not written. Returns whether the worker ended within ``timeout``. A later scan starts a new one."""
        with self._lock:
            worker = self._worker
            dropped = len(self._jobs)
            self._jobs.clear()
            self._stopping.set()
            self._lock.notify_all()
        if dropped:
            logger.info("Streaming stopped: %d queued scan(s) not reconstructed", dropped)
        if worker is None or worker is threading.current_thread():
            return True
        worker.join(timeout)
        if worker.is_alive():
            logger.warning("Streaming: the worker did not stop within %.0f s; it ends with the process", timeout)
            return False
        return True

    # ------------------------------------------------------------------ worker thread

    def _work(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: bool(self._jobs) or self._stopping.is_set())
                if self._stopping.is_set():
                    self._busy = False
                    self._lock.notify_all()
                    return
                job = self._jobs.popleft()
                self._busy = True
            try:
                self._reconstruct(job)
            except Exception as error:
                logger.warning("Streaming: %s skipped: %s", job.source, _reason(error))
                logger.debug("traceback", exc_info=error)
            except BaseException as error:  # e.g. SystemExit inside torch: the stream goes on
                logger.error("Streaming: %s skipped: %s", job.source, _reason(error))
            finally:
                with self._lock:
                    self._busy = False
                    self._lock.notify_all()

    def _model_for(self, job: StreamJob, size_px: int, width: int) -> tuple[Any | None, str]:
        """(model, how the log names it): the loaded model if its N fits, else the shipped one (at the run's width
        where one ships), else None."""
        model = job.model
        if model is not None:
            if int(model.config.N) == size_px:
                # a private copy: the GUI may run the same module (eval/train, device moves) meanwhile
                if self._model_copy is None or self._model_copy[0] is not model:
                    self._model_copy = (model, copy.deepcopy(model))
                return self._model_copy[1], job.model_source
            logger.info("Streaming: the loaded model expects N=%d patterns, %s has N=%d", model.config.N, job.source, size_px)
        pretrained, name = self._shipped(size_px, width)
        return (pretrained, name) if pretrained is not None else (None, FLAT_START_SOURCE)

    def _shipped(self, size_px: int, width: int) -> tuple[Any | None, str]:
        """(the shipped model for N = size_px at ``width`` where one ships, else at width 1, loaded once, or None;
        how the log names it)."""
        from ptychodus_pinn.engine.persistence import find_pretrained, shipped_width

        key = (size_px, shipped_width(size_px, width))
        if key not in self._pretrained:
            self._pretrained[key] = find_pretrained(*key)
        return self._pretrained[key], shipped_model_name(key[1])

    def _reconstruct(self, job: StreamJob) -> None:
        from ptychodus.api.product import LossValue

        from ptychodus_pinn.engine.config import TrainingMode
        from ptychodus_pinn.engine.device import release_device_memory
        from ptychodus_pinn.engine.inference import network_shapes_result, reconstruct
        from ptychodus_pinn.engine.physics import poisson_nll_floor
        from ptychodus_pinn.plugin.convert import output_product, reconstruct_input_to_scan, shown_loss
        from ptychodus_pinn.plugin.settings import settings_to_run_config

        started = time.perf_counter()
        scan = reconstruct_input_to_scan(job.parameters)
        loaded = job.model if job.model is not None and int(job.model.config.N) == scan.size_px else None
        mode = loaded.config.mode if loaded is not None else TrainingMode.PINN  # the shipped model's is PINN
        config = settings_to_run_config(job.values, N=scan.size_px, mode=mode)
        if network_shapes_result(config.refinement):
            model, source = self._model_for(job, scan.size_px, config.model.n_filters_scale)
        else:  # nobody watches a stream: no model is copied or loaded for what only a viewer needs
            model, source = None, FLAT_BY_SETTING_SOURCE
        if model is None and config.refinement.epochs == 0:
            raise UnusableScanError(f"no network model for N={scan.size_px} and refinement is off (Refinement Epochs 0)")
        shipped, shipped_name = self._shipped(scan.size_px, config.model.n_filters_scale) if model is not None else (None, "")
        # the loaded model: the shipped one competes
        alternative = None if shipped is None or model is shipped else (shipped_name, shipped)
        try:
            result = reconstruct(
                model,
                scan,
                execution=config.execution,
                refinement=config.refinement,
                should_stop=self._stopping.is_set,
                alternative=alternative,
            )
        finally:
            release_device_memory(model)
        if self._stopping.is_set():
            logger.info("Streaming stopped during %s; %s not written", job.source, job.output.name)
            return
        losses = []
        if result.refinement is not None:
            floor = poisson_nll_floor(scan.patterns, scan.bad_pixels)
            losses = [
                LossValue(int(report.epoch), shown_loss(report.nll, floor))
                for report in result.refinement.history
                if not report.half_resolution  # its NLL is over the detector's centre: another curve
            ]
        product = output_product(
            job.parameters,
            result.object,
            illuminated=result.illuminated,
            losses=losses,
            fill_with_input=job.values.get("fill_unilluminated") == "input object",
            probe=result.probe if config.refinement.refine_probe and result.refinement is not None else None,
        )
        save_product_atomically(product, job.output)
        logger.info(
            "Streaming: %s: %d patterns (N=%d) in %.1f s with %s%s → %s",
            job.parameters.product.metadata.name,
            scan.count,
            scan.size_px,
            time.perf_counter() - started,
            source,
            f" + {len(result.refinement.history)} refinement epochs" if result.refinement is not None else "",
            job.output,
        )


def register_streaming_workflow(registry: Any) -> StreamingWorkflow | None:
    """Add the workflow to ptychodus's ``PluginRegistry`` once (a second call finds it); never raises."""
    try:
        workflows = registry.file_based_workflows
        existing = workflows.find_plugin(SIMPLE_NAME)
        if existing is not None:
            return existing.strategy if isinstance(existing.strategy, StreamingWorkflow) else None
        workflow = StreamingWorkflow()
        workflows.register_plugin(workflow, simple_name=SIMPLE_NAME, display_name=DISPLAY_NAME)
        return workflow
    except Exception:
        logger.exception("The %s workflow could not be registered; ptychodus starts without it", DISPLAY_NAME)
        return None


_workflows: weakref.WeakSet[StreamingWorkflow] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """At interpreter exit (ptychodus has no hook for workflows): stop every worker that runs."""
    for workflow in list(_workflows):
        with contextlib.suppress(Exception):  # logging may already be torn down
            workflow.stop()
