"""The benchmark scripts outside the package: the GPU script's CPU smoke mode runs and reports
real throughputs, and README's headline block is exactly what the committed results render."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
COMMITTED_GRID = BENCHMARKS / "results" / "cpu-grid.json"


@pytest.fixture(scope="module")
def run_benchmarks():  # type: ignore[no-untyped-def]
    """The benchmark module (it imports pty-chi only when a pty-chi method runs)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import run_benchmarks as module

        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_gpu_script_cpu_quick_mode_reports_throughputs(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    completed = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu.sh"), "--device", "cpu", "--quick", "--threads", "1"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert (tmp_path / "gpu_bench.log").stat().st_size > 0
    assert report["device"] == "cpu"
    assert report["errors"] == []
    assert {entry["precision"] for entry in report["entries"]} == {"32", "bf16-mixed"}
    for entry in report["entries"]:
        assert entry["parameters"] > 0
        for phase in ("inference", "training"):
            assert 0 < entry[phase]["patterns_per_s"] < 1e7, (entry["N"], phase, entry[phase])
    assert report["lightning"], "the end-to-end Lightning epoch was not timed"


@pytest.mark.skipif(not COMMITTED_GRID.exists(), reason="no committed CPU grid")
def test_readme_headline_is_rendered_from_committed_results(run_benchmarks) -> None:  # type: ignore[no-untyped-def]
    results = json.loads(COMMITTED_GRID.read_text())
    block = run_benchmarks.readme_block(results)
    readme = (REPO / "README.md").read_text()
    regenerate = "run_benchmarks.py --render benchmarks/results/cpu-grid.json --readme"
    assert block in readme, f"README's benchmark block is stale: {regenerate}"
    # every case of the grid is in the block, with the goals stated
    for case in results["cases"]:
        assert f"| {case['label']} |" in block
    assert "Goal (a)" in block and "Goal (b)" in block


def test_case_argument_names_the_expected_form(run_benchmarks) -> None:  # type: ignore[no-untyped-def]
    assert run_benchmarks.parse_case("128:1e5:lines") == (128, 1e5, "lines")
    with pytest.raises(argparse.ArgumentTypeError, match="N:PHOTONS:KIND"):
        run_benchmarks.parse_case("128-1e5-lines")
    with pytest.raises(argparse.ArgumentTypeError, match="siemens or lines"):
        run_benchmarks.parse_case("64:1e5:star")


def test_readme_update_replaces_only_the_marked_block(run_benchmarks, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    results = {
        "name": "t", "total_s": 120.0, "machine": {"description": "test machine"},
        "settings": {"n_positions": 9, "pinn_epochs": 2, "n_filters_scale": 1, "lsqml_epochs": 3, "epie_epochs": 4},
        "cases": [{
            "label": "N32_lines_1e05",
            "rows": [
                {"method": method, "phase_ssim": ssim, "wall_s": wall, "flat_phase_ssim": 0.5}
                for method, ssim, wall in (
                    ("pty-chi LSQML", 0.8, 10.0), ("pty-chi ePIE", 0.7, 2.0), ("PINN self-supervised", 0.6, 20.0)
                )
            ],
            "headline": {"a_pinn_best_phase_ssim_fraction": 0.75, "a_time_ratio": None,
                         "b_unseen_phase_ssim_fraction": 0.5, "b_speed_ratio": 40.0},
        }],
    }  # fmt: skip
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{run_benchmarks.README_START}\nold table\n{run_benchmarks.README_END}\nafter\n")
    run_benchmarks.update_readme(results, readme)
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("\nafter\n") and "old table" not in text
    assert "| N32_lines_1e05 | 0.800 (10) | 0.700 (2) | 0.600 (20) | 0.75 | — | 0.50 | 40 | 0.50 |" in text
    assert "met in 0 of 1 cases" in text
    with pytest.raises(SystemExit, match="no simulated cases"):
        run_benchmarks.update_readme({**results, "cases": []}, readme)
    assert "N32_lines_1e05" in readme.read_text()  # left as it was
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no benchmark headline markers"):
        run_benchmarks.update_readme(results, readme)
