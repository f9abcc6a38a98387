"""Runs engine training in a worker thread that ptychodus's reconstruct/train generator polls.

Why a second thread: ptychodus drives a reconstructor by iterating its generator and only looks
at the Stop button (and only updates the GUI) between ``yield``s, while each yielded product costs
the GUI thread ~0.65 s. Training in a worker lets the generator wait on a queue with a short
timeout, watch the Stop button through the task monitor, report progress through the monitor
every epoch, and yield products only for previews (throttled) and the final result.
"""

from __future__ import annotations

import logging
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.2


@dataclass(frozen=True)
class EpochEvent:
    report: Any  # ptychodus_pinn.engine.training.EpochReport
    preview: Any | None  # ptychodus_pinn.engine.inference.Reconstruction computed at this epoch, if due


@dataclass(frozen=True)
class DoneEvent:
    result: Any  # ptychodus_pinn.engine.training.TrainResult


@dataclass(frozen=True)
class ErrorEvent:
    error: BaseException


Event = EpochEvent | DoneEvent | ErrorEvent


class TrainingRun:
    """One call of ``ptychodus_pinn.engine.training.train`` on a worker thread, with stop and previews."""

    def __init__(
        self,
        scans: Sequence[Any],
        config: Any,
        *,
        initial_model: Any | None = None,
        preview: Callable[[Any], Any] | None = None,
        preview_interval_s: float = 10.0,
    ) -> None:
        self.stop_event = threading.Event()
        self._finished = threading.Event()  # training returned or raised
        self._scans = list(scans)
        self._config = config
        self._initial_model = initial_model
        self._preview = preview
        self._preview_interval_s = preview_interval_s
        self._last_preview_s = time.monotonic()
        self._events: queue.Queue[Event] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="ptychodus-pinn-training", daemon=True)
        self.stop_requested_at_s: float | None = None

    def start(self) -> TrainingRun:
        self._thread.start()
        return self

    def _run(self) -> None:
        from ptychodus_pinn.engine.training import train

        try:
            with tempfile.TemporaryDirectory(prefix="ptychodus-pinn-") as checkpoint_dir:
                result = train(
                    self._scans,
                    self._config,
                    initial_model=self._initial_model,
                    on_epoch_end=self._on_epoch_end,
                    stop_event=self.stop_event,
                    checkpoint_dir=Path(checkpoint_dir),
                )
            self._finished.set()
            self._events.put(DoneEvent(result))
        except BaseException as error:
            self._finished.set()
            self._events.put(ErrorEvent(error))

    def _on_epoch_end(self, report: Any) -> None:
        """Runs on the training thread between epochs: the only safe moment to evaluate the model."""
        preview = None
        model = getattr(report, "model", None)
        now_s = time.monotonic()
        due = now_s - self._last_preview_s >= self._preview_interval_s
        last_epoch = int(getattr(report, "epoch", 0)) >= int(getattr(report, "epochs", 0) or 1 << 30)  # epoch counts from 1
        if self._preview is not None and model is not None and due and not last_epoch and not self.stop_event.is_set():
            try:
                preview = self._preview(model)
            except Exception:
                logger.exception("Preview failed; training continues")
            self._last_preview_s = time.monotonic()
        self._events.put(EpochEvent(report, preview))

    def events(self, stop_requested: Callable[[], bool]) -> Iterator[Event]:
        """Events until the run ends; polls ``stop_requested`` every ~0.2 s and stops training on it."""
        while True:
            if not self.stop_event.is_set() and stop_requested():
                self.request_stop()
            try:
                event = self._events.get(timeout=POLL_INTERVAL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._events.empty():
                    yield ErrorEvent(RuntimeError("the training thread ended without a result"))
                    return
                continue
            yield event
            if isinstance(event, (DoneEvent, ErrorEvent)):
                return

    def request_stop(self) -> None:
        if not self.stop_event.is_set():
            self.stop_requested_at_s = time.monotonic()
            logger.info("Stop requested; finishing the current batch and keeping the best model so far")
        self.stop_event.set()

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop and wait for the worker (generator closed by ptychodus, or an error)."""
        if not self._finished.is_set():
            self.request_stop()  # ptychodus's Stop (GeneratorExit) or an error on the generator's side
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                logger.warning("The training thread did not stop within %.0f s; it ends on its own", timeout_s)


def release_device_memory(model: Any | None) -> Any | None:
    """Move a model to the CPU and return cached GPU memory to the driver (after a run)."""
    try:
        import torch
    except ImportError:
        return model
    if model is not None and hasattr(model, "to"):
        try:
            model = model.to("cpu") or model
        except Exception:
            logger.debug("Could not move the model to the CPU", exc_info=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return model
