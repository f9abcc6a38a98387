"""``ptychodus-pinn watch``: a folder's scans reconstructed in order, bad files skipped, new files picked up."""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time

import numpy as np
import pytest

from ptychodus_pinn.app.watch import FolderWatcher, add_watch_arguments, run_watch, scan_name
from ptychodus_pinn.engine.data import save_scan
from ptychodus_pinn.engine.simulate import simulate_scan

FAST = ["--refine-epochs", "2", "--accelerator", "cpu", "--poll-interval", "0.05"]


def watch_arguments(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_watch_arguments(parser)
    return parser.parse_args(list(argv))


def small_scan(seed: int):
    return simulate_scan("siemens", photons=1e4, n_positions=49, N=32, seed=seed)


def watch_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "ptychodus_pinn.app.watch"]


def test_backlog_is_reconstructed_oldest_first_and_a_corrupt_file_is_skipped(tmp_path, caplog):
    folder, out = tmp_path / "incoming", tmp_path / "out"
    folder.mkdir()
    # names against the order of arrival: the modification time decides
    names = ["zeta.npz", "alpha.h5", "mid.npz"]
    for seed, name in enumerate(names):
        save_scan(small_scan(seed), folder / name)
    start = time.time() - 100
    for offset, name in enumerate(names):
        os.utime(folder / name, (start + offset, start + offset))
    (folder / "broken.npz").write_bytes(b"PK\x03\x04 this is not a finished zip archive")
    os.utime(folder / "broken.npz", (start + 1.5, start + 1.5))
    (folder / "notes.txt").write_text("not a scan")
    (folder / ".mid.npz.pinn-1-abcdefgh.tmp").write_bytes(b"half written")

    caplog.set_level(logging.INFO, logger="ptychodus_pinn.app.watch")
    assert run_watch(watch_arguments(str(folder), "--out", str(out), "--once", *FAST)) == 0

    lines = watch_lines(caplog)
    done = [line.split(":")[0] for line in lines if " patterns, " in line]
    assert done == names
    for name in ("zeta", "alpha", "mid"):
        with np.load(out / name / "object.npz") as archive:
            std = archive["phase_std_rad"]
            assert std.shape == archive["object"].shape and np.isfinite(std[archive["illuminated"]]).all()
        assert (out / name / "confidence.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / name / "metrics.json").exists()  # simulated scans carry their truth
    broken = [line for line in lines if "broken.npz" in line]
    assert len(broken) == 1 and broken[0].startswith("skipped ") and "cannot read" in broken[0]
    assert not (out / "broken").exists() or not (out / "broken" / "object.npz").exists()
    assert sorted(p.name for p in out.iterdir() if (p / "object.npz").exists()) == ["alpha", "mid", "zeta"]
    assert any("3 scan(s) reconstructed, 1 skipped" in line for line in lines)

    # a restart skips what is done and does not stop at the broken file either
    caplog.clear()
    before = (out / "mid" / "object.npz").stat().st_mtime_ns
    assert run_watch(watch_arguments(str(folder), "--out", str(out), "--once", *FAST)) == 0
    assert (out / "mid" / "object.npz").stat().st_mtime_ns == before
    assert any(
        "0 scan(s) reconstructed, 1 skipped (unreadable or failed), 3 already done" in line for line in watch_lines(caplog)
    )


def test_a_file_that_appears_while_watching_is_reconstructed(tmp_path, caplog):
    folder, out = tmp_path / "incoming", tmp_path / "out"
    folder.mkdir()
    caplog.set_level(logging.INFO, logger="ptychodus_pinn.app.watch")
    stop = threading.Event()
    codes: list[int] = []
    watcher = threading.Thread(
        target=lambda: codes.append(run_watch(watch_arguments(str(folder), "--out", str(out), *FAST), stop)), daemon=True
    )
    watcher.start()
    try:
        time.sleep(0.2)  # a few empty looks at the folder
        save_scan(small_scan(7), folder / "late arrival.npz")
        deadline = time.monotonic() + 120
        while not (out / "late arrival" / "object.npz").exists() and time.monotonic() < deadline and watcher.is_alive():
            time.sleep(0.05)
    finally:
        stop.set()
        watcher.join(timeout=60)
    assert not watcher.is_alive() and codes == [0]
    assert (out / "late arrival" / "object.npz").exists()
    assert any(line.startswith("late arrival.npz: 49 patterns, ") for line in watch_lines(caplog))


def test_a_growing_file_is_read_only_once_its_size_held_for_one_poll(tmp_path):
    watcher = FolderWatcher(tmp_path)
    path = tmp_path / "scan.npz"
    path.write_bytes(b"PK" + b"x" * 10)
    assert watcher.poll() == ([], 1)  # first sight: arriving
    with open(path, "ab") as stream:
        stream.write(b"y" * 10)
    assert watcher.poll() == ([], 1)  # still growing
    assert watcher.poll() == ([path], 0)  # unchanged for one poll: arrived
    watcher.mark_handled(path)
    assert watcher.poll() == ([], 0)  # handled once
    with open(path, "ab") as stream:
        stream.write(b"z")
    assert watcher.poll() == ([], 1)
    assert watcher.poll() == ([path], 0)  # a rewritten file is looked at again


def test_max_polls_bounds_the_loop_and_bad_arguments_are_refused(tmp_path):
    assert run_watch(watch_arguments(str(tmp_path), "--out", str(tmp_path / "out"), "--max-polls", "2", *FAST)) == 0
    with pytest.raises(FileNotFoundError, match="not found"):
        run_watch(watch_arguments(str(tmp_path / "missing"), "--out", str(tmp_path / "out"), *FAST))
    with pytest.raises(FileNotFoundError, match="not found"):
        run_watch(watch_arguments(str(tmp_path), "--out", str(tmp_path / "out"), "--model", str(tmp_path / "no.pinn.pt")))
    with pytest.raises(SystemExit):
        watch_arguments(str(tmp_path), "--out", "x", "--poll-interval", "0")


def test_scan_names():
    from pathlib import Path

    assert scan_name(Path("a/b.c.npz")) == "b.c"
    assert scan_name(Path("scan.npz.bz2")) == "scan"
    assert scan_name(Path("scan.H5")) == "scan"


def test_the_cli_subcommand_and_ctrl_c(tmp_path, caplog, monkeypatch):
    from ptychodus_pinn.app import watch
    from ptychodus_pinn.app.cli import main

    folder = tmp_path / "incoming"
    folder.mkdir()
    assert main(["watch", str(folder), "--out", str(tmp_path / "out"), "--once", *FAST]) == 0
    assert main(["watch", str(tmp_path / "missing"), "--out", str(tmp_path / "out"), "--once"]) == 2
    save_scan(small_scan(1), folder / "one.npz")

    def interrupted(self, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(watch.ScanReconstructor, "__call__", interrupted)
    caplog.set_level(logging.INFO, logger="ptychodus_pinn.app.watch")
    assert main(["watch", str(folder), "--out", str(tmp_path / "out"), "--once", *FAST]) == 130
    assert any(line.startswith("interrupted: 0 scan(s) reconstructed") for line in watch_lines(caplog))


@pytest.mark.parametrize("start, runs_network", [("flat", False), ("auto", True)])
def test_the_network_runs_only_where_it_can_change_the_result(tmp_path, caplog, start, runs_network):
    """A flat refinement start ignores the network's object, so watch does not run the network (its
    result comes sooner); with ``--refine-start auto`` the shipped model runs and may be the start."""
    folder, out = tmp_path / "incoming", tmp_path / "out"
    folder.mkdir()
    save_scan(simulate_scan("siemens", photons=1e4, n_positions=49, N=64, seed=3), folder / "s.npz")
    caplog.set_level(logging.INFO, logger="ptychodus_pinn")
    assert run_watch(watch_arguments(str(folder), "--out", str(out), "--once", "--refine-start", start, *FAST)) == 0
    with np.load(out / "s" / "object.npz") as archive:
        assert ("network_object" in archive.files) is runs_network
    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith("Network: 49 patterns") for message in messages) is runs_network
    assert any("the network cannot change the result, so it is not run" in message for message in messages) is not runs_network
