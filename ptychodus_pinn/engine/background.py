"""Training on a worker thread, as a generator of epoch events that a responsive caller polls.

For callers that must stay responsive while training runs, such as the ptychodus plugin: ptychodus
drives a reconstructor by iterating its generator and only looks at the Stop button (and only
updates the GUI) between ``yield``s, while each yielded product costs the GUI thread ~0.65 s. With
training in a worker the generator waits on a queue with a short timeout, watches a stop request,
reports progress every epoch, and yields products only when it chooses to (previews, the result).
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
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # training imports Lightning: only on the worker thread, on first use
    from ptychodus_pinn.engine.config import RunConfig
    from ptychodus_pinn.engine.data import Scan
    from ptychodus_pinn.engine.inference import Reconstruction
    from ptychodus_pinn.engine.model import PinnModel
    from ptychodus_pinn.engine.training import EpochReport, TrainResult

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.2
JOIN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class EpochEvent:
    report: EpochReport
    preview: Reconstruction | None  # the network's object at this epoch, when a preview was due


@dataclass(frozen=True)
class DoneEvent:
    result: TrainResult


def train_in_background(
    scans: Sequence[Scan],
    config: RunConfig,
    *,
    stop_requested: Callable[[], bool],
    initial_model: PinnModel | None = None,
    preview: Callable[[PinnModel], Reconstruction] | None = None,
    preview_interval_s: float = 10.0,
) -> Iterator[EpochEvent | DoneEvent]:
    """Epoch events, then the final one, of ``engine.training.train`` on a worker thread; raises what it raised.

    ``stop_requested`` is polled every ~0.2 s; training then stops after the current batch, keeping the
    best model so far. ``preview(model)`` runs on the training thread between epochs (the only safe
    moment to evaluate the model), at most every ``preview_interval_s`` and never after the last epoch.
    Closing the generator (e.g. ptychodus's Stop) stops training and waits for the worker.
    """
    stop = threading.Event()
    finished = threading.Event()  # training returned or raised
    events: queue.Queue[EpochEvent | DoneEvent | BaseException] = queue.Queue()
    last_preview_s = time.monotonic()
    stop_requested_at_s: float | None = None

    def on_epoch_end(report: EpochReport) -> None:
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
