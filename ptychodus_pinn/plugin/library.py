"""The "PtychoPINN (PyTorch)" reconstructor library, on ptychodus's own ABCs.

Three entries (ptychodus shows them as ``ptychopinn (pytorch)_<name>``):

* ``reconstruct`` — one click, in stages that each yield a product: the network's object (the
  loaded model, else the shipped pretrained one for the scan's N; seconds), then joint refinement
  against all patterns (previews while it sharpens, then the final object). With "Train On The Scan
  First" the network is first trained on the scan (self-supervised, warm-started from the loaded or
  shipped model when its architecture fits the settings). A plain ``Reconstructor``, so the button
  reads "Reconstruct" and needs no model.
* ``train+infer`` — a ``TrainableReconstructor``: Train on a directory of exported training files
  (ptychodus's Export Training Data writes them), Load Model, and Infer on a scan (network, then
  refinement, staged the same way).
* ``train+infer supervised`` — the same with supervised training on files that carry objects.

All three share one model slot. Torch and the engine are imported on first use only. ptychodus's
batch mode (``ptychodus -b reconstruct``) drives the same generators.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
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

from ptychodus_pinn.engine.config import TrainingMode

from .convert import losses_from_history, output_product, poisson_loss_floor, reconstruct_input_to_scan, shown_loss
from .runner import DoneEvent, EpochEvent, ErrorEvent, TrainingRun, release_device_memory
from .settings import FIELDS_BY_KEY, PluginSettings, plugin_option, settings_to_run_config

LIBRARY_NAME = "PtychoPINN (PyTorch)"
LOGGER_NAME = "ptychodus_pinn"  # the engine logs below it, so its messages reach the log panel too
MODEL_FILE_EXTENSION = ".pinn.pt"
MODEL_FILE_FILTER = f"PtychoPINN (PyTorch) model (*{MODEL_FILE_EXTENSION})"
TRAINING_DATA_FILE_FILTER = "PtychoPINN training data (*.npz)"
TRAINING_FILE_SUFFIXES = (".npz", ".h5", ".hdf5", ".cxi")

RECONSTRUCT_NAME = "Reconstruct"
TRAIN_INFER_NAME = "Train+Infer"
SUPERVISED_NAME = "Train+Infer Supervised"
SHIPPED_MODEL_SOURCE = "the shipped pretrained model"
# the first refinement preview comes this soon after the network's object (the user sees it sharpen);
# later ones follow the Preview Interval setting
FIRST_REFINEMENT_PREVIEW_S = 2.0

logger = logging.getLogger(LOGGER_NAME)


class ModelSlot:
    """The model shared by the library's reconstructors (trained, loaded or pretrained)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: Any | None = None
        self.source = ""
        self.observers: list[Callable[[], None]] = []

    def get(self) -> Any | None:
        with self._lock:
            return self._model

    def set(self, model: Any | None, source: str) -> None:
        with self._lock:
            self._model = model
            self.source = source if model is not None else ""
        for observer in list(self.observers):
            try:
                observer()
            except Exception:
                logger.debug("model observer failed", exc_info=True)

    def describe(self) -> str:
        model = self.get()
        if model is None:
            return "No model loaded"
        config = getattr(model, "config", None)
        size = f"N={config.N}, gridsize={config.gridsize}, width={config.n_filters_scale}, {config.mode}" if config else ""
        return f"{self.source} ({size})" if size else self.source


class PinnReconstructorLibrary(ReconstructorLibrary):
    """ptychodus library "PtychoPINN (PyTorch)"; one instance per ptychodus ModelCore."""

    def __init__(self, settings_registry: SettingsRegistry, *, is_developer_mode_enabled: bool = False) -> None:
        super().__init__(LOGGER_NAME)
        self.settings = PluginSettings(settings_registry)
        self.model_slot = ModelSlot()
        self.is_developer_mode_enabled = is_developer_mode_enabled
        self._task_monitor: Any | None = None
        self._reconstructors: list[Reconstructor] = [
            SelfSupervisedReconstructor(self),
            TrainInferReconstructor(self, TRAIN_INFER_NAME, TrainingMode.PINN),
            TrainInferReconstructor(self, SUPERVISED_NAME, TrainingMode.SUPERVISED),
        ]

    @property
    def name(self) -> str:
        return LIBRARY_NAME

    def __iter__(self) -> Iterator[Reconstructor]:
        return iter(self._reconstructors)

    # -- ptychodus hooks --------------------------------------------------------------------------

    def attach_processing_api(self, processing_api: Any) -> None:
        """Called by the activation hook: lets runs see Stop and report progress between yields."""
        monitor = getattr(processing_api, "task_monitor", None)
        if monitor is not None and hasattr(monitor, "is_stopping") and hasattr(monitor, "update_progress"):
            self._task_monitor = monitor

    def stop_requested(self) -> bool:
        monitor = self._task_monitor
        return bool(monitor is not None and monitor.is_stopping)

    def report_progress(self, progress: int, goal: int) -> bool:
        """Update ptychodus's progress bar without yielding a product; False when not attached."""
        monitor = self._task_monitor
        if monitor is None:
            return False
        monitor.update_progress(progress, goal)
        return True

    # -- models -----------------------------------------------------------------------------------

    def save_model(self, file_path: Path) -> None:
        from ptychodus_pinn.engine.persistence import save_model

        model = self.model_slot.get()
        if model is None:
            raise RuntimeError("No PtychoPINN (PyTorch) model to save: reconstruct, train or load one first")
        path = Path(file_path)
        if not path.name.endswith(MODEL_FILE_EXTENSION):
            path = path.with_name(path.name + MODEL_FILE_EXTENSION)
        save_model(model, path)
        logger.info("Saved the model to %s", path)

    def load_model(self, file_path: Path) -> None:
        from ptychodus_pinn.engine.persistence import load_model

        model = load_model(Path(file_path))
        self.model_slot.set(model, f"loaded from {Path(file_path).name}")
        logger.info("Loaded model %s", self.model_slot.describe())

    def initial_model_for(self, size_px: int) -> Any | None:
        """The loaded model, else a shipped pretrained one, when its pattern size fits the scan."""
        model = self.model_slot.get()
        if model is not None:
            if size_px == model.config.N:
                return model
            logger.info("The loaded model expects N=%d patterns, the scan has N=%d: not using it", model.config.N, size_px)
            return None
        return _pretrained_model(size_px)

    def source_of(self, model: Any) -> str:
        """How the log names a model from :meth:`initial_model_for`."""
        return self.model_slot.source if model is self.model_slot.get() and self.model_slot.source else SHIPPED_MODEL_SOURCE


def _pretrained_model(size_px: int) -> Any | None:
    """A pretrained model shipped with the engine, if the engine offers one for this size."""
    try:
        from ptychodus_pinn.engine import persistence
    except ImportError:
        return None
    finder = getattr(persistence, "load_pretrained", None)
    if finder is None:
        return None
    try:
        return finder(size_px)
    except FileNotFoundError:
        logger.info("No pretrained model ships for N=%d", size_px)
        return None
    except Exception as error:
        logger.warning("The pretrained model for N=%d is unusable (%s: %s)", size_px, type(error).__name__, error)
        return None


# network-shape fields a warm start must share with the settings (ptychodus_pinn.engine.training.check_model_fits)
WARM_START_FIELDS = ("N", "gridsize", "n_filters_scale", "amp_activation", "probe_big")


def model_fits(stored: Any, wanted: Any) -> bool:
    return all(getattr(stored, name) == getattr(wanted, name) for name in WARM_START_FIELDS)


def architecture_changes(stored: Any, wanted: Any) -> list[str]:
    """The settings to change so that ``wanted`` (from the settings) fits ``stored`` (a model's), in words."""
    changes = []
    for name in WARM_START_FIELDS:
        have, want = getattr(stored, name), getattr(wanted, name)
        if have == want:
            continue
        have = getattr(have, "value", have)
        field = FIELDS_BY_KEY.get(name)
        if field is None:  # N: taken from the scan
            changes.append(f"{name}: the model has {have}, the scan {getattr(want, 'value', want)}")
        else:
            changes.append(f"{field.label.rstrip(':')} ({name}) to {have}")
    return changes


def _preview(model: Any, scan: Any, execution: Any) -> Any:
    """The network's object from the model being trained (training thread, between epochs): fast, no refinement."""
    from ptychodus_pinn.engine.inference import reconstruct_network

    was_training = bool(getattr(model, "training", False))
    try:
        return reconstruct_network(model, scan, execution=execution)
    finally:
        model.train(was_training)


def _loss_floor(scan: Any, config: Any) -> float:
    """What ptychodus's loss plot subtracts: the Poisson loss of a perfect fit (see ``poisson_loss_floor``)."""
    from ptychodus_pinn.engine.config import LossKind
    from ptychodus_pinn.engine.physics import EPSILON_COUNTS

    if config.model.mode is not TrainingMode.PINN or config.model.loss is not LossKind.POISSON:
        return 0.0
    return poisson_loss_floor(scan, EPSILON_COUNTS)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def _report(error: BaseException, action: str) -> None:
    """Put a clear one-line message in ptychodus's log panel (the library logger feeds it)."""
    logger.error("%s failed: %s: %s", action, type(error).__name__, error)
    logger.debug("traceback", exc_info=error)


class _PinnReconstructorBase:
    def __init__(self, library: PinnReconstructorLibrary, name: str, mode: TrainingMode) -> None:
        self._library = library
        self._name = name
        self._mode = mode

    @property
    def name(self) -> str:
        return self._name

    def _epochs(self) -> int:
        return int(self._library.settings["epochs"].get_value())

    def _refine_epochs(self) -> int:
        return int(self._library.settings["refine_epochs"].get_value())

    def _network_and_refinement(
        self,
        parameters: ReconstructInput,
        scan: Any,
        model: Any | None,
        config: Any,
        values: dict[str, Any],
        *,
        losses: list[LossValue],
        progress_offset: int,
        goal: int,
    ) -> Iterator[ReconstructOutput]:
        """Stage 1, the network's object (yielded at once); stage 2, refinement (previews, then the result).

        ``losses`` holds what the product shows so far (training); refinement's NLLs are appended,
        numbered on after them. Progress runs ``progress_offset + 1`` (network) to ``goal``. Without a
        model refinement starts from a flat object. If refinement fails (e.g. out of GPU memory) the
        network's object is the final product.
        """
        from ptychodus_pinn.engine.inference import reconstruct_network

        library = self._library
        refinement = config.refinement
        fill = plugin_option(values, "fill_unilluminated") == "input object"

        def product(obj: Any, illuminated: Any, probe: Any = None) -> Any:
            return output_product(
                parameters, obj, illuminated=illuminated, losses=list(losses), fill_with_input=fill, probe=probe
            )

        if model is None and refinement.epochs == 0:
            raise ValueError(
                f"nothing to reconstruct with: no model for N={scan.size_px} patterns (load one, or turn on "
                "Train On The Scan First) and refinement is off (Refinement Epochs 0)"
            )
        network = None
        if model is not None:
            try:
                network = reconstruct_network(model, scan, execution=config.execution)
            finally:
                release_device_memory(model)  # nn.Module.to moves it in place
            progress = progress_offset + 1
            logger.info(
                "Network: %d patterns in %.2f s (%.0f patterns/s)", scan.count, network.seconds, network.patterns_per_second
            )
            if refinement.epochs == 0:
                logger.info("Refinement is off (Refinement Epochs 0): the network's object is the result")
                yield ReconstructOutput(product(network.object, network.illuminated), progress=goal)
                return
            library.report_progress(progress, goal)
            yield ReconstructOutput(product(network.object, network.illuminated), progress=progress)
            if library.stop_requested():
                logger.info("Stopped after the network stage: the network's object is the result")
                return
        yield from self._refinement(
            scan,
            network,
            config,
            losses=losses,
            progress_offset=progress_offset,
            goal=goal,
            product=product,
            preview_interval_s=float(plugin_option(values, "preview_interval_s")),
        )

    def _refinement(
        self,
        scan: Any,
        network: Any | None,
        config: Any,
        *,
        losses: list[LossValue],
        progress_offset: int,
        goal: int,
        product: Callable[..., Any],
        preview_interval_s: float,
    ) -> Iterator[ReconstructOutput]:
        from ptychodus_pinn.engine.refinement import refine_steps
        from ptychodus_pinn.engine.training import torch_device

        library = self._library
        refinement = config.refinement
        floor = poisson_loss_floor(scan)  # refinement reports the Poisson NLL on the engine's scale
        first_epoch = max((int(loss.epoch) for loss in losses), default=0)
        logger.info(
            "Refining the object against all %d patterns: %d epochs, start %s, %s noise, mini-batch %d (growing)%s",
            scan.count,
            refinement.epochs,
            refinement.start.value,
            refinement.noise_model.value,
            refinement.batch_size,
            ", probe refined too" if refinement.refine_probe else "",
        )
        illuminated = None if network is None else network.illuminated
        result = None
        steps = None
        try:
            device = torch_device(config.execution.accelerator)
            steps = refine_steps(
                scan,
                None if network is None else network.object,
                refinement,
                device=device,
                should_stop=library.stop_requested,
            )
            last_yield_s = time.monotonic()
            previews = 0
            while True:
                try:
                    report = next(steps)
                except StopIteration as finished:
                    result = finished.value
                    break
                losses.append(LossValue(first_epoch + int(report.epoch), shown_loss(report.nll, floor)))
                progress = progress_offset + 1 + int(report.epoch)
                library.report_progress(progress, goal)
                interval_s = FIRST_REFINEMENT_PREVIEW_S if previews == 0 else preview_interval_s
                # also how Stop is seen without ptychodus's task monitor: at a yield
                due = time.monotonic() - last_yield_s >= interval_s
                if due and report.snapshot is not None and not report.stopped and report.epoch < report.epochs:
                    yield ReconstructOutput(product(report.snapshot(), illuminated), progress=progress)
                    previews += 1
                    last_yield_s = time.monotonic()
        except Exception as error:
            if network is None:
                raise
            logger.error(
                "Refinement failed (%s: %s); the network's object is the result", type(error).__name__, _first_line(error)
            )
            logger.debug("traceback", exc_info=error)
            yield ReconstructOutput(product(network.object, network.illuminated), progress=goal)
            return
        finally:
            if steps is not None:
                steps.close()
            release_device_memory(None)
        assert result is not None
        scores = ", ".join(f"{name} {value:.4f}" for name, value in sorted(result.start_nll.items()))
        final_nll = result.history[-1].nll if result.history else float("nan")
        logger.info(
            "Refinement started from the %s object (Poisson NLL per pattern: %s); %d of %d epochs in %.1f s%s, "
            "NLL %.4f, result from epoch %d",
            result.start.value,
            scores,
            len(result.history),
            refinement.epochs,
            result.seconds,
            ", stopped" if result.stopped else "",
            final_nll,
            result.best_epoch,
        )
        probe = result.probe if refinement.refine_probe else None
        yield ReconstructOutput(product(result.object, result.illuminated, probe), progress=goal)

    def _run_training(
        self,
        scans: list[Any],
        values: dict[str, Any],
        *,
        initial_model: Any | None,
        preview: Callable[[Any], Any] | None,
    ) -> Iterator[EpochEvent | DoneEvent]:
        """Train on a worker thread; yields epoch events and the final one, raising on errors."""
        config = settings_to_run_config(values, N=scans[0].size_px, mode=self._mode)
        run = TrainingRun(
            scans,
            config,
            initial_model=initial_model,
            preview=preview,
            preview_interval_s=float(plugin_option(values, "preview_interval_s")),
        ).start()
        try:
            for event in run.events(self._library.stop_requested):
                if isinstance(event, ErrorEvent):
                    raise event.error
                if isinstance(event, DoneEvent) and run.stop_requested_at_s is not None:
                    logger.info("Training stopped %.1f s after Stop", time.monotonic() - run.stop_requested_at_s)
                yield event
        finally:
            run.close()  # GeneratorExit from ptychodus's Stop lands here too


class SelfSupervisedReconstructor(_PinnReconstructorBase, Reconstructor):
    """One click: the network's object, then refinement; optionally trained on the scan first."""

    def __init__(self, library: PinnReconstructorLibrary) -> None:
        super().__init__(library, RECONSTRUCT_NAME, TrainingMode.PINN)

    def _train_first(self) -> bool:
        return bool(self._library.settings["train_first"].get_value())

    def get_progress_goal(self) -> int:
        return (self._epochs() if self._train_first() else 0) + 1 + self._refine_epochs()  # training, network, refinement

    def reconstruct(self, parameters: ReconstructInput) -> Iterator[ReconstructOutput]:
        try:
            yield from self._reconstruct(parameters)
        except GeneratorExit:
            raise
        except BaseException as error:
            _report(error, "PtychoPINN (PyTorch) reconstruction")
            raise

    def _reconstruct(self, parameters: ReconstructInput) -> Iterator[ReconstructOutput]:
        library = self._library
        values = library.settings.values()
        scan = reconstruct_input_to_scan(parameters)
        config = settings_to_run_config(values, N=scan.size_px, mode=self._mode)
        train_first = bool(plugin_option(values, "train_first"))
        training_epochs = int(values["epochs"]) if train_first else 0
        goal = training_epochs + 1 + config.refinement.epochs
        library.report_progress(0, goal)
        losses: list[LossValue] = []
        if train_first:
            model = yield from self._train_on_scan(parameters, scan, config, values, losses=losses, goal=goal)
            if model is None:  # stopped mid-training: the best model's network object was the result
                return
        else:
            model = library.initial_model_for(scan.size_px)
            if model is None:
                logger.info(
                    "No network model for N=%d patterns (none loaded, none ships for this size): refinement starts "
                    "from a flat object; load a model or turn on Train On The Scan First to use a network",
                    scan.size_px,
                )
            else:
                source = library.source_of(model)
                if library.model_slot.get() is None:
                    library.model_slot.set(model, source)  # Infer and Save Model work with it afterwards
                logger.info("Reconstructing %d patterns (N=%d) with %s, then refinement", scan.count, scan.size_px, source)
        yield from self._network_and_refinement(
            parameters, scan, model, config, values, losses=losses, progress_offset=training_epochs, goal=goal
        )

    def _train_on_scan(
        self,
        parameters: ReconstructInput,
        scan: Any,
        config: Any,
        values: dict[str, Any],
        *,
        losses: list[LossValue],
        goal: int,
    ) -> Generator[ReconstructOutput, None, Any | None]:
        """Self-supervised training on the scan with previews; returns the trained model (loaded in the slot).

        After Stop the best model so far is loaded, its network object is yielded as the final
        product and None is returned: the run ends there (no refinement after Stop).
        """
        library = self._library
        fill = plugin_option(values, "fill_unilluminated") == "input object"
        initial = library.initial_model_for(scan.size_px) if plugin_option(values, "warm_start") else None
        if initial is not None and not model_fits(initial.config, config.model):
            logger.info(
                "Warm start skipped: %s has another architecture than the settings; to start from it set %s",
                library.source_of(initial),
                ", ".join(architecture_changes(initial.config, config.model)),
            )
            initial = None
        logger.info(
            "Self-supervised training on %d patterns (N=%d) for %d epochs%s, then network and refinement",
            scan.count,
            scan.size_px,
            int(values["epochs"]),
            f", starting from {library.source_of(initial)}" if initial is not None else " from scratch",
        )
        floor = _loss_floor(scan, config)
        last_yield_s = time.monotonic()
        preview_interval_s = float(plugin_option(values, "preview_interval_s"))
        result = None
        for event in self._run_training(
            [scan],
            values,
            initial_model=initial,
            preview=lambda model: _preview(model, scan, config.execution),
        ):
            if isinstance(event, DoneEvent):
                result = event.result
                break
            losses.append(LossValue(int(event.report.epoch), shown_loss(event.report.train_loss, floor)))
            progress = int(event.report.epoch)  # EpochReport.epoch counts from 1
            attached = library.report_progress(progress, goal)
            now_s = time.monotonic()
            # without the monitor the Stop button is only seen at a yield: yield on the preview cadence
            if event.preview is not None or (not attached and now_s - last_yield_s >= preview_interval_s):
                obj = event.preview.object if event.preview is not None else None
                ill = event.preview.illuminated if event.preview is not None else None
                yield ReconstructOutput(
                    output_product(parameters, obj, illuminated=ill, losses=losses, fill_with_input=fill),
                    progress=progress,
                )
                last_yield_s = time.monotonic()
        if result is None:
            return None
        model = result.model
        losses[:] = losses_from_history(result.history, floor)
        # loaded before anything else, so Save Model works at once (after Stop too)
        library.model_slot.set(model, f"self-supervised on {parameters.product.metadata.name}")
        logger.info(
            "Trained in %.1f s (best epoch %d%s)", result.seconds, result.best_epoch, ", stopped early" if result.stopped else ""
        )
        if not result.stopped:
            return model
        from ptychodus_pinn.engine.inference import reconstruct_network

        logger.info("Stopped: the best model so far (epoch %d) is loaded; its network object is the result", result.best_epoch)
        try:
            recon = reconstruct_network(model, scan, execution=config.execution)
        finally:
            release_device_memory(model)
        yield ReconstructOutput(
            output_product(parameters, recon.object, illuminated=recon.illuminated, losses=losses, fill_with_input=fill),
            progress=goal,
        )
        return None


class TrainInferReconstructor(_PinnReconstructorBase, TrainableReconstructor):
    """Train on exported files (PINN or supervised), Load/Save Model, and Infer on a scan."""

    _inferring = False  # ptychodus asks one method for the goal of Train and of Infer

    def get_progress_goal(self) -> int:
        return 1 + self._refine_epochs() if self._inferring else self._epochs()

    # -- inference --------------------------------------------------------------------------------

    def reconstruct(self, parameters: ReconstructInput) -> Iterator[ReconstructOutput]:
        try:
            yield from self._infer(parameters)
        except GeneratorExit:
            raise
        except BaseException as error:
            _report(error, "PtychoPINN (PyTorch) inference")
            raise

    def _infer(self, parameters: ReconstructInput) -> Iterator[ReconstructOutput]:
        library = self._library
        model = library.model_slot.get()
        if model is None:
            raise RuntimeError("No model loaded: Train, Load Model, or use the one-click Reconstruct entry first")
        values = library.settings.values()
        scan = reconstruct_input_to_scan(parameters)
        if scan.size_px != model.config.N:
            raise ValueError(
                f"the model expects {model.config.N}x{model.config.N} patterns, the scan has {scan.size_px}x{scan.size_px}"
            )
        config = settings_to_run_config(values, N=scan.size_px, mode=model.config.mode)
        goal = 1 + config.refinement.epochs
        self._inferring = True
        try:
            library.report_progress(0, goal)
            logger.info("Inferring %d patterns with %s, then refinement", scan.count, library.model_slot.describe())
            yield from self._network_and_refinement(
                parameters, scan, model, config, values, losses=[], progress_offset=0, goal=goal
            )
        finally:
            self._inferring = False

    # -- models -----------------------------------------------------------------------------------

    def is_model_loaded(self) -> bool:
        return self._library.model_slot.get() is not None

    def get_model_file_filter(self) -> str:
        return MODEL_FILE_FILTER

    def get_model_file_extension(self) -> str:
        return MODEL_FILE_EXTENSION

    def load_model_from_file(self, file_path: Path) -> None:
        try:
            self._library.load_model(file_path)
        except Exception as error:
            _report(error, "Loading the model")
            raise

    def save_model(self, file_path: Path) -> None:
        self._library.save_model(file_path)

    # -- training data ----------------------------------------------------------------------------

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
        try:
            yield from self._train(Path(input_path), Path(output_path))
        except GeneratorExit:
            raise
        except BaseException as error:
            _report(error, "PtychoPINN (PyTorch) training")
            raise

    def _train(self, input_path: Path, output_path: Path) -> Iterator[TrainOutput]:
        library = self._library
        values = library.settings.values()
        model_path = model_path_for(output_path)
        check_model_output(model_path, input_path)  # before training, never after
        scans = load_training_scans(input_path, supervised=self._mode is TrainingMode.SUPERVISED)
        goal = int(values["epochs"])
        train_losses: list[LossValue] = []
        val_losses: list[LossValue] = []
        result = None
        for event in self._run_training(scans, values, initial_model=None, preview=None):
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
        model = release_device_memory(result.model)
        library.model_slot.set(model, f"{self._mode.value} training on {input_path.name}")
        if model_path.parent != output_path.parent:
            output_path.mkdir(parents=True, exist_ok=True)
        library.save_model(model_path)
        logger.info(
            "Trained %d epochs in %.1f s (best epoch %d%s)",
            len(result.history),
            result.seconds,
            result.best_epoch,
            ", stopped early" if result.stopped else "",
        )
        yield TrainOutput(train_losses, val_losses, progress=goal)


def model_path_for(output_path: Path) -> Path:
    """The model file a training writes: into a folder (existing, or a name without suffix) or the file named."""
    if output_path.is_dir() or not output_path.suffix:
        return output_path / f"{StandardFileLayout.MODEL_BASENAME}{MODEL_FILE_EXTENSION}"
    if not output_path.name.endswith(MODEL_FILE_EXTENSION):
        return output_path.with_name(output_path.name + MODEL_FILE_EXTENSION)  # as save_model names it
    return output_path


def check_model_output(model_path: Path, input_path: Path) -> None:
    """Refuse, before training, a model location that cannot be written or that is a training file."""
    from ptychodus_pinn.app.outputs import check_output_file, check_output_folder, check_outputs_spare_inputs

    folder = model_path.parent
    check_output_folder(folder, "model output")
    if folder.is_dir():
        check_output_file(model_path, "model output")
    inputs = {input_path: "training data"} if input_path.is_file() else {}
    if input_path.is_dir():
        inputs = {path: "training data" for path in input_path.iterdir() if path.is_file()}
    check_outputs_spare_inputs({model_path: "model output"}, inputs)


def load_training_scans(path: Path, *, supervised: bool) -> list[Any]:
    """Every readable scan file in a directory (or the one file given); unreadable ones are reported."""
    from ptychodus_pinn.engine.data import ScanError, load_scan

    if path.is_dir():
        files = sorted(
            p
            for p in path.iterdir()
            if p.is_file() and p.suffix.lower() in TRAINING_FILE_SUFFIXES and not p.name.endswith(MODEL_FILE_EXTENSION)
        )
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
        raise FileNotFoundError(
            f"no usable training files in {path} (looked for {', '.join(TRAINING_FILE_SUFFIXES)}); "
            "write them with Export Training Data"
        )
    sizes = {scan.size_px for scan in scans}
    if len(sizes) > 1:
        raise ValueError(f"training files have different pattern sizes {sorted(sizes)}; train on one size at a time")
    logger.info("Training on %d file(s), %d patterns", len(scans), sum(scan.count for scan in scans))
    return scans
