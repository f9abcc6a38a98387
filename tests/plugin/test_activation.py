"""Activation against the real ptychodus: the shim, the entry-point group, and failure isolation."""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ptychodus_pinn
from ptychodus_pinn.plugin import activation
from ptychodus_pinn.plugin.activation import ReconstructorPlugin, activate, deactivate
from ptychodus_pinn.qt.entry import reconstructor_plugin

SHIM_DIR = Path(ptychodus_pinn.__file__).parent / "ptychodus_plugin_shim"
OUR_KEYS = {
    "ptychopinn (pytorch)_reconstruct",
    "ptychopinn (pytorch)_train+infer",
    "ptychopinn (pytorch)_train+infer supervised",
}


@pytest.fixture
def clean() -> Iterator[None]:
    deactivate()
    yield
    deactivate()


def _model_core() -> Any:
    from ptychodus.model import ModelCore

    return ModelCore(log_level=logging.WARNING)


def test_entries_and_settings_groups(model_core: Any, library: Any) -> None:
    keys = set(model_core.workflow_api.available_reconstructors())
    assert keys >= OUR_KEYS
    assert "_" not in library.name
    ours = [name for name in model_core.settings_registry if name.startswith("PINNTorchPlugin")]
    assert ours, "settings groups registered"
    assert not any(name.startswith("PtychoPINN") for name in ours)


def test_shim_in_plugins_namespace_activates(clean: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a wheel install does: a module in ptychodus/plugins that PluginRegistry imports."""
    import ptychodus.plugins

    monkeypatch.setattr(ptychodus.plugins, "__path__", [*ptychodus.plugins.__path__, str(SHIM_DIR)])
    monkeypatch.setattr(
        activation, "load_entry_point_plugins", lambda group=activation.ENTRY_POINT_GROUP: [reconstructor_plugin()]
    )
    sys.modules.pop("ptychodus.plugins.ptychodus_pinn_shim", None)
    model = _model_core()
    assert "ptychodus.plugins.ptychodus_pinn_shim" in sys.modules
    assert set(model.workflow_api.available_reconstructors()) >= OUR_KEYS
    # the shim passed ptychodus's registry to the entry: the streaming workflow is in the Automation view
    workflows = [plugin.simple_name for plugin in model.plugin_registry.file_based_workflows]
    assert workflows.count("PtychoPINN_Streaming") == 1


def test_shim_import_is_cheap_and_never_raises(tmp_path: Path) -> None:
    """Plugin loading by ptychodus's command-line tools must not import torch or Qt."""
    code = f"""
import importlib.util, json, sys
path = {str(SHIM_DIR / "ptychodus_pinn_shim.py")!r}
spec = importlib.util.spec_from_file_location("ptychodus.plugins.ptychodus_pinn_shim", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.register_plugins(object())
print(json.dumps({{name: name in sys.modules for name in ("torch", "PyQt5", "lightning", "ptychodus.model")}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert not any(imported.values()), imported


def test_shim_survives_a_broken_package(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location("pinn_shim_under_test", SHIM_DIR / "ptychodus_pinn_shim.py")
    assert spec is not None and spec.loader is not None
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)
    monkeypatch.setitem(sys.modules, "ptychodus_pinn.plugin.activation", None)  # import now fails
    with caplog.at_level(logging.WARNING):
        shim.register_plugins(object())
    assert "unavailable" in caplog.text

    def exits() -> bool:
        raise SystemExit(3)

    monkeypatch.setitem(sys.modules, "ptychodus_pinn.plugin.activation", type(sys)("fake"))
    sys.modules["ptychodus_pinn.plugin.activation"].activate = exits  # type: ignore[attr-defined]
    shim.register_plugins(object())  # SystemExit is caught too


def _raising_library(settings_registry: Any, *, is_developer_mode_enabled: bool = False) -> Any:
    raise RuntimeError("broken plugin")


def test_broken_library_factory_is_logged_and_ptychodus_starts(clean: None, caplog: pytest.LogCaptureFixture) -> None:
    broken = ReconstructorPlugin(name="broken", create_library=_raising_library)
    assert activate([broken, reconstructor_plugin()])
    with caplog.at_level(logging.ERROR):
        model = _model_core()
    assert "broken plugin" in caplog.text
    assert set(model.workflow_api.available_reconstructors()) >= OUR_KEYS  # the good plugin still works


def test_library_name_with_underscore_is_refused(clean: None, caplog: pytest.LogCaptureFixture) -> None:
    from ptychodus.api.reconstruct import ReconstructorLibrary

    class Bad(ReconstructorLibrary):
        def __init__(self) -> None:
            super().__init__("bad")

        @property
        def name(self) -> str:
            return "Bad_Name"

        def __iter__(self) -> Iterator[Any]:
            return iter([])

    assert activate([ReconstructorPlugin(name="bad", create_library=lambda registry, **_: Bad())])
    with caplog.at_level(logging.ERROR):
        _model_core()
    assert "contains '_'" in caplog.text


def test_broken_entry_point_is_skipped(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    class Entry:
        name, value = "broken", "nowhere:nothing"

        def load(self) -> Any:
            raise ImportError("no module named nowhere")

    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [Entry()])
    with caplog.at_level(logging.ERROR):
        assert activation.load_entry_point_plugins() == []
    assert "nowhere" in caplog.text


def test_version_outside_range_is_logged_and_not_activated(
    clean: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.8.0")
    monkeypatch.delenv(activation.FORCE_ENV_VAR, raising=False)
    with caplog.at_level(logging.WARNING):
        assert not activate([reconstructor_plugin()])
    assert "outside the range" in caplog.text and "1.8.0" in caplog.text


def test_activate_is_idempotent(clean: None) -> None:
    assert activate([reconstructor_plugin()])
    assert activate()  # the shim and `ptychodus-pinn gui` in one process
    model = _model_core()
    keys = list(model.workflow_api.available_reconstructors())
    assert sorted(k for k in keys if k.startswith("ptychopinn (pytorch)")) == sorted(OUR_KEYS)


def test_hooks_wait_for_unimported_controller_module(clean: None) -> None:
    """The controller module is imported after ModelCore in ptychodus's main(): a post-import hook patches it."""
    code = """
import os, sys
os.environ["QT_QPA_PLATFORM"] = "offscreen"
from ptychodus_pinn.plugin.activation import activate, _PATCH_MARK
from ptychodus_pinn.qt.entry import reconstructor_plugin
activate([reconstructor_plugin()])
assert "ptychodus.controller.processing.core" not in sys.modules
import ptychodus.controller.processing.core as core
print(hasattr(core.ProcessingController.__init__, _PATCH_MARK))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "True", out.stderr[-2000:]


def test_adapter_does_not_import_qt() -> None:
    code = (
        "import sys, ptychodus_pinn.plugin.library, ptychodus_pinn.plugin.convert, ptychodus_pinn.plugin.settings;"
        "print('PyQt5' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
