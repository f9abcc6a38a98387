"""Installed as ``ptychodus.plugins.ptychodus_pinn_shim``: activates ``ptychodus.reconstructors`` entry points.

ptychodus imports every module of its ``ptychodus.plugins`` namespace at the start of
``ModelCore.__init__`` and calls ``register_plugins(registry)``. Any exception other than
ModuleNotFoundError/AttributeError would abort ptychodus start-up, so this module catches
everything, and it only imports the standard library at import time (the command-line tools that
load plugins without the GUI must not pay for torch). The real work is in
``ptychodus_pinn.plugin.activation``; its source is mapped here at build time.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def register_plugins(registry: Any) -> None:
    """Install the reconstructor hooks and add the plugins' registry entries (e.g. the streaming
    workflow) to ``registry``; never raises (a broken plugin must not stop ptychodus)."""
    try:
        from ptychodus_pinn.plugin.activation import activate

        if activate():
            from ptychodus_pinn.plugin.activation import extend_plugin_registry

            extend_plugin_registry(registry)
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt):
            raise
        logger.warning("PtychoPINN (PyTorch) reconstructor plugin is unavailable: %s: %s", type(error).__name__, error)
