"""Settings panel of "PtychoPINN (PyTorch)", built with ptychodus's ParameterViewBuilder.

The only PyQt5 importer of the project. Built from the same field table as the settings mapping
(``ptychodus_pinn.plugin.settings.FIELDS``), so every setting has a widget and a tool tip. Panels
of the three reconstructors share the parameters (ptychodus keeps them in sync) and the model.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from pathlib import Path
from typing import Any, ClassVar

from ptychodus.api.observer import Observable, Observer
from ptychodus.controller.data import FileDialogFactory
from ptychodus.controller.parameters import ParameterViewBuilder, ParameterViewController
from ptychodus.controller.processing import ReconstructorViewControllerFactory
from PyQt5.QtCore import QObject, QRegularExpression, Qt, pyqtSignal
from PyQt5.QtGui import QRegularExpressionValidator
from PyQt5.QtWidgets import QComboBox, QHBoxLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget

from ptychodus_pinn.engine.config import TrainingMode
from ptychodus_pinn.plugin.library import (
    LIBRARY_NAME,
    MODEL_FILE_FILTER,
    RECONSTRUCT_NAME,
    SUPERVISED_NAME,
    TRAIN_INFER_NAME,
    PinnReconstructorLibrary,
)
from ptychodus_pinn.plugin.settings import ACCELERATOR_CHOICES, Field, Kind, Section, clamp_setting, settings_to_run_config

logger = logging.getLogger(__name__)

DESCRIPTIONS = {
    RECONSTRUCT_NAME.casefold(): (
        "One click, in stages: the network's object within seconds (the loaded model, else the shipped "
        "pretrained one), then refinement against all patterns, shown as it sharpens. Train On The "
        "Scan First trains the network on this scan (no ground truth) before."
    ),
    TRAIN_INFER_NAME.casefold(): (
        "Train: choose a directory of files written by Export Training Data; the model is saved there "
        "as model.pinn.pt. Infer: the loaded model's object for the selected scan, then refinement."
    ),
    SUPERVISED_NAME.casefold(): ("Like Train+Infer, but trains against the objects stored in the training files (supervised)."),
}


class _Signals(QObject):
    """Carries notifications from worker threads to the GUI thread (queued connections)."""

    model_changed = pyqtSignal()
    devices_detected = pyqtSignal(list)


def detect_accelerators() -> list[str]:
    """Accelerators actually present, e.g. ``cuda:0 (NVIDIA H200)``; imports torch (call off the GUI thread)."""
    try:
        import torch
    except ImportError:
        return []
    found = [f"cuda:{index} ({torch.cuda.get_device_name(index)})" for index in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps (Apple GPU)")
    return found


def warm_up_engine() -> None:
    """Import the engine's reconstruction modules ahead of the first click (off the GUI thread).

    ``ptychodus_pinn.engine.inference`` imports the training module and with it Lightning: seconds on a
    CPU, which would otherwise delay the network's first object of the session.
    """
    try:
        for module in ("ptychodus_pinn.engine.inference", "ptychodus_pinn.engine.refinement"):
            importlib.import_module(module)
    except Exception:
        logger.debug("engine warm-up import failed", exc_info=True)


class _Devices:
    """Detects devices once per process, in a thread, and fills every accelerator combo box."""

    _lock = threading.Lock()
    _found: list[str] | None = None
    _signals: _Signals | None = None
    _combos: ClassVar[list[QComboBox]] = []

    @classmethod
    def register(cls, combo: QComboBox) -> None:
        with cls._lock:
            cls._combos.append(combo)
            if cls._found is not None:
                cls._fill(combo, cls._found)
                return
            if cls._signals is None:
                cls._signals = _Signals()
                cls._signals.devices_detected.connect(cls._on_detected)
                threading.Thread(target=cls._detect, name="ptychodus-pinn-devices", daemon=True).start()

    @classmethod
    def _detect(cls) -> None:
        try:
            found = detect_accelerators()
        except Exception:
            logger.debug("device detection failed", exc_info=True)
            found = []
        signals = cls._signals
        if signals is not None:
            signals.devices_detected.emit(found)
        warm_up_engine()

    @classmethod
    def _on_detected(cls, found: list[str]) -> None:
        with cls._lock:
            cls._found = list(found)
            combos = list(cls._combos)
        for combo in combos:
            with contextlib.suppress(RuntimeError):  # widget already deleted
                cls._fill(combo, found)

    @staticmethod
    def _fill(combo: QComboBox, found: list[str]) -> None:
        current = combo.currentText()
        for item in found:
            if combo.findText(item) < 0:
                combo.addItem(item)
        combo.setCurrentText(current)


class ModelActionsViewController(ParameterViewController):
    """Model status with Load/Save buttons (ptychodus's panel has Load Model, but no Save Model)."""

    def __init__(self, library: PinnReconstructorLibrary, file_dialog_factory: FileDialogFactory) -> None:
        super().__init__()
        self._library = library
        self._file_dialog_factory = file_dialog_factory
        self._widget = QWidget()
        self._status = QLabel()
        self._status.setWordWrap(True)
        self._status.setToolTip("The model shared by the PtychoPINN (PyTorch) entries.")
        self.load_button = QPushButton("Load Model...")
        self.load_button.setToolTip("Load a model file (*.pinn.pt) written by Save Model or ptychodus-pinn train.")
        self.save_button = QPushButton("Save Model...")
        self.save_button.setToolTip("Save the current model (trained, loaded or from the last one-click run).")
        self.forget_button = QPushButton("Use Shipped Model")
        self.forget_button.setToolTip(
            "Unload the current model: the shipped pretrained model is used where one fits the scan's N. The model in "
            "use (loaded, saved or trained here) is otherwise the one the next ptychodus session starts with."
        )
        buttons = QHBoxLayout()
        buttons.addWidget(self.load_button)
        buttons.addWidget(self.save_button)
        buttons.addWidget(self.forget_button)
        layout = QVBoxLayout()
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._status)
        layout.addLayout(buttons)
        self._widget.setLayout(layout)
        self._signals = _Signals()
        self._signals.model_changed.connect(self._sync)
        library.model_slot.observers.append(self._signals.model_changed.emit)
        self.load_button.clicked.connect(self._load)
        self.save_button.clicked.connect(self._save)
        self.forget_button.clicked.connect(lambda: self._library.model_slot.set(None, ""))
        self._sync()

    def get_widget(self) -> QWidget:
        return self._widget

    def _sync(self) -> None:
        slot = self._library.model_slot
        self._status.setText(f"Model: {slot.describe()}")
        in_use = slot.pending is not None or slot.get() is not None  # pending first: never load just to draw
        self.save_button.setEnabled(in_use)
        self.forget_button.setEnabled(in_use)

    def _load(self) -> None:
        path, _ = self._file_dialog_factory.get_open_file_path(
            self._widget, "Load Model", name_filters=[MODEL_FILE_FILTER], selected_name_filter=MODEL_FILE_FILTER
        )
        if path is not None:
            self._run("Load Model", self._library.load_model, path)

    def _save(self) -> None:
        path, _ = self._file_dialog_factory.get_save_file_path(
            self._widget, "Save Model", name_filters=[MODEL_FILE_FILTER], selected_name_filter=MODEL_FILE_FILTER
        )
        if path is not None:
            self._run("Save Model", self._library.save_model, path)

    def _run(self, actor: str, action: Any, path: Path) -> None:
        try:
            action(path)
        except Exception as error:
            logger.exception("%s failed", actor)
            from ptychodus.view.widgets import ExceptionDialog

            ExceptionDialog.show_exception(actor, error)


class SettingsCheckViewController(ParameterViewController, Observer):
    """Shows at once whether the settings form a valid configuration, and why not."""

    def __init__(self, library: PinnReconstructorLibrary, mode: TrainingMode) -> None:
        super().__init__()
        self._library = library
        self._mode = mode
        self._label = QLabel()
        self._label.setWordWrap(True)
        self._label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        library.settings.add_observer(self)
        self._sync()

    def get_widget(self) -> QWidget:
        return self._label

    @property
    def message(self) -> str:
        return self._label.text()

    def _sync(self) -> None:
        try:
            settings_to_run_config(self._library.settings, N=64, mode=self._mode, device_width=False)
        except ValueError as error:
            self._label.setStyleSheet("color: #b00020")
            self._label.setText(f"Invalid settings: {error}")
        else:
            self._label.setStyleSheet("")
            self._label.setText("")

    def _update(self, observable: Observable) -> None:
        if observable is self._library.settings:
            self._sync()


class PinnViewControllerFactory(ReconstructorViewControllerFactory):
    """ptychodus builds one panel per reconstructor of the library through this factory."""

    def __init__(self, library: PinnReconstructorLibrary, file_dialog_factory: FileDialogFactory) -> None:
        super().__init__()
        self._library = library
        self._file_dialog_factory = file_dialog_factory
        self.widgets: dict[str, QWidget] = {}
        library.attach_view()  # ptychodus builds panels with its GUI only: products are watched, previews worth it

    @property
    def name(self) -> str:
        return LIBRARY_NAME

    def create_view_controller(self, reconstructor_name: str) -> QWidget:
        library = self._library
        builder = ParameterViewBuilder(self._file_dialog_factory)
        description = QLabel(DESCRIPTIONS.get(reconstructor_name.casefold(), ""))
        description.setWordWrap(True)
        builder.add_view_controller_to_top(_StaticViewController(description))
        mode = TrainingMode.SUPERVISED if reconstructor_name.casefold() == SUPERVISED_NAME.casefold() else TrainingMode.PINN
        builder.add_view_controller_to_top(SettingsCheckViewController(library, mode))

        for field, parameter in sorted(library.settings, key=lambda item: _panel_order(item[0])):
            group = _group_title(field)
            if field.kind is Kind.BOOL:
                builder.add_check_box(parameter, field.label, tool_tip=field.tool_tip, group=group)  # type: ignore[arg-type]
            elif field.kind is Kind.INT and (field.maximum or 0) > QT_INT_MAX:
                # ptychodus's integer editor uses a QIntValidator, which cannot hold e.g. the seed's 2**32 - 1
                builder.add_view_controller(_WideIntegerLineEdit(parameter, field), field.label, group=group)
            elif field.kind is Kind.INT:
                builder.add_integer_line_edit(parameter, field.label, tool_tip=field.tool_tip, group=group)  # type: ignore[arg-type]
            elif field.kind is Kind.REAL:
                builder.add_decimal_line_edit(parameter, field.label, tool_tip=field.tool_tip, group=group)  # type: ignore[arg-type]
            elif field.kind is Kind.CHOICE:
                choices = ACCELERATOR_CHOICES if field.key == "accelerator" else field.choices
                builder.add_combo_box(parameter, choices, field.label, tool_tip=field.tool_tip, group=group)
            else:
                builder.add_line_edit(parameter, field.label, tool_tip=field.tool_tip, group=group)  # type: ignore[arg-type]

        builder.add_view_controller_to_bottom(ModelActionsViewController(library, self._file_dialog_factory))
        widget = builder.build_widget()
        widget.setObjectName(f"PtychoPINNTorchPluginPanel:{reconstructor_name}")
        _name_widgets_by_field(widget)
        accelerator = widget.findChild(QComboBox, "accelerator")
        if accelerator is not None:
            _Devices.register(accelerator)
        self.widgets[reconstructor_name] = widget
        return widget


QT_INT_MAX = 2**31 - 1


class _WideIntegerLineEdit(ParameterViewController, Observer):
    """A whole-number editor for ranges beyond a C int; out-of-range input is clamped to the field's range."""

    def __init__(self, parameter: Any, field: Field) -> None:
        super().__init__()
        self._parameter = parameter
        self._field = field
        self._widget = QLineEdit()
        self._widget.setToolTip(field.tool_tip)
        self._widget.setValidator(QRegularExpressionValidator(QRegularExpression(r"-?\d{0,12}")))
        self._sync_model_to_view()
        self._widget.editingFinished.connect(self._sync_view_to_model)
        parameter.add_observer(self)

    def get_widget(self) -> QWidget:
        return self._widget

    def _sync_view_to_model(self) -> None:
        try:
            value = int(self._widget.text())
        except ValueError:
            self._sync_model_to_view()
            return
        self._parameter.set_value(clamp_setting(self._field, value))
        self._sync_model_to_view()

    def _sync_model_to_view(self) -> None:
        self._widget.setText(str(self._parameter.get_value()))

    def _update(self, observable: Observable) -> None:
        if observable is self._parameter:
            self._sync_model_to_view()


class _StaticViewController(ParameterViewController):
    def __init__(self, widget: QWidget) -> None:
        super().__init__()
        self._widget = widget

    def get_widget(self) -> QWidget:
        return self._widget


# The panel's group boxes, top to bottom: what every run uses first, training (optional for the
# one-click entry) after it.
PANEL_GROUPS = ("Execution", "Refinement", "Training", "Model", "Advanced", "Display")


# plugin options shown at the top of the Training group: they switch training on for the one-click entry
TRAINING_SWITCHES = ("train_first", "training_mode", "warm_start")


def _panel_order(field: Field) -> tuple[int, int]:
    switch = TRAINING_SWITCHES.index(field.key) if field.key in TRAINING_SWITCHES else len(TRAINING_SWITCHES)
    return PANEL_GROUPS.index(_group_title(field)), switch


def _group_title(field: Field) -> str:
    if field.key in TRAINING_SWITCHES:
        return "Training"
    return {
        Section.EXECUTION: "Execution",
        Section.REFINEMENT: "Refinement",
        Section.TRAINING: "Training",
        Section.MODEL: "Model",
        Section.ADVANCED: "Advanced",
        Section.PLUGIN: "Display",
    }[field.section]


def _name_widgets_by_field(panel: QWidget) -> None:
    """Give each setting's widget its field key as object name (tests, style sheets, accessibility)."""
    from ptychodus_pinn.plugin.settings import FIELDS

    by_tool_tip = {field.tool_tip: field.key for field in FIELDS}
    for child in panel.findChildren(QWidget):
        key = by_tool_tip.get(child.toolTip())
        if key is not None and not child.objectName():
            child.setObjectName(key)
