"""The "PtychoPINN (PyTorch)" reconstructor library, on ptychodus's own ABCs.

Three entries (ptychodus shows them as ``ptychopinn (pytorch)_<name>``), sharing one model slot:

* ``reconstruct`` — one click, in stages that each yield a product: the network's object (the loaded
  model, else the shipped pretrained one for the scan's N), then refinement against all patterns
  (previews while it sharpens, then the result). With "Train On The Scan First" the network is first
  trained on the scan, warm-started from that model when its architecture fits the settings. A plain
  ``Reconstructor``: the button reads "Reconstruct" and needs no model.
* ``train+infer`` — a ``TrainableReconstructor``: Train on a directory of exported training files or
  a ptychodus workflow directory, Load Model, and Infer on a scan (network, then refinement).
* ``train+infer supervised`` — the same with supervised training on files that carry objects.

The stages themselves are the engine's (``engine.inference.reconstruct_stages``); this module turns
them into products, progress and Stop. Previews are yielded only while a settings panel is attached
(:meth:`PinnReconstructorLibrary.attach_view`): ptychodus's batch mode (``ptychodus -b``) writes every
yielded product to a file, so there a run yields the network's object and the result, no more.
Torch and the engine are imported on first use only.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import Any

from ptychodus.api.io import StandardFileLayout, save_ptychopinn_training_data
from ptychodus.api.product import LossValue
from ptychodus.api.reconstruct import (
    ReconstructInput,
    Reconstructor,
    ReconstructorLibrary,
    ReconstructOutput,
    TrainableReconstructor,
    TrainOutput,
)
from ptychodus.api.settings import SettingsRegistry

from ptychodus_pinn.engine.config import RunConfig, TrainingMode, replace, shipped_model_name

from .convert import (
    is_workflow_directory,
    losses_from_history,
    output_product,
    reconstruct_input_to_scan,
    shown_loss,
    workflow_directory_scan,
)
from .settings import PluginSettings, architecture_changes, settings_to_run_config, width_is_auto

LIBRARY_NAME = "PtychoPINN (PyTorch)"
LOGGER_NAME = "ptychodus_pinn"  # the engine logs below it, so its messages reach the log panel too
MODEL_FILE_EXTENSION = ".pinn.pt"  # ptychodus_pinn.engine.persistence.MODEL_SUFFIX (not imported: torch)
MODEL_FILE_FILTER = f"PtychoPINN (PyTorch) model (*{MODEL_FILE_EXTENSION})"
TRAINING_DATA_FILE_FILTER = "PtychoPINN training data (*.npz)"
RECONSTRUCT_NAME = "Reconstruct"
TRAIN_INFER_NAME = "Train+Infer"
SUPERVISED_NAME = "Train+Infer Supervised"
# the first refinement preview comes this soon after the network's object (the user sees it sharpen);
# later ones follow the Preview Interval setting
FIRST_REFINEMENT_PREVIEW_S = 2.0

logger = logging.getLogger(LOGGER_NAME)


@contextlib.contextmanager
def _reported(action: str) -> Iterator[None]:
    """A failure of ``action`` goes to ptychodus's log panel in one line (the library logger feeds it), then on."""
    try:
        yield
    except GeneratorExit:  # ptychodus's Stop, not a failure
        raise
    except BaseException as error:
        logger.error("%s failed: %s: %s", action, type(error).__name__, error)
        logger.debug("traceback", exc_info=error)
        raise


class ModelSlot:
    """The model shared by the library's reconstructors (trained, loaded or pretrained).

    With a ``record`` file the slot outlives ptychodus: the file that holds the model in use (loaded,
    saved, or trained in the GUI and kept under :data:`TRAINED_MODELS_DIR`) is written there, and the
    next session's slot loads it on first use. The shipped model is never recorded (it is the default).
    """

    def __init__(self, record: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._model: Any | None = None
        self.source = ""
        self.observers: list[Callable[[], None]] = []
        self.record: Path | None = None
        self._pending: Path | None = None
        if record is not None:
            self.remember_in(record)

    def remember_in(self, record: Path) -> None:
        """Keep the model in use in ``record`` from now on; an empty slot takes the recorded model (loaded on first use)."""
        pending = _recorded_model_path(record)
        with self._lock:
            self.record = record
            if self._model is None:
                self._pending = pending

    def get(self) -> Any | None:
        with self._lock:
            pending, self._pending = self._pending, None
            if pending is not None and self._model is None:
                self._model, self.source = _restore(pending, self.record)
            return self._model

    def set(self, model: Any | None, source: str, *, file: Path | None = None) -> None:
        """Put ``model`` in the slot; ``file`` (the model's file on disk) makes it the one the next session uses."""
        with self._lock:
            self._pending = None
            self._model = model
            self.source = source if model is not None else ""
        if self.record is not None and (file is not None or model is None):
            _write_record(self.record, file)
        for observer in list(self.observers):
            try:
                observer()
            except Exception:
                logger.debug("model observer failed", exc_info=True)

    @property
    def pending(self) -> Path | None:
        """The last session's model file, not loaded yet (it loads on the first :meth:`get`)."""
        with self._lock:
            return self._pending

    def describe(self) -> str:
        pending = self.pending
        if pending is not None:
            return f"{pending.name} (in use when ptychodus last closed; loads on first use)"
        model = self.get()
        if model is None:
            return "No model loaded (the shipped model is used where one fits)"
        config = model.config
        return f"{self.source} (N={config.N}, gridsize={config.gridsize}, width={config.n_filters_scale}, {config.mode})"


RECORD_NAME = "ptychopinn-current-model.json"  # in ptychodus's own folder (~/.ptychodus)
TRAINED_MODELS_DIR = "ptychopinn-models"  # models trained in the GUI are kept here (~/.ptychodus/…)


def default_record_path() -> Path:
    from ptychodus.api.settings import get_ptychodus_dir

    return get_ptychodus_dir() / RECORD_NAME


def _recorded_model_path(record: Path) -> Path | None:
    import json

    try:
        text = record.read_text()
    except FileNotFoundError:
        return None
    except OSError as error:
        logger.warning("Cannot read %s (%s): starting without the last session's model", record, error)
        return None
    try:
        return Path(json.loads(text)["model_file"])
    except (ValueError, KeyError, TypeError):
        logger.warning("%s is not a model record (delete it); starting without the last session's model", record)
        return None


def _restore(path: Path, record: Path | None) -> tuple[Any | None, str]:
    from ptychodus_pinn.engine.persistence import load_model

    try:
        model = load_model(path)
    except Exception as error:  # a moved, corrupt or foreign file never stops a reconstruction
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        logger.warning(
            "The model in use when ptychodus last closed cannot be loaded (%s: %s); using the shipped model where one "
            "fits. Load a model to replace it%s",
            path,
            first_line,
            f", or delete {record}" if record is not None else "",
        )
        return None, ""
    logger.info("Restored the model in use when ptychodus last closed: %s", path)
    return model, f"{path.name} (from the last session)"


def _write_record(record: Path, model_file: Path | None) -> None:
    """Record ``model_file`` as the model in use (None: forget it); a failure is a warning, never an error."""
    from ptychodus_pinn.app.outputs import write_json

    try:
        if model_file is None:
            record.unlink(missing_ok=True)
        else:
            record.parent.mkdir(parents=True, exist_ok=True)
            write_json({"model_file": str(Path(model_file).resolve())}, record)
    except OSError as error:
        logger.warning("Cannot record the model in use in %s (%s): the next session starts without it", record, error)


class PinnReconstructorLibrary(ReconstructorLibrary):
    """ptychodus library "PtychoPINN (PyTorch)"; one instance per ptychodus ModelCore."""

    def __init__(self, settings_registry: SettingsRegistry, *, is_developer_mode_enabled: bool = False) -> None:
        super().__init__(LOGGER_NAME)
        self.settings = PluginSettings(settings_registry)
        self.model_slot = ModelSlot()  # remembers across sessions once a GUI panel is attached (attach_view)
        self.is_developer_mode_enabled = is_developer_mode_enabled
        self._task_monitor: Any | None = None
        self._view_attached = False
        self._shipped_models: dict[tuple[int, int], Any | None] = {}  # by (N, width), loaded once (shipped_model)
        self._reconstructors: list[Reconstructor] = [
            SelfSupervisedReconstructor(self, RECONSTRUCT_NAME, TrainingMode.PINN),
            TrainInferReconstructor(self, TRAIN_INFER_NAME, TrainingMode.PINN),
            TrainInferReconstructor(self, SUPERVISED_NAME, TrainingMode.SUPERVISED),
        ]

    @property
    def name(self) -> str:
        return LIBRARY_NAME

    def __iter__(self) -> Iterator[Reconstructor]:
        return iter(self._reconstructors)

    def attach_processing_api(self, processing_api: Any) -> None:
        """Called by the activation hook: runs see Stop and report progress between yields."""
        monitor = getattr(processing_api, "task_monitor", None)
        if monitor is not None and hasattr(monitor, "is_stopping") and hasattr(monitor, "update_progress"):
            self._task_monitor = monitor

    def attach_view(self) -> None:
        """Called by the settings panel's factory (``qt/view.py``), which ptychodus builds with its GUI only.

        A panel means someone watches the products, so previews are worth their cost. Without one
        (``ptychodus -b``, scripts) ptychodus may write every yielded product to a file: a run then
        yields the network's object and the result only.

        A panel also turns on the model memory (:class:`ModelSlot`): the GUI starts with the model in use when
        it last closed. Batch mode and scripts neither read nor write that memory, so a ``ptychodus -b`` run
        depends on its workflow directory only.
        """
        self._view_attached = True
        self.model_slot.remember_in(default_record_path())

    def previews_wanted(self, values: Mapping[str, Any]) -> bool:
        """Object previews while training or refining: with a panel attached and Preview Updates on."""
        return self._view_attached and bool(values["preview_updates"])

    def stop_requested(self) -> bool:
        return bool(self._task_monitor is not None and self._task_monitor.is_stopping)

    def report_progress(self, progress: int, goal: int) -> bool:
        """Update ptychodus's progress bar without yielding a product; False when not attached."""
        if self._task_monitor is None:
            return False
        self._task_monitor.update_progress(progress, goal)
        return True

    def save_model(self, file_path: Path) -> None:
        from ptychodus_pinn.engine.persistence import model_file_path, save_model

        model = self.model_slot.get()
        if model is None:
            raise RuntimeError("No PtychoPINN (PyTorch) model to save: reconstruct, train or load one first")
        path = save_model(model, model_file_path(file_path))
        self.model_slot.set(model, self.model_slot.source, file=path)  # the saved file is the one to come back to
        logger.info("Saved the model to %s", path)

    def keep_trained_model(self, model: Any, name: str) -> Path | None:
        """Save a model trained in the GUI beside the record (``~/.ptychodus/ptychopinn-models``), so it is the
        next session's model too; None (with a warning) when it cannot be written: training is never lost for that."""
        from ptychodus_pinn.engine.persistence import save_model

        if self.model_slot.record is None:
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:60] or "scan"
        path = self.model_slot.record.parent / TRAINED_MODELS_DIR / f"{safe}-N{model.config.N}-{stamp}{MODEL_FILE_EXTENSION}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return save_model(model, path)
        except OSError as error:
            logger.warning(
                "Cannot keep the trained model in %s (%s): it is used in this session only; Save Model keeps it", path, error
            )
            return None

    def load_model(self, file_path: Path) -> None:
        from ptychodus_pinn.engine.persistence import load_model

        self.model_slot.set(load_model(Path(file_path)), f"loaded from {Path(file_path).name}", file=Path(file_path))
        logger.info("Loaded model %s", self.model_slot.describe())

    def initial_model_for(self, size_px: int, width: int = 1) -> tuple[Any | None, str]:
        """(model, how the log names it): the loaded model, else the shipped pretrained one, if it fits N = size_px.

        ``width``: the run's network width (Network Width, 0 resolved for the device by ``settings.auto_width``);
        where a shipped model of that width exists (N = 64 at width 4, for GPUs: docs/quality.md) it is that one,
        else the width-1 one (training then skips its warm start, with a log that says which setting to change)."""
        model = self.model_slot.get()
        if model is None or self.shipped_in_slot():  # the shipped one is no choice of the user's: the run's fits
            return self.shipped_model(size_px, width)
        if size_px != model.config.N:
            logger.info("The loaded model expects N=%d patterns, the scan has N=%d: not using it", model.config.N, size_px)
            return None, ""
        return model, self.model_slot.source

    def shipped_in_slot(self) -> bool:
        """Whether the slot holds a shipped model (put there by a reconstruction that used it), not a user's."""
        model = self.model_slot.get()
        return model is not None and self.model_slot.source == shipped_model_name(model.config.n_filters_scale)

    def shipped_model(self, size_px: int, width: int = 1) -> tuple[Any | None, str]:
        """(the shipped model for N = size_px at ``width`` if one ships, else at width 1, loaded once; its name)."""
        from ptychodus_pinn.engine.persistence import find_pretrained, shipped_width

        width = shipped_width(size_px, width)
        if (size_px, width) not in self._shipped_models:
            self._shipped_models[size_px, width] = find_pretrained(size_px, width)
        return self._shipped_models[size_px, width], shipped_model_name(width)

    def shipped_alternative(self, model: Any | None, size_px: int, width: int = 1) -> tuple[str, Any] | None:
        """(name, the shipped model for N = size_px and the run's ``width``) to compete with ``model``, another model
        (trained or loaded), by the scan's likelihood (``engine.inference.likelier_network``: a model trained on other
        specimens can be the worse start); None when ``model`` is that shipped one, none ships for N, or no model."""
        if model is None or size_px != model.config.N:
            return None
        shipped, source = self.shipped_model(size_px, width)
        in_use = shipped is model or (model is self.model_slot.get() and self.model_slot.source == source)
        return None if shipped is None or in_use else (source, shipped)

    def model_for(self, scan: Any, width: int = 1, *, loaded_first: bool = False) -> Any | None:
        """The network a reconstruction of ``scan`` uses (logged): :meth:`initial_model_for` at the run's ``width``
        (with ``loaded_first`` a model the user loaded or trained, whatever its N), loaded into the slot when it was
        the shipped one (Infer and Save Model then work with it); None: refinement from a flat object."""
        loaded = self.model_slot.get()
        if loaded_first and loaded is not None and not self.shipped_in_slot():
            model, source = loaded, self.model_slot.describe()
        else:
            model, source = self.initial_model_for(scan.size_px, width)
        if model is None:
            logger.info(
                "No network model for N=%d patterns (none loaded, none ships for this size): refinement starts "
                "from a flat object; load a model or turn on Train On The Scan First to use a network",
                scan.size_px,
            )
            return None
        if self.model_slot.get() is None or self.shipped_in_slot():
            self.model_slot.set(model, source)
        logger.info("Reconstructing %d patterns (N=%d) with %s, then refinement", scan.count, scan.size_px, source)
        return model


class _PinnReconstructor:
    def __init__(self, library: PinnReconstructorLibrary, name: str, mode: TrainingMode) -> None:
        self._library = library
        self._name = name
        self._mode = mode

    @property
    def name(self) -> str:
        return self._name

    def _setting(self, key: str) -> Any:
        return self._library.settings[key].get_value()

    def _refinement_epochs(self) -> int:
        """Refinement's epochs for a progress goal asked before the scan is known: its half-resolution ones counted
        (they run for every pattern size the engine takes); the run reports the exact goal once it knows N."""
        epochs = int(self._setting("refine_epochs"))
        return epochs + int(self._setting("refine_half_resolution_epochs")) if epochs > 0 else 0

    def _training_mode(self, values: dict[str, Any]) -> TrainingMode:
        """The supervised entry's mode, else the panel's Training Mode (pinn or distil)."""
        return self._mode if self._mode is TrainingMode.SUPERVISED else TrainingMode(str(values["training_mode"]))

    def _reconstruct(self, parameters: ReconstructInput, *, train_first: bool) -> Iterator[ReconstructOutput]:
        """Settings → configs, the network (trained on the scan first, else the library's choice), then the stages."""
        library = self._library
        values = library.settings.values()
        scan = reconstruct_input_to_scan(parameters)
        config = settings_to_run_config(values, N=scan.size_px, mode=self._training_mode(values))
        training_epochs = config.training.epochs if train_first else 0
        goal = training_epochs + 1 + config.refinement.total_epochs_for(scan.size_px)
        library.report_progress(0, goal)
        losses: list[LossValue] = []
        if train_first:
            model = yield from self._train_on_scan(parameters, scan, config, values, losses, goal)
            if model is None:  # stopped mid-training: the best model's network object was the result
                return
        else:  # Infer (a TrainableReconstructor) uses the loaded model whatever its N: the engine says if it does not fit
            width, loaded_first = config.model.n_filters_scale, isinstance(self, TrainableReconstructor)
            model = library.model_for(scan, width, loaded_first=loaded_first)
        yield from self._stages(
            parameters, scan, model, config, values, losses=losses, progress_offset=training_epochs, goal=goal
        )

    def _train_on_scan(
        self,
        parameters: ReconstructInput,
        scan: Any,
        config: RunConfig,
        values: dict[str, Any],
        losses: list[LossValue],
        goal: int,
    ) -> Generator[ReconstructOutput, None, Any | None]:
        """Self-supervised training on the scan with previews; returns the trained model (loaded in the slot).

        After Stop the best model so far is loaded, its network object is yielded as the final product
        and None is returned: the run ends there (no refinement after Stop).
        """
        from ptychodus_pinn.engine import inference
        from ptychodus_pinn.engine.background import DoneEvent
        from ptychodus_pinn.engine.physics import loss_floor

        library = self._library
        fill = values["fill_unilluminated"] == "input object"
        initial, source, config = self._warm_start(scan.size_px, config, values)
        logger.info(
            "Self-supervised (%s) training on %d patterns (N=%d) for %d epochs%s, then network and refinement",
            config.model.mode.value,
            scan.count,
            scan.size_px,
            config.training.epochs,
            f", starting from {source}" if initial is not None else " from scratch",
        )
        floor = loss_floor(config.model, scan.patterns, scan.bad_pixels)
        last_yield_s = time.monotonic()
        result = None
        # a preview runs on the training thread, on the training's device, and leaves the model there
        preview = functools.partial(inference.network_object, scan=scan, execution=config.execution, release=False)
        wanted = {"preview": preview} if library.previews_wanted(values) else {}
        for event in self._run_training([scan], config, values, initial_model=initial, **wanted):
            if isinstance(event, DoneEvent):
                result = event.result
                break
            losses.append(LossValue(int(event.report.epoch), shown_loss(event.report.train_loss, floor)))
            progress = int(event.report.epoch)  # EpochReport.epoch counts from 1
            attached = library.report_progress(progress, goal)
            # without the monitor the Stop button is only seen at a yield: yield on the preview cadence
            if event.preview is not None or (
                not attached and time.monotonic() - last_yield_s >= float(values["preview_interval_s"])
            ):
                obj, lit = (event.preview.object, event.preview.illuminated) if event.preview is not None else (None, None)
                product = output_product(parameters, obj, illuminated=lit, losses=losses, fill_with_input=fill)
                yield ReconstructOutput(product, progress=progress)
                last_yield_s = time.monotonic()
        if result is None:
            return None
        model = result.model
        losses[:] = losses_from_history(result.history, floor)
        # loaded before anything else, so Save Model works at once (after Stop too)
        name = parameters.product.metadata.name
        library.model_slot.set(model, f"self-supervised on {name}", file=library.keep_trained_model(model, name))
        logger.info(
            "Trained in %.1f s (best epoch %d%s)", result.seconds, result.best_epoch, ", stopped early" if result.stopped else ""
        )
        if not result.stopped:
            return model
        logger.info("Stopped: the best model so far (epoch %d) is loaded; its network object is the result", result.best_epoch)
        recon = inference.network_object(model, scan, execution=config.execution)
        product = output_product(parameters, recon.object, illuminated=recon.illuminated, losses=losses, fill_with_input=fill)
        yield ReconstructOutput(product, progress=goal)
        return None

    def _stages(
        self, parameters: ReconstructInput, scan: Any, model: Any | None, config: RunConfig, values: dict[str, Any], **run: Any
    ) -> Iterator[ReconstructOutput]:
        """The engine's stages as products: the network's object at once, refinement previews (when wanted)
        at the preview cadence, then the result (progress ``goal``).

        ``run``: ``losses`` (what the product shows so far; refinement's NLLs are numbered on after them),
        ``progress_offset`` (the network is progress ``progress_offset + 1``) and ``goal``.
        """
        from ptychodus_pinn.engine.inference import FinalResult, NetworkStage, reconstruct_stages

        library, losses, goal = self._library, run["losses"], run["goal"]
        fill = values["fill_unilluminated"] == "input object"
        first_epoch = max((int(loss.epoch) for loss in losses), default=0)
        previews, interval_s = library.previews_wanted(values), float(values["preview_interval_s"])
        illuminated, shown, last_yield_s = None, 0, time.monotonic()

        def output(obj: Any, lit: Any, progress: int, probe: Any = None) -> ReconstructOutput:
            product = output_product(parameters, obj, illuminated=lit, losses=list(losses), fill_with_input=fill, probe=probe)
            return ReconstructOutput(product, progress=progress)

        execution, refinement = config.execution, config.refinement
        alternative = library.shipped_alternative(model, scan.size_px, config.model.n_filters_scale)
        for event in reconstruct_stages(
            model, scan, execution=execution, refinement=refinement, should_stop=library.stop_requested, alternative=alternative
        ):
            if isinstance(event, FinalResult):
                result = event.reconstruction
                probe = result.probe if result.refinement is not None and refinement.refine_probe else None
                yield output(result.object, result.illuminated, goal, probe)
            elif isinstance(event, NetworkStage):
                illuminated = event.reconstruction.illuminated
                library.report_progress(run["progress_offset"] + 1, goal)
                yield output(event.reconstruction.object, illuminated, run["progress_offset"] + 1)
                last_yield_s = time.monotonic()
            else:
                report = event.report
                if not report.half_resolution:  # its NLL is over the detector's centre: not the curve's quantity
                    losses.append(LossValue(first_epoch + int(report.epoch), shown_loss(report.nll, event.nll_floor)))
                progress = run["progress_offset"] + 1 + int(report.epoch)
                library.report_progress(progress, goal)
                due = time.monotonic() - last_yield_s >= (FIRST_REFINEMENT_PREVIEW_S if shown == 0 else interval_s)
                if previews and due and report.snapshot is not None and not report.stopped and report.epoch < report.epochs:
                    yield output(report.snapshot(), illuminated, progress)
                    shown, last_yield_s = shown + 1, time.monotonic()

    def _warm_start(self, size_px: int, config: RunConfig, values: dict[str, Any]) -> tuple[Any | None, str, RunConfig]:
        """(model, how the log names it, the run's config) that training starts from with Warm Start on: the loaded
        model, else the shipped one, when its architecture fits the settings (Network Width 0 takes the model's
        width); (None, "", config) for training from scratch."""
        if not values["warm_start"]:
            return None, "", config
        initial, source = self._library.initial_model_for(size_px, config.model.n_filters_scale)
        if initial is not None and width_is_auto(values):
            config = replace(config, model=replace(config.model, n_filters_scale=initial.config.n_filters_scale))
        changes = architecture_changes(initial.config, config.model) if initial is not None else []
        if changes:
            logger.info(
                "Warm start skipped: %s has another architecture than the settings; to start from it set %s",
                source,
                ", ".join(changes),
            )
            return None, "", config
        return initial, source, config

    def _run_training(self, scans: list[Any], config: RunConfig, values: dict[str, Any], **options: Any) -> Iterator[Any]:
        """Train on a worker thread (``options``: initial_model, preview); yields epoch events and the final one."""
        from ptychodus_pinn.engine.background import train_in_background

        interval_s = float(values["preview_interval_s"])
        stop_requested = self._library.stop_requested
        return train_in_background(scans, config, stop_requested=stop_requested, preview_interval_s=interval_s, **options)


class SelfSupervisedReconstructor(_PinnReconstructor, Reconstructor):
    """One click: the network's object, then refinement; optionally trained on the scan first."""

    def get_progress_goal(self) -> int:  # training, network, refinement
        return (self._setting("epochs") if self._setting("train_first") else 0) + 1 + self._refinement_epochs()

    def reconstruct(self, parameters: ReconstructInput) -> Iterator[ReconstructOutput]:
        with _reported("PtychoPINN (PyTorch) reconstruction"):
            yield from self._reconstruct(parameters, train_first=bool(self._setting("train_first")))


class TrainInferReconstructor(_PinnReconstructor, TrainableReconstructor):
    """Train on exported files or a workflow directory (PINN or supervised), Load/Save Model, and Infer on a scan."""

    _inferring = False  # ptychodus asks one method for the goal of Train and of Infer

    def get_progress_goal(self) -> int:
        return 1 + self._refinement_epochs() if self._inferring else self._setting("epochs")

    def reconstruct(self, parameters: ReconstructInput) -> Iterator[ReconstructOutput]:
        """Infer with the loaded model (the GUI's Infer button needs one); without one (``ptychodus -b reconstruct``
        found no ``model.pinn.pt`` in its input folder) the shipped model for the scan's N, as one click does."""
        with _reported("PtychoPINN (PyTorch) inference"):
            self._inferring = True
            try:
                yield from self._reconstruct(parameters, train_first=False)
            finally:
                self._inferring = False

    def is_model_loaded(self) -> bool:
        return self._library.model_slot.get() is not None

    def get_model_file_filter(self) -> str:
        return MODEL_FILE_FILTER

    def get_model_file_extension(self) -> str:
        return MODEL_FILE_EXTENSION

    def load_model_from_file(self, file_path: Path) -> None:
        with _reported("Loading the model"):
            self._library.load_model(file_path)

    def save_model(self, file_path: Path) -> None:
        self._library.save_model(file_path)

    def get_training_data_file_filter(self) -> str:
        return TRAINING_DATA_FILE_FILTER

    def export_training_data(self, file_path: Path, parameters: ReconstructInput) -> None:
        """ptychodus's PtychoPINN ``.npz`` layout (diff3d, x/ycoords, probeGuess, objectGuess, ...)."""
        path = Path(file_path)
        if path.suffix.lower() != ".npz":
            path = path.with_name(path.name + ".npz")
        save_ptychopinn_training_data(path, parameters, inpaint_bad_pixels=False)
        logger.info("Exported %d patterns to %s", len(parameters.product.probe_positions), path)

    def train(self, input_path: Path, output_path: Path) -> Iterator[TrainOutput]:
        """Train on ``input_path`` — a ptychodus workflow directory (``ptychodus -b train``: its diffraction.h5 and
        product.h5), else a folder of exported training files or one file — and save the model into
        ``output_path`` (a folder gets ``model.pinn.pt``, which ``ptychodus -b reconstruct`` loads)."""
        from ptychodus_pinn.engine.background import DoneEvent
        from ptychodus_pinn.engine.data import load_training_scans

        with _reported("PtychoPINN (PyTorch) training"):
            input_path, output_path = Path(input_path), Path(output_path)
            values = self._library.settings.values()
            model_path = model_path_for(output_path)
            check_model_output(model_path, input_path)  # before training, never after
            supervised = self._mode is TrainingMode.SUPERVISED
            if is_workflow_directory(input_path):
                scans = [workflow_directory_scan(input_path, with_object=supervised)]
            else:
                scans = load_training_scans(input_path, supervised=supervised)
            mode = self._training_mode(values)
            config = settings_to_run_config(values, N=scans[0].size_px, mode=mode)
            initial, source, config = self._warm_start(scans[0].size_px, config, values)
            logger.info(
                "%s training on %d scan(s) from %s for %d epochs, %s",
                mode.value,
                len(scans),
                input_path,
                config.training.epochs,
                f"starting from {source}" if initial is not None else "from scratch",
            )
            train_losses: list[LossValue] = []
            val_losses: list[LossValue] = []
            result = None
            for event in self._run_training(scans, config, values, initial_model=initial):
                if isinstance(event, DoneEvent):
                    result = event.result
                    break
                report = event.report
                train_losses.append(LossValue(int(report.epoch), float(report.train_loss)))
                if report.val_loss is not None:
                    val_losses.append(LossValue(int(report.epoch), float(report.val_loss)))
                # TrainOutput is cheap for ptychodus (progress only), so one per epoch is fine
                yield TrainOutput(list(train_losses), list(val_losses), progress=int(report.epoch))
            if result is None:
                return
            self._library.model_slot.set(result.model, f"{mode.value} training on {input_path.name}")
            model_path.parent.mkdir(parents=True, exist_ok=True)
            self._library.save_model(model_path)
            logger.info(
                "Trained %d epochs in %.1f s (best epoch %d%s)",
                len(result.history),
                result.seconds,
                result.best_epoch,
                ", stopped early" if result.stopped else "",
            )
            yield TrainOutput(train_losses, val_losses, progress=config.training.epochs)


def model_path_for(output_path: Path) -> Path:
    """The model file a training writes: into a folder (existing, or a name without suffix) or the file named."""
    from ptychodus_pinn.engine.persistence import model_file_path

    return model_file_path(output_path, folder_basename=StandardFileLayout.MODEL_BASENAME)


def check_model_output(model_path: Path, input_path: Path) -> None:
    """Refuse, before training, a model location that cannot be written or that is a training file."""
    from ptychodus_pinn.app.outputs import check_output_file, check_output_folder, check_outputs_spare_inputs

    check_output_folder(model_path.parent, "model output")
    if model_path.parent.is_dir():
        check_output_file(model_path, "model output")
    if is_workflow_directory(input_path):  # what it reads: a model there from an earlier training may be replaced
        files = [input_path / StandardFileLayout.DIFFRACTION, input_path / StandardFileLayout.PRODUCT]
    elif input_path.is_dir():
        files = [path for path in input_path.iterdir() if path.is_file()]
    else:
        files = [input_path] if input_path.is_file() else []
    check_outputs_spare_inputs({model_path: "model output"}, dict.fromkeys(files, "training data"))
