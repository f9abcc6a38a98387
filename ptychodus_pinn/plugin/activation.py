"""Adds reconstructor libraries from the ``ptychodus.reconstructors`` entry-point group to ptychodus.

ptychodus 1.7 builds its reconstructor libraries and their settings panels from two fixed lists
(``ModelCore`` → ``ProcessingCore``; ``ControllerCore`` → ``ProcessingController``) and offers no
hook for more. This module supplies one:

* ``ProcessingCore.__init__`` is wrapped so the libraries of every entry are appended to the
  ``algorithm_libraries`` it receives (the settings registry it also receives is what the
  libraries register their settings groups with, before ptychodus reads its ``.ini`` file);
* ``ProcessingController.__init__`` is wrapped so each library's view-controller factory is
  appended to ``view_controller_factories``.

Both classes are patched on the class itself (so the names other modules imported stay valid) and
only once their modules are imported: a module already in ``sys.modules`` is patched at once, any
other through a one-shot post-import hook on ``sys.meta_path``. Nothing here imports ptychodus,
PyQt5 or torch at import time, so the shim that calls :func:`activate` from
``ptychodus.plugins`` costs the command-line tools that load plugins nothing measurable.

Entry-point protocol (group ``ptychodus.reconstructors``): the entry loads a callable taking no
arguments that returns an object with

* ``name: str`` — a label for log messages;
* ``create_library(settings_registry, *, is_developer_mode_enabled: bool)`` → a
  ``ptychodus.api.reconstruct.ReconstructorLibrary`` whose ``name`` has no ``_``;
* ``create_view_controller_factory(library, file_dialog_factory)`` → an object with ``name``
  (equal to the library's name) and ``create_view_controller(reconstructor_name) -> QWidget``,
  i.e. a ``ptychodus.controller.processing.ReconstructorViewControllerFactory``; or ``None``.

A library may also define ``attach_processing_api(processing_api)``; it is called once ptychodus's
``ProcessingAPI`` exists (the library uses it to see the Stop button between yields).

Every failure is logged and skipped: ptychodus must start even when a plugin is broken.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import inspect
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ptychodus.reconstructors"
SUPPORTED_PTYCHODUS = ((1, 7), (1, 8))  # [lower, upper) on (major, minor)
FORCE_ENV_VAR = "PTYCHODUS_PINN_IGNORE_VERSION"

MODEL_MODULE = "ptychodus.model.processing.core"
CONTROLLER_MODULE = "ptychodus.controller.processing.core"
_PATCH_MARK = "__ptychodus_pinn_original__"


@dataclass(frozen=True)
class ReconstructorPlugin:
    """What an entry of the ``ptychodus.reconstructors`` group returns (any object with these attributes will do)."""

    name: str
    create_library: Callable[..., Any]
    create_view_controller_factory: Callable[[Any, Any], Any] | None = None


@dataclass
class _Installed:
    plugin: Any
    library: Any


class _State:
    """Process-wide activation state, shared by the shim and ``ptychodus-pinn gui``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.plugins: list[Any] | None = None  # loaded entries, None until first activation
        self.active = False
        # ProcessingAPI (or ProcessingCore when the API is missing) -> libraries added to it
        self.by_processing_api: weakref.WeakKeyDictionary[Any, list[_Installed]] = weakref.WeakKeyDictionary()
        self.finder: _PostImportFinder | None = None


_state = _State()


# ------------------------------------------------------------------------------------- version check


def _parse_version(text: str) -> tuple[int, int] | None:
    parts = text.split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or "0")
    except (IndexError, ValueError):
        return None


def ptychodus_version_supported() -> tuple[bool, str]:
    """(supported, installed version): ptychodus's internals we wrap are only known for 1.7.x."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("ptychodus")
    except PackageNotFoundError:
        return False, "not installed"
    parsed = _parse_version(installed)
    lower, upper = SUPPORTED_PTYCHODUS
    return parsed is not None and lower <= parsed < upper, installed


# ------------------------------------------------------------------------------------ entry points


def load_entry_point_plugins(group: str = ENTRY_POINT_GROUP) -> list[Any]:
    """Load and call every entry of ``group``; entries that fail are logged and left out."""
    from importlib.metadata import entry_points

    plugins: list[Any] = []
    try:
        entries = list(entry_points(group=group))
    except Exception:  # a broken distribution's metadata must not stop ptychodus
        logger.exception("Cannot list the %s entry points", group)
        return plugins
    seen: set[str] = set()
    for entry in entries:
        if entry.value in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(entry.value)
        try:
            plugin = entry.load()()
            _check_plugin(plugin)
        except Exception:
            logger.exception("Reconstructor plugin %r (%s) failed to load; ptychodus starts without it", entry.name, entry.value)
            continue
        plugins.append(plugin)
    return plugins


def _check_plugin(plugin: Any) -> None:
    if not callable(getattr(plugin, "create_library", None)):
        raise TypeError(f"{plugin!r} has no create_library(settings_registry, *, is_developer_mode_enabled)")
    factory = getattr(plugin, "create_view_controller_factory", None)
    if factory is not None and not callable(factory):
        raise TypeError(f"{plugin!r}.create_view_controller_factory is not callable")


# --------------------------------------------------------------------------------------- activation


def activate(plugins: Sequence[Any] | None = None, *, check_version: bool = True) -> bool:
    """Make ptychodus build the libraries and panels of ``plugins`` (default: the entry-point group).

    Idempotent and safe to call from the shim and from ``ptychodus-pinn gui`` in one process. Returns
    whether the hooks are installed. Never raises.
    """
    try:
        with _state.lock:
            if check_version:
                supported, installed = ptychodus_version_supported()
                if not supported and not os.environ.get(FORCE_ENV_VAR):
                    logger.warning(
                        "ptychodus %s is outside the range this plugin supports (>=1.7,<1.8); "
                        "reconstructor plugins from %s are not activated (set %s=1 to try anyway)",
                        installed,
                        ENTRY_POINT_GROUP,
                        FORCE_ENV_VAR,
                    )
                    return False
            if plugins is not None:
                _state.plugins = list(plugins)
            elif _state.plugins is None:
                _state.plugins = load_entry_point_plugins()
            if _state.active:
                return True
            _when_imported(MODEL_MODULE, _patch_processing_core)
            _when_imported(CONTROLLER_MODULE, _patch_processing_controller)
            _state.active = True
            return True
    except Exception:
        logger.exception("Activating reconstructor plugins failed; ptychodus starts without them")
        return False


def deactivate() -> None:
    """Undo :func:`activate` (tests): restore the wrapped constructors and forget loaded entries."""
    with _state.lock:
        for module_name, class_name in ((MODEL_MODULE, "ProcessingCore"), (CONTROLLER_MODULE, "ProcessingController")):
            module = sys.modules.get(module_name)
            cls = getattr(module, class_name, None) if module is not None else None
            original = getattr(getattr(cls, "__init__", None), _PATCH_MARK, None)
            if cls is not None and original is not None:
                cls.__init__ = original
        if _state.finder is not None:
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(_state.finder)
            _state.finder = None
        _state.plugins = None
        _state.active = False
        _state.by_processing_api = weakref.WeakKeyDictionary()


def installed_libraries(processing_api: Any) -> list[Any]:
    """Libraries this module added to the ProcessingCore that owns ``processing_api``."""
    with _state.lock:
        return [item.library for item in _state.by_processing_api.get(processing_api, [])]


def _is_developer_mode_enabled() -> bool:
    # ModelCore.is_developer_mode_enabled reads this logger's level
    return logging.getLogger("ptychodus.model.core").getEffectiveLevel() <= logging.DEBUG


def _bind(original: Callable[..., None], self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> inspect.BoundArguments:
    bound = inspect.signature(original).bind(self, *args, **kwargs)
    return bound


def _patch_processing_core(module: ModuleType) -> None:
    cls = getattr(module, "ProcessingCore", None)
    if cls is None or hasattr(cls.__init__, _PATCH_MARK):
        return
    original = cls.__init__
    parameters = inspect.signature(original).parameters
    if not {"settings_registry", "algorithm_libraries"} <= set(parameters):
        logger.error("ProcessingCore(%s) is not the ptychodus 1.7 signature; reconstructor plugins not added", list(parameters))
        return

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        installed: list[_Installed] = []
        try:
            bound = _bind(original, self, args, kwargs)
            existing = list(bound.arguments["algorithm_libraries"])
            installed = _create_libraries(bound.arguments["settings_registry"], existing)
            bound.arguments["algorithm_libraries"] = existing + [item.library for item in installed]
            args, kwargs = bound.args[1:], bound.kwargs
        except Exception:
            logger.exception("Adding reconstructor plugins failed; ptychodus continues without them")
            installed = []
        original(self, *args, **kwargs)
        if installed:
            _attach(self, installed)

    setattr(__init__, _PATCH_MARK, original)
    cls.__init__ = __init__


def _create_libraries(settings_registry: Any, existing: Iterable[Any]) -> list[_Installed]:
    names = {str(getattr(library, "name", "")).casefold() for library in existing}
    installed: list[_Installed] = []
    for plugin in _state.plugins or []:
        label = getattr(plugin, "name", repr(plugin))
        try:
            library = plugin.create_library(settings_registry, is_developer_mode_enabled=_is_developer_mode_enabled())
            name = str(library.name)
        except Exception:
            logger.exception("Reconstructor plugin %r failed to build its library; it is left out", label)
            continue
        if "_" in name:
            logger.error("Reconstructor library name %r contains '_' (ptychodus splits keys there); left out", name)
            continue
        if name.casefold() in names:
            logger.error("A reconstructor library named %r already exists; plugin %r left out", name, label)
            continue
        names.add(name.casefold())
        installed.append(_Installed(plugin, library))
        logger.info("Added reconstructor library %r from plugin %r", name, label)
    return installed


def _attach(processing_core: Any, installed: list[_Installed]) -> None:
    processing_api = getattr(processing_core, "processing_api", None)
    key = processing_api if processing_api is not None else processing_core
    with _state.lock:
        _state.by_processing_api[key] = installed
    for item in installed:
        attach = getattr(item.library, "attach_processing_api", None)
        if callable(attach) and processing_api is not None:
            try:
                attach(processing_api)
            except Exception:
                logger.exception("Library %r could not attach to the processing API", item.library.name)


def _patch_processing_controller(module: ModuleType) -> None:
    cls = getattr(module, "ProcessingController", None)
    if cls is None or hasattr(cls.__init__, _PATCH_MARK):
        return
    original = cls.__init__
    parameters = inspect.signature(original).parameters
    if not {"processing_api", "file_dialog_factory", "view_controller_factories"} <= set(parameters):
        logger.error("ProcessingController(%s) is not the ptychodus 1.7 signature; plugin panels not added", list(parameters))
        return

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        try:
            bound = _bind(original, self, args, kwargs)
            factories = list(bound.arguments["view_controller_factories"])
            factories += _create_view_factories(bound.arguments["processing_api"], bound.arguments["file_dialog_factory"])
            bound.arguments["view_controller_factories"] = factories
            args, kwargs = bound.args[1:], bound.kwargs
        except Exception:
            logger.exception("Adding reconstructor plugin panels failed; ptychodus continues without them")
        original(self, *args, **kwargs)

    setattr(__init__, _PATCH_MARK, original)
    cls.__init__ = __init__


def _create_view_factories(processing_api: Any, file_dialog_factory: Any) -> list[Any]:
    with _state.lock:
        installed = list(_state.by_processing_api.get(processing_api, []))
    factories = []
    for item in installed:
        create = getattr(item.plugin, "create_view_controller_factory", None)
        if create is None:
            continue
        try:
            factories.append(create(item.library, file_dialog_factory))
        except Exception:
            logger.exception("Plugin %r failed to build its settings panel", getattr(item.plugin, "name", item.plugin))
    return factories


# ------------------------------------------------------------------------------- post-import hooks


class _HookedLoader(importlib.abc.Loader):
    """Runs callbacks on a module right after its own code has run."""

    def __init__(self, loader: Any, callbacks: list[Callable[[ModuleType], None]]) -> None:
        self._loader = loader
        self._callbacks = callbacks

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        for callback in self._callbacks:
            try:
                callback(module)
            except Exception:
                logger.exception("Post-import hook on %s failed", module.__name__)

    def __getattr__(self, name: str) -> Any:  # get_source, is_package, ... for tracebacks and pkgutil
        return getattr(self._loader, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.callbacks: dict[str, list[Callable[[ModuleType], None]]] = {}
        self._busy: set[str] = set()

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        callbacks = self.callbacks.get(fullname)
        if not callbacks or fullname in self._busy:
            return None
        self._busy.add(fullname)
        try:
            for finder in list(sys.meta_path):
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._busy.discard(fullname)
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        del self.callbacks[fullname]
        spec.loader = _HookedLoader(spec.loader, callbacks)
        return spec


def _when_imported(module_name: str, callback: Callable[[ModuleType], None]) -> None:
    """Run ``callback(module)`` now if the module is imported, else right after it is."""
    module = sys.modules.get(module_name)
    if module is not None:
        callback(module)
        return
    if _state.finder is None or _state.finder not in sys.meta_path:
        _state.finder = _PostImportFinder()
        sys.meta_path.insert(0, _state.finder)
    _state.finder.callbacks.setdefault(module_name, []).append(callback)


# ---------------------------------------------------------------------------------------------- gui


def run_gui(argv: Sequence[str] | None = None) -> int:
    """Start the ptychodus GUI with the plugin active (``ptychodus-pinn gui [ptychodus options]``).

    Works for editable installs too, where the shim is not in the ``ptychodus.plugins`` namespace.
    ``argv`` is passed to ptychodus's own argument parser (e.g. ``--settings FILE``).
    """
    if not activate():
        logger.warning("Starting ptychodus without PtychoPINN (PyTorch); see the message above")
    import ptychodus.__main__ as ptychodus_main

    saved = sys.argv
    sys.argv = ["ptychodus", *(argv if argv is not None else sys.argv[1:])]
    try:
        return int(ptychodus_main.main())
    finally:
        sys.argv = saved
