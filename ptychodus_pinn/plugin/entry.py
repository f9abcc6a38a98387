"""Entry point of the ``ptychodus.reconstructors`` group for this distribution.

``pyproject.toml``::

    [project.entry-points."ptychodus.reconstructors"]
    ptychodus-pinn = "ptychodus_pinn.plugin.entry:reconstructor_plugin"

Calling it is cheap (no ptychodus, torch or Qt imports); the library is built when ptychodus builds
its ``ProcessingCore`` and the panel when it builds its ``ProcessingController``.
"""

from __future__ import annotations

from typing import Any

from .activation import ReconstructorPlugin


def create_library(settings_registry: Any, *, is_developer_mode_enabled: bool = False) -> Any:
    from .library import PinnReconstructorLibrary

    return PinnReconstructorLibrary(settings_registry, is_developer_mode_enabled=is_developer_mode_enabled)


def create_view_controller_factory(library: Any, file_dialog_factory: Any) -> Any:
    from ptychodus_pinn.qt.view import PinnViewControllerFactory

    return PinnViewControllerFactory(library, file_dialog_factory)


def reconstructor_plugin() -> ReconstructorPlugin:
    return ReconstructorPlugin(
        name="PtychoPINN (PyTorch)",
        create_library=create_library,
        create_view_controller_factory=create_view_controller_factory,
    )
