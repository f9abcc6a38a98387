"""Screenshots of the real ptychodus GUI with "PtychoPINN (PyTorch)", and the GUI measurements.

    python docs/make_screenshots.py                 # starts Xvfb when DISPLAY is unset
    python docs/make_screenshots.py --offscreen     # no X server: Qt renders the widgets itself
    python docs/make_screenshots.py --offscreen --panel-only   # only gui-panel.png (seconds)

It starts ptychodus's own main window (ModelCore, ViewCore, ControllerCore) with the plugin active,
loads a scan that ptychodus simulates from a Siemens star (tests/plugin/pinn_scene.py), selects
``ptychopinn (pytorch)_reconstruct`` and clicks Reconstruct, then Reconstruct again and Stop. The
runs use "Train On The Scan First" (training, then network and refinement: the slowest one-click
path, the one whose GUI load matters; no model ships for the scene's N=32). It writes to ``--out``
(default ``resources/``):

* ``gui-panel.png`` — the Processing view with our entry selected and its settings panel;
* ``gui-reconstruction.png`` — after the one-click run: the loss curve in ptychodus's plot, the log;
* ``gui-object.png`` — the reconstructed object in ptychodus's Object view;
* ``gui-measurements.json`` — GUI-thread busy fraction, event-loop stalls, Stop latency, quality, time.

The GUI thread's work is measured two ways: time inside ptychodus's 1 s ``run_tasks`` timer (where
yielded products are assigned and the views refresh), and the lateness of a 10 ms heartbeat timer
(everything that kept the event loop from running, painting included).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECONSTRUCT = "ptychopinn (pytorch)_reconstruct"


@contextmanager
def display(offscreen: bool, size: tuple[int, int]) -> Iterator[str]:
    """An X display for Qt: the current one, a fresh Xvfb, or Qt's offscreen platform."""
    if offscreen:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        yield "offscreen"
        return
    if os.environ.get("DISPLAY"):
        os.environ["QT_QPA_PLATFORM"] = "xcb"
        yield os.environ["DISPLAY"]
        return
    if shutil.which("Xvfb") is None:
        raise SystemExit("Xvfb not found: apt-get install xvfb (or pass --offscreen)")
    number = next(n for n in range(99, 200) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    server = subprocess.Popen(
        ["Xvfb", f":{number}", "-screen", "0", f"{size[0]}x{size[1]}x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not Path(f"/tmp/.X11-unix/X{number}").exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("Xvfb did not start")
            time.sleep(0.1)
        os.environ["DISPLAY"] = f":{number}"
        os.environ["QT_QPA_PLATFORM"] = "xcb"
        yield os.environ["DISPLAY"]
    finally:
        server.terminate()
        server.wait(10)


class GuiLoad:
    """Measures the GUI thread: a 10 ms heartbeat's lateness and the time spent in ``run_tasks``."""

    PERIOD_MS = 10

    def __init__(self, model: Any) -> None:
        from PyQt5.QtCore import Qt, QTimer

        self.beats: list[float] = []
        self.run_tasks_s = 0.0
        self.run_tasks_calls = 0
        self._timer = QTimer()
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.timeout.connect(lambda: self.beats.append(time.perf_counter()))
        original = model.run_tasks

        def timed_run_tasks() -> None:
            started = time.perf_counter()
            try:
                original()
            finally:
                self.run_tasks_s += time.perf_counter() - started
                self.run_tasks_calls += 1

        model.run_tasks = timed_run_tasks  # ControllerCore calls self.model.run_tasks() every second
        self.started_s = 0.0

    def start(self) -> None:
        self.beats.clear()
        self.run_tasks_s = 0.0
        self.run_tasks_calls = 0
        self.started_s = time.perf_counter()
        self._timer.start(self.PERIOD_MS)

    def stop(self) -> dict[str, float]:
        self._timer.stop()
        wall_s = time.perf_counter() - self.started_s
        gaps = [b - a for a, b in zip(self.beats, self.beats[1:], strict=False)]
        late_s = sum(max(0.0, gap - self.PERIOD_MS / 1000) for gap in gaps)
        return {
            "wall_s": round(wall_s, 2),
            "run_tasks_s": round(self.run_tasks_s, 3),
            "run_tasks_busy_fraction": round(self.run_tasks_s / wall_s, 4),
            "event_loop_late_fraction": round(late_s / wall_s, 4),
            "longest_stall_s": round(max(gaps, default=0.0), 3),
        }


def wait_until(condition: Callable[[], bool], timeout_s: float, poll_ms: int = 50) -> bool:
    """Run the Qt event loop until ``condition()`` holds (the GUI stays live, its timers fire)."""
    from PyQt5.QtCore import QEventLoop, QTimer

    deadline = time.monotonic() + timeout_s
    loop = QEventLoop()
    timer = QTimer()
    timer.timeout.connect(lambda: (condition() or time.monotonic() > deadline) and loop.quit())
    timer.start(poll_ms)
    if not condition():
        loop.exec_()
    timer.stop()
    return condition()


def spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() > end, seconds + 1)


def screenshot(view: Any, path: Path) -> None:
    """The window as the X server shows it (Xvfb), or as Qt renders it (offscreen)."""
    from PyQt5.QtWidgets import QApplication

    spin(0.5)
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        pixmap = view.grab()
    else:
        geometry = view.frameGeometry()
        pixmap = QApplication.primaryScreen().grabWindow(0, geometry.x(), geometry.y(), geometry.width(), geometry.height())
    if not pixmap.save(str(path)):
        raise OSError(f"could not write {path}")
    print(f"wrote {path} ({pixmap.width()}x{pixmap.height()})")


def find_button(parent: Any, text: str) -> Any:
    from PyQt5.QtWidgets import QPushButton

    for button in parent.findChildren(QPushButton):
        if button.text() == text and button.isVisible():
            return button
    raise LookupError(f"no visible {text!r} button")


def show_phase(image_view: Any) -> None:
    """Phase, rescaled to its range and zoomed to fit, in one of ptychodus's image views."""
    from PyQt5.QtWidgets import QComboBox, QPushButton, QToolButton

    spin(0.3)
    for combo in image_view.findChildren(QComboBox):
        if combo.toolTip() == "Array Component" and combo.findText("Phase") >= 0:
            combo.setCurrentIndex(combo.findText("Phase"))
            combo.textActivated.emit("Phase")
    spin(0.3)
    for button in image_view.findChildren(QPushButton):
        if button.text() == "Auto":
            button.click()
    for tool in image_view.findChildren(QToolButton):
        if tool.toolTip() == "Home":
            tool.click()


def show_group(view: Any, title: str) -> None:
    """Scroll our settings panel so that one of its group boxes is in view (below the Execution group)."""
    from PyQt5.QtWidgets import QGroupBox, QScrollArea

    spin(0.3)
    for area in view.processing_view.findChildren(QScrollArea):
        for box in area.findChildren(QGroupBox):
            if box.title() == title and box.isVisible():
                area.ensureWidgetVisible(box, 0, 10)
                return


def product_combo(view: Any) -> Any:
    from PyQt5.QtWidgets import QComboBox

    for combo in view.processing_view.findChildren(QComboBox):
        if combo.count() and combo.itemText(0) == "sim":
            return combo
    raise LookupError("the Product combo box does not list the simulated scan")


def run(arguments: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    torch.set_num_threads(arguments.threads)
    sys.path.insert(0, str(ROOT / "tests" / "plugin"))
    from pinn_scene import illuminated_mask, load_ptychodus_simulated_scan
    from ptychodus import VERSION_STRING
    from ptychodus.controller import ControllerCore
    from ptychodus.model import ModelCore
    from ptychodus.view import ViewCore
    from PyQt5.QtWidgets import QApplication

    from ptychodus_pinn.engine.metrics import compare
    from ptychodus_pinn.plugin.activation import activate, installed_libraries
    from ptychodus_pinn.qt.entry import reconstructor_plugin

    out = Path(arguments.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ptychodus-pinn-screens-"))
    os.environ["HOME"] = str(work)  # ptychodus reads/writes ~/.ptychodus*: keep the user's untouched
    activate([reconstructor_plugin()])
    app = QApplication(["ptychodus"])
    app.setStyle("Fusion")
    results: dict[str, Any] = {"threads": arguments.threads, "epochs": arguments.epochs, "positions": arguments.positions}
    with ModelCore(log_level=logging.INFO) as model:
        view = ViewCore(is_developer_mode_enabled=False)
        controller = ControllerCore(model, view)
        controller.show_main_window(VERSION_STRING)
        view.setGeometry(0, 0, *arguments.window)
        load = GuiLoad(model)
        (library,) = installed_libraries(model.processing_core.processing_api)
        settings = {
            "accelerator": "cpu",
            "n_filters_scale": 1,
            "batch_size": 16,
            "validation_fraction": 0.0,
            "seed": 0,
            "epochs": arguments.epochs,
            "learning_rate": 2e-3,
            "preview_interval_s": arguments.preview_interval,
        }
        for key, value in settings.items():
            library.settings[key].set_value(value)
        product, truth = load_ptychodus_simulated_scan(model, work, n_positions=arguments.positions)
        input_index = product.get_product_index()

        # (a) the panel
        view.processing_action.trigger()
        model.processing_core.algorithm_parameter.set_value(RECONSTRUCT)
        combo = product_combo(view)
        combo.setCurrentIndex(input_index)
        show_group(view, "Refinement")
        screenshot(view, out / "gui-panel.png")
        if arguments.panel_only:
            controller._run_tasks_timer.stop()
            view.close()
            shutil.rmtree(work, ignore_errors=True)
            return results
        library.settings["train_first"].set_value(True)  # after the panel shot, which shows the default

        # (b) one click, previews on
        monitor = model.processing_core.processing_api.task_monitor
        snapshot = monitor.get_completed_runs()
        load.start()
        started = time.perf_counter()
        find_button(view.processing_view, "Reconstruct").click()
        output_index = combo.currentIndex()
        assert wait_until(lambda: monitor.get_completed_runs() > snapshot, 3600), "the reconstruction did not finish"
        seconds = time.perf_counter() - started
        spin(2.5)  # ptychodus assigns the last product on its 1 s timer
        results["one_click_gui"] = load.stop()
        monitor.raise_if_failed()
        result = model.workflow_api.get_product(output_index).get_product()
        quality = compare(result.object_.get_layer(0), truth.ground_truth, illuminated_mask(truth))
        results["one_click"] = {"seconds": round(seconds, 1), "epochs_run": len(result.losses), **quality.as_dict()}
        screenshot(view, out / "gui-reconstruction.png")

        view.object_action.trigger()
        tree = view.object_view.tree_view
        tree.setCurrentIndex(tree.model().index(output_index, 0))
        show_phase(view.object_image_view)
        screenshot(view, out / "gui-object.png")

        # Stop: a long run, stopped after a few epochs with ptychodus's Stop button
        if arguments.stop:
            view.processing_action.trigger()
            library.settings["epochs"].set_value(500)
            combo.setCurrentIndex(input_index)
            snapshot = monitor.get_completed_runs()
            load.start()
            find_button(view.processing_view, "Reconstruct").click()
            stop_output = combo.currentIndex()
            wait_until(lambda: monitor.get_progress() >= 3, 600)
            clicked = time.perf_counter()
            view.processing_status_view.stop_button.click()
            assert wait_until(lambda: monitor.get_completed_runs() > snapshot, 60)
            latency = time.perf_counter() - clicked
            spin(2.5)
            results["stop_gui"] = load.stop()
            stopped = model.workflow_api.get_product(stop_output).get_product()
            saved = work / "after-stop.pinn.pt"
            library.save_model(saved)
            results["stop"] = {
                "latency_s": round(latency, 2),
                "epochs_run": len(stopped.losses),
                "object_changed": bool(not np.allclose(stopped.object_.get_layer(0), 1.0)),
                "model_saved_bytes": saved.stat().st_size,
            }
        controller._run_tasks_timer.stop()
        view.close()
    shutil.rmtree(work, ignore_errors=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "resources"), help="folder for the PNGs and gui-measurements.json")
    parser.add_argument("--offscreen", action="store_true", help="use Qt's offscreen platform instead of Xvfb")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--positions", type=int, default=256)
    parser.add_argument("--preview-interval", type=float, default=15.0, help="seconds between previews")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("PINN_TEST_THREADS", "1")))
    parser.add_argument("--window", type=int, nargs=2, default=(1440, 900), metavar=("W", "H"))
    parser.add_argument("--no-stop", dest="stop", action="store_false", help="skip the Stop-latency run")
    parser.add_argument("--panel-only", action="store_true", help="write gui-panel.png only (no runs, no measurements)")
    arguments = parser.parse_args()
    with display(arguments.offscreen, tuple(arguments.window)):
        results = run(arguments)
    if arguments.panel_only:
        return 0
    path = Path(arguments.out) / "gui-measurements.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
