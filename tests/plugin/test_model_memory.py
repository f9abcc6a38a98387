"""The model in use outlives ptychodus: loaded, saved or trained in the GUI, it is the next session's model."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from ptychodus_pinn.engine.persistence import save_model
from ptychodus_pinn.plugin.library import RECORD_NAME, TRAINED_MODELS_DIR, ModelSlot, default_record_path


def same_weights(first: Any, second: Any) -> bool:
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.fixture
def gui_library(library: Any) -> Any:
    """The library as the GUI has it: its panel attached, which turns the model memory on."""
    library.attach_view()
    return library


def test_batch_mode_neither_reads_nor_writes_the_memory(library: Any, trained_small: Any, tmp_path: Path) -> None:
    """Without a panel (``ptychodus -b``, scripts) a run depends on its inputs only, not on the last GUI session."""
    default_record_path().parent.mkdir(parents=True, exist_ok=True)
    default_record_path().write_text(json.dumps({"model_file": str(save_model(trained_small.model, tmp_path / "g.pinn.pt"))}))
    assert library.model_slot.record is None and library.model_slot.get() is None
    library.load_model(tmp_path / "g.pinn.pt")
    library.model_slot.set(None, "")
    assert default_record_path().exists()  # untouched


def test_a_loaded_model_is_the_next_sessions_model(gui_library: Any, trained_small: Any, tmp_path: Path) -> None:
    library = gui_library
    path = save_model(trained_small.model, tmp_path / "mine.pinn.pt")
    assert library.model_slot.record == default_record_path() == Path.home() / ".ptychodus" / RECORD_NAME
    library.load_model(path)
    assert json.loads(default_record_path().read_text()) == {"model_file": str(path.resolve())}

    following = ModelSlot(default_record_path())  # what the next session's library builds
    assert "mine.pinn.pt" in following.describe() and "loads on first use" in following.describe()
    restored = following.get()
    assert restored is not None and same_weights(restored, trained_small.model)
    assert "mine.pinn.pt (from the last session)" in following.describe()


def test_a_model_trained_in_the_gui_is_kept_and_recorded(gui_library: Any, trained_small: Any) -> None:
    library = gui_library
    kept = library.keep_trained_model(trained_small.model, "scan 7/b")
    assert kept is not None and kept.parent == Path.home() / ".ptychodus" / TRAINED_MODELS_DIR
    assert kept.name.startswith("scan-7-b-N32-") and kept.name.endswith(".pinn.pt")
    library.model_slot.set(trained_small.model, "self-supervised on scan 7/b", file=kept)
    restored = ModelSlot(default_record_path()).get()
    assert restored is not None and same_weights(restored, trained_small.model)


def test_saving_makes_the_saved_file_the_one_to_come_back_to(gui_library: Any, trained_small: Any, tmp_path: Path) -> None:
    library = gui_library
    library.model_slot.set(trained_small.model, "trained")  # in memory only: nothing recorded yet
    assert not default_record_path().exists()
    library.save_model(tmp_path / "kept")
    assert json.loads(default_record_path().read_text())["model_file"] == str((tmp_path / "kept.pinn.pt").resolve())


def test_forgetting_returns_to_the_shipped_model(gui_library: Any, trained_small: Any, tmp_path: Path) -> None:
    library = gui_library
    library.load_model(save_model(trained_small.model, tmp_path / "m.pinn.pt"))
    library.model_slot.set(None, "")  # the panel's "Use Shipped Model"
    assert not default_record_path().exists()
    assert ModelSlot(default_record_path()).get() is None


@pytest.mark.parametrize("damage", ["missing", "corrupt", "bad record"])
def test_a_broken_memory_is_a_warning_and_the_shipped_model_is_used(
    trained_small: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    record = tmp_path / RECORD_NAME
    model_file = save_model(trained_small.model, tmp_path / "m.pinn.pt")
    record.write_text(json.dumps({"model_file": str(model_file)}))
    if damage == "missing":
        model_file.unlink()
    elif damage == "corrupt":
        model_file.write_bytes(b"not a model")
    else:
        record.write_text("{")
    with caplog.at_level(logging.WARNING, logger="ptychodus_pinn"):
        slot = ModelSlot(record)
        assert slot.get() is None
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert (str(record) if damage == "bad record" else str(model_file)) in warning
    assert "shipped model" in warning or "without the last session's model" in warning


def test_a_model_that_cannot_be_kept_is_a_warning_not_a_lost_training(
    gui_library: Any, trained_small: Any, caplog: pytest.LogCaptureFixture
) -> None:
    library = gui_library
    blocked = Path.home() / ".ptychodus" / TRAINED_MODELS_DIR
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("a file where the folder should be")
    with caplog.at_level(logging.WARNING, logger="ptychodus_pinn"):
        assert library.keep_trained_model(trained_small.model, "scan") is None
    assert any("used in this session only" in record.getMessage() for record in caplog.records)
