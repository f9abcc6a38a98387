"""The "PtychoPINN (PyTorch) streaming" workflow inside the real ptychodus: Automation view → one product per scan.

Workflow directories (``diffraction.h5`` + ``product.h5``, written with ptychodus's own save functions)
land in a watched folder; ptychodus's AutomationCore (watchdog watcher, pending-file buffer, foreground
tasks pumped here as the GUI timer would) runs the workflow, whose worker writes ``product-ptychopinn.h5``
beside each. Scans are small (N=32, 144 patterns; one N=64 for the shipped model) so the stream takes
seconds on 2 CPU cores.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pinn_scene import DETECTOR_PIXEL_M, illuminated_mask, product_from_scan
from ptychodus.api.assemble import AssembledDiffractionData
from ptychodus.api.geometry import PixelGeometry
from ptychodus.api.io import StandardFileLayout, load_product, save_diffraction_data, save_product

from ptychodus_pinn.engine.metrics import compare
from ptychodus_pinn.engine.simulate import simulate_scan
from ptychodus_pinn.plugin import streaming
from ptychodus_pinn.plugin.streaming import DISPLAY_NAME, OUTPUT_NAME, SIMPLE_NAME, StreamingWorkflow

# measured on these scans (N=32, 144 patterns, 12 refinement epochs, 1 CPU thread): phase SSIM 0.88–0.92
# against a flat-object floor of ~0.01; the threshold leaves room for other BLAS/thread counts
PHASE_SSIM = 0.6
REFINE_EPOCHS = 12


@pytest.fixture(autouse=True)
def _info_logs() -> Iterator[None]:
    logger = logging.getLogger("ptychodus_pinn")
    level = logger.level
    logger.setLevel(logging.INFO)  # as in the GUI (pytest's root logger is at WARNING)
    yield
    logger.setLevel(level)


@pytest.fixture
def workflow(model_core: Any, library: Any) -> Iterator[StreamingWorkflow]:
    for key, value in {"accelerator": "cpu", "seed": 0, "refine_epochs": REFINE_EPOCHS}.items():
        library.settings[key].set_value(value)
    found = model_core.plugin_registry.file_based_workflows.get_strategy_by_name(SIMPLE_NAME)
    assert isinstance(found, StreamingWorkflow)
    yield found
    assert found.stop(timeout=30)


def write_workflow_directory(folder: Path, scan: Any, name: str) -> Path:
    """A ptychodus standard workflow directory: diffraction.h5 first, then product.h5 (the trigger)."""
    folder.mkdir(parents=True)
    data = AssembledDiffractionData(
        np.arange(scan.count),
        scan.patterns.astype(np.float32),
        PixelGeometry(DETECTOR_PIXEL_M, DETECTOR_PIXEL_M),
        np.zeros((scan.size_px, scan.size_px), bool),
    )
    save_diffraction_data(StandardFileLayout.DIFFRACTION.path(folder), data)
    product_path = StandardFileLayout.PRODUCT.path(folder)
    save_product(product_path, product_from_scan(scan, name=name))  # the object guess is flat (ones)
    return product_path


def scan_for(seed: int, size_px: int = 32) -> Any:
    return simulate_scan("siemens", photons=1e5, n_positions=144, N=size_px, seed=seed)


def phase_quality(path: Path, truth: Any) -> Any:
    return compare(load_product(path).object_.get_layer(0), truth.ground_truth, illuminated_mask(truth))


def test_listed_among_ptychodus_workflows(model_core: Any, workflow: StreamingWorkflow) -> None:
    names = {plugin.simple_name: plugin.display_name for plugin in model_core.plugin_registry.file_based_workflows}
    assert names[SIMPLE_NAME] == DISPLAY_NAME
    assert DISPLAY_NAME in set(model_core.automation_core.presenter.available_workflows())  # the Workflow combo
    pattern = workflow.get_watch_file_pattern()
    assert workflow.is_watch_recursive
    assert Path("beamline/scan 7/product.h5").match(pattern)
    assert not Path(f"beamline/scan 7/{OUTPUT_NAME}").match(pattern)  # our outputs never re-trigger
    assert not Path(f"beamline/scan 7/.{OUTPUT_NAME}.123.0.tmp").match(pattern)


def _pump_until(model_core: Any, done: Any, timeout_s: float) -> bool:
    """Run ptychodus's foreground tasks (the GUI timer's job) until ``done()``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        model_core.run_tasks()
        if done():
            return True
        time.sleep(0.05)
    return False


def test_watched_folder_stream_in_order_skipping_a_corrupt_scan(
    model_core: Any,
    library: Any,
    workflow: StreamingWorkflow,
    trained_small: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three scans, a corrupt fourth, a fifth (N=64): ptychodus's watcher finds them, the worker writes
    one product each in arrival order with the loaded model (or the shipped one where N differs); the
    corrupt one is logged by name and skipped."""
    library.model_slot.set(trained_small.model, "a test model (N=32)")  # as Load Model does
    library.settings["refine_start"].set_value("auto")  # the network's object may be the start: the network runs
    automation = model_core.automation_core
    settings = automation.settings
    watched = tmp_path / "watched"
    watched.mkdir()
    settings.data_directory.set_value(watched)
    settings.watchdog_delay_s.set_value(1)
    automation.presenter.set_current_workflow(DISPLAY_NAME)
    assert automation.presenter.get_current_workflow() == DISPLAY_NAME
    automation.presenter.set_watcher_enabled(True)
    try:
        truths: dict[str, Any] = {}
        triggers: list[Path] = []
        caplog.set_level(logging.INFO, logger="ptychodus_pinn")
        for index in (1, 2, 3):
            truths[f"scan{index}"] = scan_for(seed=20 + index)
            triggers.append(write_workflow_directory(watched / f"scan{index}", truths[f"scan{index}"], f"scan{index}"))
            time.sleep(0.2)  # arrival order = the order ptychodus's buffer sees stable files
        corrupt = watched / "scan4"
        corrupt.mkdir()
        save_diffraction_data(
            corrupt / "diffraction.h5",
            AssembledDiffractionData(
                np.arange(2), np.ones((2, 32, 32), np.float32), PixelGeometry(1e-4, 1e-4), np.zeros((32, 32), bool)
            ),
        )
        (corrupt / "product.h5").write_bytes(b"this is not an HDF5 file" * 100)
        triggers.append(corrupt / "product.h5")
        time.sleep(0.2)
        truths["scan5"] = scan_for(seed=25, size_px=64)
        triggers.append(write_workflow_directory(watched / "scan5", truths["scan5"], "scan5"))

        started = time.monotonic()

        def all_handed_over() -> bool:
            complete = [item.file_path for item in automation.repository if item.state.name == "COMPLETE"]
            return len(complete) == 5

        assert _pump_until(model_core, all_handed_over, timeout_s=60), [
            (item.label, item.state.name) for item in automation.repository
        ]
        assert workflow.wait_idle(timeout=180)
        seconds = time.monotonic() - started
    finally:
        automation.presenter.set_watcher_enabled(False)

    messages = [record.getMessage() for record in caplog.records if record.name.startswith("ptychodus_pinn")]
    queued = [message for message in messages if message.startswith("Streaming: queued")]
    written = [message for message in messages if " → " in message and message.startswith("Streaming: scan")]
    print(f"stream of 5 (one corrupt) in {seconds:.1f} s:", *written, sep="\n  ")
    # arrival order, backlog in order
    assert [Path(message.split()[2]) for message in queued] == [triggers[i] for i in (0, 1, 2, 4)]
    assert [message.split(":")[1].strip() for message in written] == ["scan1", "scan2", "scan3", "scan5"]
    # the corrupt scan: one line naming the file and why, and nothing written
    skipped = [message for message in messages if "skipped" in message]
    assert len(skipped) == 1 and str(corrupt / "product.h5") in skipped[0] and "unreadable product" in skipped[0]
    assert not (corrupt / OUTPUT_NAME).exists()
    # the model: the loaded one where N fits, the shipped one for N=64 (no model for N=64 was loaded)
    assert all("with a test model (N=32)" in message for message in written[:3])
    assert "with the shipped pretrained model" in written[3]
    for name, truth in truths.items():
        output = watched / name / OUTPUT_NAME
        quality = phase_quality(output, truth)
        print(f"  {name}: phase SSIM {quality.phase_ssim:.3f} (flat {quality.flat_phase_ssim:.3f})")
        assert quality.phase_ssim > max(PHASE_SSIM, quality.flat_phase_ssim + 0.3)
        assert max(abs(s) for s in quality.shift_yx_px) < 0.5
        result = load_product(output)
        source = load_product(watched / name / "product.h5")
        assert result.object_.get_geometry() == source.object_.get_geometry()  # overlays the input in ptychodus
        # the full-resolution epochs' NLL, after the default 40 half-resolution epochs (which plot none)
        first = 41
        assert [loss.epoch for loss in result.losses] == list(range(first, first + REFINE_EPOCHS))
    assert not list(watched.rglob("*.tmp"))  # atomic writes leave no temporary files
    assert sorted(path.parent.name for path in watched.rglob(OUTPUT_NAME)) == ["scan1", "scan2", "scan3", "scan5"]
    # our outputs did not trigger anything: ptychodus saw the five product.h5 files only
    assert sorted(item.label for item in automation.repository) == [str(p.relative_to(watched)) for p in triggers]


def test_execute_never_raises_and_skips_bad_folders(
    model_core: Any, workflow: StreamingWorkflow, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lonely = tmp_path / "no diffraction" / "product.h5"
    lonely.parent.mkdir()
    save_product(lonely, product_from_scan(scan_for(seed=1), name="lonely"))
    broken_diffraction = write_workflow_directory(tmp_path / "broken diffraction", scan_for(seed=2), "broken")
    (broken_diffraction.parent / "diffraction.h5").write_bytes(b"\0" * 64)

    class FailingAPI:
        def load_assembled_diffraction_data(self, path: Path) -> Any:
            raise SystemExit("ptychodus is exiting")

    good = write_workflow_directory(tmp_path / "good", scan_for(seed=3), "good")
    with caplog.at_level(logging.INFO, logger="ptychodus_pinn"):
        workflow.execute(model_core.workflow_api, lonely)
        workflow.execute(model_core.workflow_api, broken_diffraction)
        workflow.execute(FailingAPI(), good)  # type: ignore[arg-type]
        assert workflow.pending() == 0
        workflow.execute(model_core.workflow_api, good)
        assert workflow.wait_idle(timeout=120)
    skipped = [record.getMessage() for record in caplog.records if "skipped" in record.getMessage()]
    assert len(skipped) == 3, skipped
    assert str(lonely) in skipped[0] and "no diffraction.h5 beside it" in skipped[0]
    assert str(broken_diffraction) in skipped[1] and "unreadable diffraction.h5" in skipped[1]
    assert str(good) in skipped[2] and "ptychodus is exiting" in skipped[2]
    assert (good.parent / OUTPUT_NAME).is_file()


def test_worker_failure_is_logged_and_the_stream_continues(
    model_core: Any,
    workflow: StreamingWorkflow,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ptychodus_pinn.engine.inference as inference

    real = inference.reconstruct
    calls: list[int] = []

    def fails_first(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory\nmore details")
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "reconstruct", fails_first)
    first = write_workflow_directory(tmp_path / "first", scan_for(seed=4), "first")
    second = write_workflow_directory(tmp_path / "second", scan_for(seed=5), "second")
    with caplog.at_level(logging.INFO, logger="ptychodus_pinn"):
        workflow.execute(model_core.workflow_api, first)
        workflow.execute(model_core.workflow_api, second)
        assert workflow.wait_idle(timeout=120)
    messages = [record.getMessage() for record in caplog.records]
    assert f"Streaming: {first} skipped: RuntimeError: CUDA out of memory" in messages
    assert not (first.parent / OUTPUT_NAME).exists()
    assert (second.parent / OUTPUT_NAME).is_file()


def test_flat_refinement_start_runs_no_network(
    model_core: Any,
    library: Any,
    workflow: StreamingWorkflow,
    trained_small: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With Refinement Start flat the network's object cannot change the result: it is not run."""
    import ptychodus_pinn.engine.inference as inference

    real = inference.reconstruct
    models: list[Any] = []

    def recording(model: Any, *args: Any, **kwargs: Any) -> Any:
        models.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(inference, "reconstruct", recording)
    library.model_slot.set(trained_small.model, "a test model (N=32)")
    assert library.settings["refine_start"].get_value() == "auto"  # the default lets the network compete
    library.settings["refine_start"].set_value("flat")
    path = write_workflow_directory(tmp_path / "flat", scan_for(seed=9), "flat")
    with caplog.at_level(logging.INFO, logger="ptychodus_pinn"):
        workflow.execute(model_core.workflow_api, path)
        assert workflow.wait_idle(timeout=120)
    assert models == [None]
    assert any("no network (Refinement Start is flat" in record.getMessage() for record in caplog.records)
    assert phase_quality(path.parent / OUTPUT_NAME, scan_for(seed=9)).phase_ssim > PHASE_SSIM


def test_stop_drops_the_backlog_and_writes_nothing_part_done(
    model_core: Any, library: Any, workflow: StreamingWorkflow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ptychodus_pinn.engine.inference as inference

    real = inference.reconstruct
    running = threading.Event()

    def signalling(*args: Any, **kwargs: Any) -> Any:
        running.set()
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "reconstruct", signalling)
    library.settings["refine_epochs"].set_value(100_000)  # runs until stopped
    paths = [write_workflow_directory(tmp_path / f"s{i}", scan_for(seed=6 + i), f"s{i}") for i in range(3)]
    for path in paths:
        workflow.execute(model_core.workflow_api, path)
    assert running.wait(timeout=60)
    time.sleep(0.5)  # well into refinement
    assert workflow.pending() == 3
    stop_at = time.monotonic()
    assert workflow.stop(timeout=30)
    latency_s = time.monotonic() - stop_at
    print(f"stopped {latency_s:.2f} s after the request")
    assert latency_s < 5.0
    assert workflow.pending() == 0
    assert not list(tmp_path.rglob(OUTPUT_NAME)) and not list(tmp_path.rglob("*.tmp"))
    # a later scan starts a new worker
    library.settings["refine_epochs"].set_value(3)
    workflow.execute(model_core.workflow_api, paths[0])
    assert workflow.wait_idle(timeout=120)
    assert (paths[0].parent / OUTPUT_NAME).is_file()


def test_registration_is_idempotent_and_never_raises(model_core: Any, caplog: pytest.LogCaptureFixture) -> None:
    registry = model_core.plugin_registry
    first = streaming.register_streaming_workflow(registry)
    assert first is registry.file_based_workflows.get_strategy_by_name(SIMPLE_NAME)
    assert streaming.register_streaming_workflow(registry) is first  # the shim and the hook may both call it
    assert sum(plugin.simple_name == SIMPLE_NAME for plugin in registry.file_based_workflows) == 1
    with caplog.at_level(logging.ERROR):
        assert streaming.register_streaming_workflow(object()) is None
    assert "could not be registered" in caplog.text


def test_a_loaded_model_competes_with_the_shipped_one(
    model_core: Any, library: Any, workflow: StreamingWorkflow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streamed scans weigh a loaded model's object against the shipped model's (by the scan's likelihood, in the
    engine); with the shipped model in use there is nothing to weigh."""
    import copy

    import ptychodus_pinn.engine.inference as inference
    from ptychodus_pinn.engine.config import SHIPPED_MODEL_NAME
    from ptychodus_pinn.engine.persistence import find_pretrained

    real = inference.reconstruct
    alternatives: list[Any] = []

    def recording(model: Any, *args: Any, **kwargs: Any) -> Any:
        alternatives.append(kwargs.get("alternative"))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(inference, "reconstruct", recording)
    shipped = find_pretrained(64)
    assert shipped is not None
    cases = (
        ("shipped in use", None, ""),
        ("loaded", copy.deepcopy(shipped), "a test model (N=64)"),
        ("shipped by a GUI run", shipped, SHIPPED_MODEL_NAME),  # in the slot, but no choice of the user's
    )
    for name, loaded, source in cases:
        library.model_slot.set(loaded, source)
        path = write_workflow_directory(tmp_path / name.replace(" ", "-"), scan_for(seed=13, size_px=64), name)
        workflow.execute(model_core.workflow_api, path)
        assert workflow.wait_idle(timeout=120)
        assert (path.parent / OUTPUT_NAME).exists()
    assert alternatives[0] is None and alternatives[2] is None
    assert alternatives[1] is not None and alternatives[1][0] == SHIPPED_MODEL_NAME and alternatives[1][1].config.N == 64
