"""ptychodus 1.7 compatibility: adds the libraries of the ``ptychodus.reconstructors`` entry points.

ptychodus 1.7 builds its reconstructor libraries and their settings panels from two fixed lists and
offers no hook for more, so two constructors are wrapped, on the class itself (names other modules
imported stay valid) and only once their modules are imported (a one-shot post-import hook):

* ``ProcessingCore.__init__``: the libraries of every entry are appended to ``algorithm_libraries``
  (they register their settings groups with the ``settings_registry`` it receives, before ptychodus
  reads its ``.ini`` file);
* ``ProcessingController.__init__``: each library's view-controller factory is appended to
  ``view_controller_factories``.

Nothing here imports ptychodus, PyQt5 or torch at import time, so the shim that calls
:func:`activate` from ``ptychodus.plugins`` costs ptychodus's command-line tools nothing measurable.

Entry-point protocol: the entry loads a callable taking no arguments that returns an object with
``name`` (for log messages), ``create_library(settings_registry, *, is_developer_mode_enabled)`` → a
``ptychodus.api.reconstruct.ReconstructorLibrary`` whose ``name`` has no ``_``, and
``create_view_controller_factory(library, file_dialog_factory)`` → a
``ptychodus.controller.processing.ReconstructorViewControllerFactory`` (or the attribute is None).
A library may define ``attach_processing_api(processing_api)``, called once ptychodus's
``ProcessingAPI`` exists. An entry may define ``register_plugins(registry)``, called with every
ptychodus ``PluginRegistry`` (as a module of ``ptychodus.plugins`` would be; e.g. file-based
workflows): the shim passes it the registry being loaded, and ``PluginRegistry.__init__`` is wrapped
for the registries built later (``ptychodus-pinn gui``, where no shim is installed). It must be
idempotent and cheap. Every failure is logged and skipped: ptychodus must start even when a plugin
is broken.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ptychodus.reconstructors"
SUPPORTED_PTYCHODUS = ((1, 7), (1, 8))  # [lower, upper) on (major, minor)
FORCE_ENV_VAR = "PTYCHODUS_PINN_IGNORE_VERSION"
_PATCH_MARK = "__ptychodus_pinn_original__"


@dataclass(frozen=True)
class ReconstructorPlugin:
    """What an entry of the ``ptychodus.reconstructors`` group returns (any object with these attributes will do)."""

    name: str
    create_library: Callable[..., Any]
    create_view_controller_factory: Callable[[Any, Any], Any] | None = None
    register_plugins: Callable[[Any], None] | None = None  # called with each ptychodus PluginRegistry


class _State:
    """Process-wide activation state, shared by the shim and ``ptychodus-pinn gui``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.plugins: list[Any] | None = None  # loaded entries, None until first activation
        self.active = False
        # ProcessingAPI (or ProcessingCore when the API is missing) -> [(plugin, library)] added to it
        self.installed: weakref.WeakKeyDictionary[Any, list[tuple[Any, Any]]] = weakref.WeakKeyDictionary()
        self.hook: _PostImportHook | None = None


_state = _State()


@contextlib.contextmanager
def _logged(message: str, *args: Any) -> Iterator[None]:
    """Log an exception with ``message`` instead of raising it: ptychodus carries on without the part that failed."""
    try:
        yield
    except Exception:
        logger.exception(message, *args)


def ptychodus_version_supported() -> tuple[bool, str]:
    """(supported, installed version): ptychodus's internals we wrap are only known for 1.7.x."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("ptychodus")
    except PackageNotFoundError:
        return False, "not installed"
    parts = installed.split(".")
    try:
        parsed = (int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or "0"))
    except (IndexError, ValueError):
        return False, installed
    lower, upper = SUPPORTED_PTYCHODUS
    return lower <= parsed < upper, installed


def load_entry_point_plugins(group: str = ENTRY_POINT_GROUP) -> list[Any]:
    """Load and call every entry of ``group``; entries that fail are logged and left out."""
    from importlib.metadata import entry_points

    plugins: list[Any] = []
    entries: list[Any] = []
    with _logged("Cannot list the %s entry points", group):  # a broken distribution's metadata must not stop ptychodus
        entries = list(entry_points(group=group))
    seen: set[str] = set()
    for entry in entries:
        if entry.value in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(entry.value)
        with _logged("Reconstructor plugin %r (%s) failed to load; ptychodus starts without it", entry.name, entry.value):
            plugin = entry.load()()
            if not callable(getattr(plugin, "create_library", None)):
                raise TypeError(f"{plugin!r} has no create_library(settings_registry, *, is_developer_mode_enabled)")
            factory = getattr(plugin, "create_view_controller_factory", None)
            if factory is not None and not callable(factory):
                raise TypeError(f"{plugin!r}.create_view_controller_factory is not callable")
            plugins.append(plugin)
    return plugins


# -------------------------------------------------------------------------------- the two extensions


def _add_libraries(arguments: dict[str, Any]) -> Callable[[Any], None] | None:
    """ProcessingCore: append the plugins' libraries; attach them once the core (and its API) exists."""
    libraries = list(arguments["algorithm_libraries"])
    names = {str(getattr(library, "name", "")).casefold() for library in libraries}
    installed: list[tuple[Any, Any]] = []
    is_developer_mode_enabled = logging.getLogger("ptychodus.model.core").getEffectiveLevel() <= logging.DEBUG
    for plugin in _state.plugins or []:
        label = getattr(plugin, "name", repr(plugin))
        library = name = None
        with _logged("Reconstructor plugin %r failed to build its library; it is left out", label):
            created = plugin.create_library(arguments["settings_registry"], is_developer_mode_enabled=is_developer_mode_enabled)
            library, name = created, str(created.name)
        if library is None or name is None:
            continue
        if "_" in name:
            logger.error("Reconstructor library name %r contains '_' (ptychodus splits keys there); left out", name)
        elif name.casefold() in names:
            logger.error("A reconstructor library named %r already exists; plugin %r left out", name, label)
        else:
            names.add(name.casefold())
            installed.append((plugin, library))
            logger.info("Added reconstructor library %r from plugin %r", name, label)
    arguments["algorithm_libraries"] = libraries + [library for _, library in installed]
    return (lambda core: _attach(core, installed)) if installed else None


def _attach(processing_core: Any, installed: list[tuple[Any, Any]]) -> None:
    processing_api = getattr(processing_core, "processing_api", None)
    with _state.lock:
        _state.installed[processing_api if processing_api is not None else processing_core] = installed
    for _, library in installed:
        attach = getattr(library, "attach_processing_api", None)
        if callable(attach) and processing_api is not None:
            with _logged("Library %r could not attach to the processing API", library.name):
                attach(processing_api)


def _add_view_factories(arguments: dict[str, Any]) -> None:
    """ProcessingController: append a settings panel factory for each library added to its ProcessingAPI."""
    factories = list(arguments["view_controller_factories"])
    for plugin, library in installed_plugins(arguments["processing_api"]):
        create = getattr(plugin, "create_view_controller_factory", None)
        if create is not None:
            with _logged("Plugin %r failed to build its settings panel", getattr(plugin, "name", plugin)):
                factories.append(create(library, arguments["file_dialog_factory"]))
    arguments["view_controller_factories"] = factories


def extend_plugin_registry(registry: Any) -> None:
    """Call each activated plugin's ``register_plugins(registry)`` (the shim, and every new PluginRegistry); never raises."""
    for plugin in list(_state.plugins or []):
        register = getattr(plugin, "register_plugins", None)
        if callable(register):
            with _logged("Plugin %r failed to register with ptychodus's plugin registry", getattr(plugin, "name", plugin)):
                register(registry)


# module, class, the constructor parameters the extension reads, the extension
_PATCHES: tuple[tuple[str, str, frozenset[str], Callable[[dict[str, Any]], Callable[[Any], None] | None]], ...] = (
    (
        "ptychodus.model.processing.core",
        "ProcessingCore",
        frozenset({"settings_registry", "algorithm_libraries"}),
        _add_libraries,
    ),
    (
        "ptychodus.controller.processing.core",
        "ProcessingController",
        frozenset({"processing_api", "file_dialog_factory", "view_controller_factories"}),
        _add_view_factories,
    ),
    ("ptychodus.api.plugins", "PluginRegistry", frozenset(), lambda arguments: extend_plugin_registry),
)


def _patch_init(
    module: ModuleType, class_name: str, needed: frozenset[str], extend: Callable[[dict[str, Any]], Callable[[Any], None] | None]
) -> None:
    """Wrap ``class_name.__init__``: ``extend`` may change its bound arguments first; what it returns runs after."""
    cls = getattr(module, class_name, None)
    if cls is None or hasattr(cls.__init__, _PATCH_MARK):
        return
    original = cls.__init__
    signature = inspect.signature(original)
    if not needed <= set(signature.parameters):
        logger.error(
            "%s(%s) is not the ptychodus 1.7 signature; reconstructor plugins not added", class_name, list(signature.parameters)
        )
        return

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        after = None
        with _logged("Adding reconstructor plugins to %s failed; ptychodus continues without them", class_name):
            bound = signature.bind(self, *args, **kwargs)
            after = extend(bound.arguments)
            args, kwargs = bound.args[1:], bound.kwargs
        original(self, *args, **kwargs)
        if after is not None:
            after(self)

    setattr(__init__, _PATCH_MARK, original)
    cls.__init__ = __init__


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
                        "ptychodus %s is outside the range this plugin supports (>=1.7,<1.8); reconstructor plugins "
                        "from %s are not activated (set %s=1 to try anyway)",
                        installed,
                        ENTRY_POINT_GROUP,
                        FORCE_ENV_VAR,
                    )
                    return False
            if plugins is not None:
                _state.plugins = list(plugins)
            elif _state.plugins is None:
                _state.plugins = load_entry_point_plugins()
            if not _state.active:
                for module_name, class_name, needed, extend in _PATCHES:
                    _when_imported(
                        module_name, functools.partial(_patch_init, class_name=class_name, needed=needed, extend=extend)
                    )
                _state.active = True
            return True
    except Exception:
        logger.exception("Activating reconstructor plugins failed; ptychodus starts without them")
        return False


def deactivate() -> None:
    """Undo :func:`activate` (tests): restore the wrapped constructors and forget loaded entries."""
    with _state.lock:
        for module_name, class_name, _, _ in _PATCHES:
            cls = getattr(sys.modules.get(module_name), class_name, None)
            original = getattr(getattr(cls, "__init__", None), _PATCH_MARK, None)
            if cls is not None and original is not None:
                cls.__init__ = original
        if _state.hook is not None:
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(_state.hook)
            _state.hook = None
        _state.plugins = None
        _state.active = False
        _state.installed = weakref.WeakKeyDictionary()


def installed_plugins(processing_api: Any) -> list[tuple[Any, Any]]:
    """(plugin, library) pairs this module added to the ProcessingCore that owns ``processing_api``."""
    with _state.lock:
        return list(_state.installed.get(processing_api, []))


def installed_libraries(processing_api: Any) -> list[Any]:
    """Libraries this module added to the ProcessingCore that owns ``processing_api``."""
    return [library for _, library in installed_plugins(processing_api)]


# ------------------------------------------------------------------------------------ post-import hook


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Runs callbacks on a module right after its own code has run (once)."""

    def __init__(self) -> None:
        self.callbacks: dict[str, list[Callable[[ModuleType], None]]] = {}

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        callbacks = self.callbacks.pop(fullname, None)
        if not callbacks:
            return None
        spec = importlib.util.find_spec(fullname)  # the other finders: no callbacks are left here for it
        loader = None if spec is None else spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module  # a loader object serves one module, so it is wrapped in place

        def exec_then_call_back(module: ModuleType) -> None:
            exec_module(module)
            for callback in callbacks:
                with _logged("Post-import hook on %s failed", fullname):
                    callback(module)

        setattr(loader, "exec_module", exec_then_call_back)  # noqa: B010
        return spec


def _when_imported(module_name: str, callback: Callable[[ModuleType], None]) -> None:
    """Run ``callback(module)`` now if the module is imported, else right after it is."""
    module = sys.modules.get(module_name)
    if module is not None:
        callback(module)
        return
    if _state.hook is None or _state.hook not in sys.meta_path:
        _state.hook = _PostImportHook()
        sys.meta_path.insert(0, _state.hook)
    _state.hook.callbacks.setdefault(module_name, []).append(callback)
