"""Runs engine training in a worker thread that ptychodus's reconstruct/train generator polls.

Why a second thread: ptychodus drives a reconstructor by iterating its generator and only looks at
the Stop button (and only updates the GUI) between ``yield``s, while each yielded product costs the
GUI thread ~0.65 s. Training in a worker lets the generator wait on a queue with a short timeout,
watch the Stop button through the task monitor, report progress every epoch, and yield products
only for previews (throttled) and the final result.
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
JOIN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class EpochEvent:
    report: Any  # ptychodus_pinn.engine.training.EpochReport
    preview: Any | None  # ptychodus_pinn.engine.inference.Reconstruction computed at this epoch, if due


@dataclass(frozen=True)
class DoneEvent:
    result: Any  # ptychodus_pinn.engine.training.TrainResult


def train_in_background(
    scans: Sequence[Any],
    config: Any,
    *,
    stop_requested: Callable[[], bool],
    initial_model: Any | None = None,
    preview: Callable[[Any], Any] | None = None,
    preview_interval_s: float = 10.0,
) -> Iterator[EpochEvent | DoneEvent]:
    """Epoch events, then the final one, of ``engine.training.train`` on a worker thread; raises what it raised.

    ``stop_requested`` is polled every ~0.2 s; training then stops after the current batch, keeping the
    best model so far. ``preview(model)`` runs on the training thread between epochs (the only safe
    moment to evaluate the model), at most every ``preview_interval_s`` and never after the last epoch.
    Closing the generator (ptychodus's Stop) stops training and waits for the worker.
    """
    stop = threading.Event()
    finished = threading.Event()  # training returned or raised
    events: queue.Queue[EpochEvent | DoneEvent | BaseException] = queue.Queue()
    last_preview_s = time.monotonic()
    stop_requested_at_s: float | None = None

    def on_epoch_end(report: Any) -> None:
        nonlocal last_preview_s
        image = None
        due = time.monotonic() - last_preview_s >= preview_interval_s
        if preview is not None and report.model is not None and due and report.epoch < report.epochs and not stop.is_set():
            try:
                image = preview(report.model)
            except Exception:
                logger.exception("Preview failed; training continues")
            last_preview_s = time.monotonic()
        events.put(EpochEvent(report, image))

    def run() -> None:
        from ptychodus_pinn.engine.training import train

        event: DoneEvent | BaseException
        try:
            with tempfile.TemporaryDirectory(prefix="ptychodus-pinn-") as folder:
                result = train(
                    list(scans),
                    config,
                    initial_model=initial_model,
                    on_epoch_end=on_epoch_end,
                    stop_event=stop,
                    checkpoint_dir=Path(folder),
                )
            event = DoneEvent(result)
        except BaseException as error:
            event = error
        finished.set()  # before the event: closing after the last event must not ask for a stop
        events.put(event)

    def request_stop() -> None:
        nonlocal stop_requested_at_s
        if not stop.is_set():
            stop_requested_at_s = time.monotonic()
            logger.info("Stop requested; finishing the current batch and keeping the best model so far")
        stop.set()

    thread = threading.Thread(target=run, name="ptychodus-pinn-training", daemon=True)
    thread.start()
    try:
        while True:
            if not stop.is_set() and stop_requested():
                request_stop()
            try:
                event = events.get(timeout=POLL_INTERVAL_S)
            except queue.Empty:
                if not thread.is_alive() and events.empty():
                    raise RuntimeError("the training thread ended without a result") from None
                continue
            if isinstance(event, BaseException):
                raise event
            if isinstance(event, DoneEvent) and stop_requested_at_s is not None:
                logger.info("Training stopped %.1f s after Stop", time.monotonic() - stop_requested_at_s)
            yield event
            if isinstance(event, DoneEvent):
                return
    finally:  # the end, ptychodus's Stop (GeneratorExit) or an error on the generator's side
        if not finished.is_set():
            request_stop()
        thread.join(JOIN_TIMEOUT_S)
        if thread.is_alive():
            logger.warning("The training thread did not stop within %.0f s; it ends on its own", JOIN_TIMEOUT_S)


def release_device_memory(model: Any | None) -> Any | None:
    """Move a model to the CPU and return cached GPU memory to the driver (after a run)."""
    import torch

    if model is not None:
        try:
            model = model.to("cpu") or model
        except Exception:
            logger.debug("Could not move the model to the CPU", exc_info=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return model
