"""The Qt view's tests run the real ptychodus GUI offscreen (the `activated` fixture is in tests/conftest.py)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("ptychodus")
