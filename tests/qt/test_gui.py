"""The real ptychodus GUI (offscreen) with the plugin: entry in the Algorithm combo, our panel, settings."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("PyQt5")

from PyQt5.QtCore import Qt
from PyQt5.QtWidgets import QComboBox, QLineEdit, QStackedWidget

from ptychodus_pinn.plugin.activation import ReconstructorPlugin, activate, deactivate
from ptychodus_pinn.qt.entry import create_library, reconstructor_plugin

pytestmark = pytest.mark.gui

RECONSTRUCT = "ptychopinn (pytorch)_reconstruct"


def _build_gui(qtbot: Any) -> tuple[Any, Any, Any]:
    from ptychodus.controller import ControllerCore
    from ptychodus.model import ModelCore
    from ptychodus.view import ViewCore

    model = ModelCore(log_level=logging.WARNING)
    view = ViewCore(is_developer_mode_enabled=False)
    qtbot.addWidget(view)
    controller = ControllerCore(model, view)
    return model, view, controller


@pytest.fixture
def gui(qtbot: Any, activated: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any, Any]]:
    monkeypatch.setenv("HOME", str(tmp_path))
    model, view, controller = _build_gui(qtbot)
    yield model, view, controller
    controller._run_tasks_timer.stop()


def _algorithm_combo(view: Any) -> QComboBox:
    for combo in view.processing_view.findChildren(QComboBox):
        if any(combo.itemText(i) == RECONSTRUCT for i in range(combo.count())):
            return combo
    raise AssertionError("the Algorithm combo box does not list our entry")


def _current_panel(view: Any) -> Any:
    stacks = view.processing_view.findChildren(QStackedWidget)
    (stack,) = [s for s in stacks if s.count() > 0 and s.parent() is not None and s.currentWidget() is not None][:1]
    return stack.currentWidget()


def test_entry_selectable_and_settings_follow_widgets(gui: Any, qtbot: Any) -> None:
    model, view, _ = gui
    combo = _algorithm_combo(view)
    index = combo.findText(RECONSTRUCT)
    combo.setCurrentIndex(index)
    combo.textActivated.emit(RECONSTRUCT)  # what a user's click does
    assert model.processing_core.algorithm_parameter.get_value() == RECONSTRUCT
    panel = _current_panel(view)
    assert panel.objectName() == "PtychoPINNTorchPluginPanel:reconstruct"  # ptychodus passes casefolded names
    assert view.processing_view.findChildren(type(panel))  # our panel is inside the processing view

    from ptychodus_pinn.plugin.activation import installed_libraries

    (library,) = installed_libraries(model.processing_core.processing_api)
    accelerator = panel.findChild(QComboBox, "accelerator")
    assert accelerator is not None
    assert [accelerator.itemText(i) for i in range(5)] == ["auto", "cpu", "gpu", "cuda", "mps"]
    accelerator.setCurrentText("cpu")
    accelerator.textActivated.emit("cpu")
    assert library.settings["accelerator"].get_value() == "cpu"

    batch = panel.findChild(QLineEdit, "batch_size")
    assert batch is not None
    batch.clear()
    qtbot.keyClicks(batch, "48")
    qtbot.keyClick(batch, Qt.Key.Key_Return)
    assert library.settings["batch_size"].get_value() == 48

    # the panel reflects settings changed elsewhere (e.g. a loaded .ini)
    library.settings["batch_size"].set_value(12)
    assert batch.text() == "12"
    # every widget in the panel explains itself
    for widget in panel.findChildren((QLineEdit, QComboBox)):
        holder = widget  # Qt shows the nearest ancestor's tool tip (decimal editors wrap a QLineEdit)
        while holder is not None and holder is not panel and not holder.toolTip():
            holder = holder.parentWidget()
        assert holder is not panel and holder is not None and holder.toolTip(), widget
    # one-click entry: a plain Reconstructor, so the button reads Reconstruct and needs no model
    from PyQt5.QtWidgets import QPushButton

    assert any(button.text() == "Reconstruct" for button in view.processing_view.findChildren(QPushButton))


def test_panel_groups_refinement_and_train_first(gui: Any, qtbot: Any) -> None:
    """The panel: Execution, then the Refinement group (every run refines), then Training (opened by Train On The Scan First)."""
    from PyQt5.QtWidgets import QCheckBox, QGroupBox

    from ptychodus_pinn.plugin.activation import installed_libraries

    model, view, _ = gui
    (library,) = installed_libraries(model.processing_core.processing_api)
    combo = _algorithm_combo(view)
    combo.setCurrentIndex(combo.findText(RECONSTRUCT))
    combo.textActivated.emit(RECONSTRUCT)
    panel = _current_panel(view)
    titles = [box.title() for box in panel.findChildren(QGroupBox)]
    assert titles == ["Execution", "Refinement", "Training", "Model", "Advanced", "Display"]
    (refinement,) = [box for box in panel.findChildren(QGroupBox) if box.title() == "Refinement"]
    names = [child.objectName() for child in refinement.findChildren((QLineEdit, QComboBox, QCheckBox))]
    assert names == [
        "refine_epochs", "refine_half_resolution_epochs", "refine_probe", "refine_batch_size", "refine_start",
        "refine_noise_model",
    ]  # fmt: skip
    epochs = refinement.findChild(QLineEdit, "refine_epochs")
    assert epochs.text() == "30" and "0 = network only" in epochs.toolTip()
    assert refinement.findChild(QLineEdit, "refine_half_resolution_epochs").text() == "40"
    epochs.clear()
    qtbot.keyClicks(epochs, "0")
    qtbot.keyClick(epochs, Qt.Key.Key_Return)
    assert library.settings["refine_epochs"].get_value() == 0
    start = refinement.findChild(QComboBox, "refine_start")
    assert [start.itemText(i) for i in range(start.count())] == ["auto", "network", "flat"]
    (training,) = [box for box in panel.findChildren(QGroupBox) if box.title() == "Training"]
    first = training.findChildren(QCheckBox)[0]
    assert first.objectName() == "train_first" and not first.isChecked()
    first.click()
    assert library.settings["train_first"].get_value() is True
    seed = panel.findChild(QLineEdit, "seed")  # the seed's range exceeds a C int (QIntValidator cannot hold it)
    seed.clear()
    qtbot.keyClicks(seed, "4294967295")
    qtbot.keyClick(seed, Qt.Key.Key_Return)
    assert library.settings["seed"].get_value() == 2**32 - 1


def test_invalid_settings_show_a_message_in_the_panel(gui: Any) -> None:
    model, view, _ = gui
    from ptychodus_pinn.plugin.activation import installed_libraries

    (library,) = installed_libraries(model.processing_core.processing_api)
    combo = _algorithm_combo(view)
    combo.setCurrentIndex(combo.findText(RECONSTRUCT))
    combo.textActivated.emit(RECONSTRUCT)
    panel = _current_panel(view)
    library.settings["persistent_workers"].set_value(True)
    from PyQt5.QtWidgets import QLabel

    messages = [label.text() for label in panel.findChildren(QLabel) if label.text().startswith("Invalid settings")]
    assert messages and "persistent_workers" in messages[0]
    library.settings["persistent_workers"].set_value(False)
    assert not [label for label in panel.findChildren(QLabel) if label.text().startswith("Invalid settings")]


def test_broken_panel_factory_leaves_ptychodus_running(qtbot: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))

    def raising_factory(library: Any, file_dialog_factory: Any) -> Any:
        raise RuntimeError("panel factory exploded")

    deactivate()
    try:
        assert activate([ReconstructorPlugin("broken-panel", create_library, raising_factory)])
        _, view, controller = _build_gui(qtbot)
        controller._run_tasks_timer.stop()
        combo = _algorithm_combo(view)  # the library still works; ptychodus shows "not found" for its panel
        assert combo.count() >= 3
    finally:
        deactivate()
        activate([reconstructor_plugin()])
        deactivate()


def test_the_last_sessions_model_is_shown_loaded_on_use_and_can_be_dropped(
    qtbot: Any, activated: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, trained_small: Any
) -> None:
    """A model recorded by an earlier session is named in the Model group without loading it; Use Shipped Model drops it."""
    import json

    from PyQt5.QtWidgets import QLabel, QPushButton

    from ptychodus_pinn.engine.persistence import save_model
    from ptychodus_pinn.plugin.activation import installed_libraries
    from ptychodus_pinn.plugin.library import default_record_path

    monkeypatch.setenv("HOME", str(tmp_path))
    kept = save_model(trained_small.model, tmp_path / "earlier.pinn.pt")
    default_record_path().parent.mkdir(parents=True)
    default_record_path().write_text(json.dumps({"model_file": str(kept)}))
    model, view, controller = _build_gui(qtbot)
    try:
        (library,) = installed_libraries(model.processing_core.processing_api)
        combo = _algorithm_combo(view)
        combo.setCurrentIndex(combo.findText(RECONSTRUCT))
        combo.textActivated.emit(RECONSTRUCT)
        panel = _current_panel(view)
        status = [label.text() for label in panel.findChildren(QLabel) if label.text().startswith("Model: ")]
        assert status == ["Model: earlier.pinn.pt (in use when ptychodus last closed; loads on first use)"]
        assert library.model_slot.pending == kept  # drawing the panel loaded nothing
        (forget,) = [button for button in panel.findChildren(QPushButton) if button.text() == "Use Shipped Model"]
        assert forget.isEnabled()
        forget.click()
        qtbot.waitUntil(lambda: not forget.isEnabled())
        assert library.model_slot.get() is None and not default_record_path().exists()
        status = [label.text() for label in panel.findChildren(QLabel) if label.text().startswith("Model: ")]
        assert status == ["Model: No model loaded (the shipped model is used where one fits)"]
    finally:
        controller._run_tasks_timer.stop()
