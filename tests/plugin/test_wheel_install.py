"""The built wheel (not an editable install), installed next to ptychodus, is found by a plain ptychodus start.

Offline and quick (~15 s): the wheel is built without build isolation (setuptools from the test
environment), installed with ``--no-deps --no-index`` into a fresh venv that holds a copy of
ptychodus; every other dependency comes from the test environment through a ``.pth`` file. Then
``ModelCore`` (what every ptychodus front end builds) and ``python -m ptychodus`` (the GUI, offscreen)
must list our entries, and the command-line path must not import torch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OUR_KEYS = [
    "ptychopinn (pytorch)_reconstruct",
    "ptychopinn (pytorch)_train+infer",
    "ptychopinn (pytorch)_train+infer supervised",
]

pytestmark = pytest.mark.slow

MODEL_CORE_CHECK = """
import json, logging, sys
from ptychodus.model import ModelCore
model = ModelCore(log_level=logging.WARNING)
import ptychodus_pinn
print("RESULT", json.dumps({
    "keys": sorted(k for k in model.workflow_api.available_reconstructors() if "pytorch" in k),
    "torch": "torch" in sys.modules,
    "package": ptychodus_pinn.__file__,
    "shim": "ptychodus.plugins.ptychodus_pinn_shim" in sys.modules,
    "workflows": [p.simple_name for p in model.plugin_registry.file_based_workflows if "PtychoPINN" in p.simple_name],
}))
"""

# ptychodus's own main(); once its event loop runs, read the Algorithm combo and quit
GUI_CHECK = """
import json, sys
from PyQt5.QtCore import QTimer
from PyQt5.QtWidgets import QApplication, QComboBox

def check():
    app = QApplication.instance()
    items = set()
    for window in app.topLevelWidgets():
        for combo in window.findChildren(QComboBox):
            items |= {combo.itemText(i) for i in range(combo.count())}
    print("RESULT", json.dumps(sorted(item for item in items if "pytorch" in item)), flush=True)
    app.exit(0)

original_exec = QApplication.exec
def exec_and_check(*args):  # ptychodus calls app.exec(); PyQt5's exec is static
    QTimer.singleShot(200, check)
    return original_exec()
QApplication.exec = exec_and_check
sys.argv = ["ptychodus"]
import ptychodus.__main__
sys.exit(ptychodus.__main__.main())
"""


SKIPPED_NAMES = {".git", "build", "dist", "__pycache__", ".hypothesis", "tests", "docs", "benchmarks", "lightning_logs"}


def _not_sources(folder: str, names: list[str]) -> set[str]:
    """Names copytree leaves out: build outputs, caches, virtual environments (CI puts one in .venv)."""
    skipped = set()
    for name in names:
        path = Path(folder) / name
        if name in SKIPPED_NAMES or name.endswith((".egg-info", "_cache", ".png")) or (path / "pyvenv.cfg").exists():
            skipped.add(name)
    return skipped


def _site_packages(python: Path) -> Path:
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(subprocess.check_output([str(python), "-c", purelib], text=True).strip())


def _run(python: Path, code: str, cwd: Path) -> str:
    env = {**os.environ, "HOME": str(cwd), "QT_QPA_PLATFORM": "offscreen", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=180, cwd=cwd, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    (line,) = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]  # ptychodus prints too
    return line.removeprefix("RESULT ")


def test_wheel_is_discovered_by_plain_ptychodus(tmp_path: Path) -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    if '"ptychodus.reconstructors"' not in pyproject or "ptychodus.plugins" not in pyproject:
        pytest.skip("pyproject.toml does not yet declare the entry point and the shim mapping")
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed in the test environment (the wheel is built offline without it)")
    import ptychodus

    # build from a clean copy: a stale build/ folder in the checkout must not leak into the wheel
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=_not_sources)
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index", "-q", "-w", str(dist), source],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("ptychodus_pinn-*.whl")

    # a fresh venv whose own site-packages holds ptychodus (copied) and our wheel; other dependencies
    # come from the test environment through a .pth file, i.e. after them on sys.path
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = _site_packages(python)
    source_site = Path(ptychodus.__file__).resolve().parents[1]
    shutil.copytree(source_site / "ptychodus", site / "ptychodus", ignore=shutil.ignore_patterns("__pycache__"))
    for info in source_site.glob("ptychodus-*.dist-info"):
        shutil.copytree(info, site / info.name)
    (site / "zz_test_environment.pth").write_text(str(source_site) + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    assert (site / "ptychodus" / "plugins" / "ptychodus_pinn_shim.py").is_file()
    assert not (site / "ptychodus" / "plugins" / "__init__.py").exists()  # still a namespace package

    found = json.loads(_run(python, MODEL_CORE_CHECK, tmp_path))
    assert found["keys"] == OUR_KEYS
    assert found["shim"], "ptychodus's PluginRegistry imported the shim"
    assert Path(found["package"]).is_relative_to(site), "the wheel's copy is used, not the source tree"
    assert not found["torch"], "discovery costs no torch import"
    assert found["workflows"] == ["PtychoPINN_Streaming"], "the shim registered the streaming workflow"

    combo_items = json.loads(_run(python, GUI_CHECK, tmp_path))
    assert combo_items == OUR_KEYS  # the real GUI's Algorithm combo lists them
