"""Entry point of the ``ptychodus.reconstructors`` group, and ``ptychodus-pinn gui``.

Wires the library (:mod:`ptychodus_pinn.plugin`) with its settings panel (:mod:`ptychodus_pinn.qt.view`).
``pyproject.toml``::

    [project.entry-points."ptychodus.reconstructors"]
    ptychodus-pinn = "ptychodus_pinn.qt.entry:reconstructor_plugin"

Importing this module and calling the entry is cheap (no ptychodus, torch or Qt imports): the library
is built when ptychodus builds its ``ProcessingCore``, the panel when it builds its ``ProcessingController``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

from ptychodus_pinn.plugin.activation import ReconstructorPlugin, activate

logger = logging.getLogger(__name__)


def create_library(settings_registry: Any, *, is_developer_mode_enabled: bool = False) -> Any:
    from ptychodus_pinn.plugin.library import PinnReconstructorLibrary

    return PinnReconstructorLibrary(settings_registry, is_developer_mode_enabled=is_developer_mode_enabled)


def create_view_controller_factory(library: Any, file_dialog_factory: Any) -> Any:
    from ptychodus_pinn.qt.view import PinnViewControllerFactory

    return PinnViewControllerFactory(library, file_dialog_factory)


def register_plugins(registry: Any) -> None:
    """Add the "PtychoPINN (PyTorch) streaming" file-based workflow to a ptychodus ``PluginRegistry``.

    Imports only ``ptychodus.api`` (no torch), and only for a real registry.
    """
    if not hasattr(registry, "file_based_workflows"):
        return
    from ptychodus_pinn.plugin.streaming import register_streaming_workflow

    register_streaming_workflow(registry)


def reconstructor_plugin() -> ReconstructorPlugin:
    return ReconstructorPlugin("PtychoPINN (PyTorch)", create_library, create_view_controller_factory, register_plugins)


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
