"""Fixtures that run the real ptychodus (no mocks) with the plugin activated."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("ptychodus")


@pytest.fixture
def model_core(activated: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A started ptychodus ModelCore (its task manager runs background tasks)."""
    monkeypatch.setenv("HOME", str(tmp_path))  # keep ~/.ptychodus writes out of the real home
    from ptychodus.model import ModelCore

    with ModelCore(log_level=logging.INFO) as model:
        yield model


@pytest.fixture
def library(model_core: Any) -> Any:
    """Our library instance inside that ModelCore."""
    from ptychodus_pinn.plugin.activation import installed_libraries

    (found,) = installed_libraries(model_core.processing_core.processing_api)
    return found
