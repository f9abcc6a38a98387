"""The benchmark scripts outside the package: the GPU script's CPU smoke mode runs and reports
real throughputs, README's headline block is exactly what the committed results render, and
refinement_bench.py's pure parts (case parsing, time to quality, tables, README block) work without
pty-chi; its --quick run is checked where pty-chi is installed (the benchmark venv, not CI)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"
COMMITTED_GRID = BENCHMARKS / "results" / "cpu-grid.json"


def _benchmark_module(name: str):  # type: ignore[no-untyped-def]
    """Yield a script of benchmarks/ imported as a module (pty-chi is imported only when a pty-chi method
    runs); its folder leaves sys.path again and OPENBLAS_NUM_THREADS (which some set for their own
    process) is restored."""
    blas_threads = os.environ.get("OPENBLAS_NUM_THREADS")
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))
        if blas_threads is None:
            os.environ.pop("OPENBLAS_NUM_THREADS", None)
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = blas_threads


@pytest.fixture(scope="module")
def run_benchmarks():  # type: ignore[no-untyped-def]
    yield from _benchmark_module("run_benchmarks")


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
    (reconstruction,) = report["reconstruct"]  # refinement and streaming throughput
    assert 0 < reconstruction["refinement_s_per_epoch"] < 60
    assert len(reconstruction["seconds_per_scan"]) == 1 and reconstruction["scans_per_minute"] > 0


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


# ---------------------------------------------------------------------------------------------- refinement_bench.py


@pytest.fixture(scope="module")
def refinement_bench():  # type: ignore[no-untyped-def]
    yield from _benchmark_module("refinement_bench")


def _record(epoch: int, wall_s: float, phase_ssim: float) -> dict[str, float]:
    return {"epoch": epoch, "wall_s": wall_s, "phase_ssim": phase_ssim, "amplitude_ssim": 0.5, "frc50": 0.4,
            "flat_phase_ssim": 0.1}  # fmt: skip


def _fake_case(bench, label: str, with_network: bool) -> dict:  # type: ignore[no-untyped-def, type-arg]
    """A case as run_case returns it: LSQML reaches 0.8, 95 % of it (0.76) at 20 s."""
    curves = {
        bench.FLAT: [(0, 0.5, 0.1), (1, 1.5, 0.5), (2, 2.5, 0.7)],
        bench.LSQML: [(5, 10.0, 0.5), (10, 20.0, 0.76), (15, 30.0, 0.79), (20, 40.0, 0.8)],
        bench.EPIE: [(2, 1.0, 0.6)],
    }
    if with_network:
        curves[bench.NETWORK] = [(0, 0.8, 0.3)]
        curves[bench.NETWORK_REFINED] = [(0, 1.0, 0.6), (1, 2.0, 0.75), (2, 3.0, 0.81), (3, 4.0, 0.85)]
    curves = {
        method: {"records": [_record(*point) for point in points],
                 "extra": {"seconds_per_epoch": 0.5, "start": "network" if method == bench.NETWORK_REFINED else None}}
        for method, points in curves.items()
    }  # fmt: skip
    case = {"label": label, "curves": curves, "headline": bench.case_headline(curves)}
    if with_network:
        case.update(start="network", start_nll={"flat": -6.1, "network": -6.2})
    else:
        case["note"] = "No pretrained model ships for N=32: the network rows are not run."
    return case


def _fake_results(bench) -> dict:  # type: ignore[no-untyped-def, type-arg]
    return {
        "name": "t", "total_s": 120.0, "machine": {"description": "test machine"},
        "settings": {"n_positions": 9, "seed": 11, "refine_epochs": 3, "lsqml_epochs": 20, "epie_epochs": 2},
        "cases": [_fake_case(bench, "N64_lines_1e05_jittered", True), _fake_case(bench, "N32_siemens_1e05_spiral", False)],
    }  # fmt: skip


def test_refinement_case_argument_forms(refinement_bench) -> None:  # type: ignore[no-untyped-def]
    Case = refinement_bench.Case
    assert refinement_bench.parse_case("64:1e5:natural") == Case(64, 1e5, "natural", "jittered")
    assert refinement_bench.parse_case("64:1e4:circuit:spiral") == Case(64, 1e4, "circuit", "spiral")
    assert Case(64, 1e5, "grains", "spiral").label == "N64_grains_1e05_spiral"
    for text, message in (
        ("64-1e5-lines", "N:PHOTONS:KIND"), ("64:1e5", "N:PHOTONS:KIND"), ("64:1e5:lines:raster:x", "N:PHOTONS:KIND"),
        ("x:1e5:lines", "N:PHOTONS:KIND"), ("64:-1:lines", "positive"), ("64:1e5:star", "KIND must be one of"),
        ("64:1e5:lines:zigzag", "PATH must be one of"),
    ):  # fmt: skip
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            refinement_bench.parse_case(text)
    # the default set is issue 9's, on a seed the shipped model never trained on
    labels = [case.label for case in refinement_bench.Settings().cases]
    assert "N64_circuit_1e05_spiral" in labels and "N64_natural_1e04_jittered" in labels and len(labels) == 6
    assert refinement_bench.Settings().seed not in refinement_bench.TRAINING_SEEDS


def test_refinement_record_epochs(refinement_bench) -> None:  # type: ignore[no-untyped-def]
    assert refinement_bench.record_epochs(100) == [1, 2, 3, 5, 8, 10, 15, 20, 30, 40, 60, 80, 100]
    assert refinement_bench.record_epochs(7) == [1, 2, 3, 5, 7]
    assert refinement_bench.record_epochs(250)[-4:] == [100, 150, 200, 250]
    assert refinement_bench.record_epochs(1) == [1]


def test_refinement_time_to_quality(refinement_bench) -> None:  # type: ignore[no-untyped-def]
    records = [_record(1, 1.0, 0.2), _record(2, 2.0, float("nan")), _record(3, 3.0, 0.5), _record(4, 4.0, 0.4)]
    assert refinement_bench.time_to(records, 0.5) == 3.0  # first time reached, not the last
    assert refinement_bench.time_to(records, 0.45) == 3.0  # NaN is never "reached"
    assert refinement_bench.time_to(records, 0.6) is None
    head = _fake_case(refinement_bench, "c", True)["headline"]
    assert head["lsqml_final_phase_ssim"] == 0.8 and head["lsqml_time_to_95pct_s"] == 20.0
    refined = head[refinement_bench.NETWORK_REFINED]
    assert refined["time_to_lsqml_final_s"] == 3.0
    assert refined["time_ratio_to_lsqml_t95"] == pytest.approx(0.15)
    assert refined["meets_target"] and not refined["meets_goal"]  # ≤ 1/5 but not ≤ 1/10
    assert refined["best_fraction_of_lsqml"] == pytest.approx(0.85 / 0.8)
    flat = head[refinement_bench.FLAT]
    assert flat["time_to_lsqml_final_s"] is None and flat["time_ratio_to_lsqml_t95"] is None and not flat["meets_target"]
    assert _fake_case(refinement_bench, "c", False)["headline"][refinement_bench.NETWORK_REFINED] is None


def test_refinement_markdown_from_results(refinement_bench) -> None:  # type: ignore[no-untyped-def]
    text = refinement_bench.markdown(_fake_results(refinement_bench))
    assert (
        "| N64_lines_1e05_jittered | 0.300 (0.8 s) | 0.700 (2.5 s) | 0.850 (4.0 s) | 0.800 (40.0 s) | 0.600 (1.0 s) "
        "| 20.0 | 3.0 | 0.15 | — | — | 1.06 | network | 0.10 |"
    ) in text
    assert "| N32_siemens_1e05_spiral | — | 0.700 (2.5 s) | — | 0.800 (40.0 s) |" in text
    assert "network + refinement: reaches LSQML's final phase SSIM in 1 of 1 cases, within 1/5 of LSQML's time to 95 % in 1" in (
        text
    )
    assert "refinement from flat: reaches LSQML's final phase SSIM in 0 of 2 cases" in text
    # a per-case table for each case, with the rows that ran
    assert "## N64_lines_1e05_jittered" in text and "## N32_siemens_1e05_spiral" in text
    assert "| network + refinement | 3 | 4.00 | 0.500 | 3.00 | 0.850 | 0.500 | 0.400 | 3.00 | 0.150 | 1.062 | network |" in text
    assert "No pretrained model ships for N=32" in text
    assert "(NLL flat -6.100000, network -6.200000)" in text


def test_refinement_render_from_saved_json(refinement_bench, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    results = _fake_results(refinement_bench)
    saved = tmp_path / "t.json"
    saved.write_text(json.dumps(results))
    readme_before = (REPO / "README.md").read_text()
    assert refinement_bench.main(["--render", str(saved)]) == 0
    assert (tmp_path / "t.md").read_text() == refinement_bench.markdown(results) + "\n"
    assert (tmp_path / "t_N64_lines_1e05_jittered_quality_vs_time.png").stat().st_size > 0
    assert (REPO / "README.md").read_text() == readme_before  # only --readme touches README


def test_refinement_readme_block_needs_markers(refinement_bench, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    results = _fake_results(refinement_bench)
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    with pytest.raises(SystemExit, match="no refinement headline markers"):
        refinement_bench.update_readme(results, readme)
    assert readme.read_text() == "no markers here\n"
    readme.write_text(f"before\n{refinement_bench.README_END}\n{refinement_bench.README_START} x -->\nold\n")  # wrong order
    with pytest.raises(SystemExit, match="no refinement headline markers"):
        refinement_bench.update_readme(results, readme)

    start = f"{refinement_bench.README_START} (written by hand) -->"
    readme.write_text(f"before\n{start}\nold table\n{refinement_bench.README_END}\nafter\n")
    refinement_bench.update_readme(results, readme)
    text = readme.read_text()
    assert text.startswith(f"before\n{start}\n") and text.endswith(f"\n{refinement_bench.README_END}\nafter\n")
    assert "old table" not in text and "| N64_lines_1e05_jittered | 0.300 (0.8 s) |" in text
    refinement_bench.update_readme(results, readme)
    assert readme.read_text() == text  # idempotent


def test_refinement_bench_quick_runs_end_to_end(tmp_path: Path) -> None:
    """The --quick path with pty-chi, shortened further; only where pty-chi is installed (not in CI)."""
    pytest.importorskip("ptychi")
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "refinement_bench.py"), "--quick", "--name", "t", "--out", str(tmp_path),
         "--refine-epochs", "3", "--lsqml-epochs", "4", "--epie-epochs", "2", "--positions", "64"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads((tmp_path / "t.json").read_text())
    assert [case["N"] for case in results["cases"]] == [32, 64]
    no_network, full = results["cases"]
    assert set(no_network["curves"]) == {"refinement from flat", "pty-chi LSQML", "pty-chi ePIE"}
    assert set(full["curves"]) == {"network only", "network + refinement"} | set(no_network["curves"])
    assert full["start"] in ("flat", "network") and set(full["start_nll"]) == {"flat", "network"}
    for case in results["cases"]:
        for method, curve in case["curves"].items():
            times = [record["wall_s"] for record in curve["records"]]
            assert times == sorted(times) and times[0] > 0, (method, times)
            assert all(0 <= record["phase_ssim"] <= 1 for record in curve["records"])
        refined = case["curves"]["refinement from flat"]
        assert [r["epoch"] for r in refined["records"]] == [0, 1, 2, 3]
        assert len(refined["extra"]["epochs"]) == 3
        for suffix in ("quality_vs_time", "reconstructions"):
            assert (tmp_path / f"t_{case['label']}_{suffix}.png").stat().st_size > 0
    network_start = full["curves"]["network + refinement"]["records"][0]["wall_s"]
    assert network_start >= full["curves"]["network only"]["records"][0]["wall_s"]  # its clock includes the network
    assert "## Summary" in (tmp_path / "t.md").read_text()


@pytest.fixture(scope="module")
def metric_check():  # type: ignore[no-untyped-def]
    yield from _benchmark_module("metric_check")


def test_metric_check_holds_out_patterns_and_scores_them_by_likelihood(metric_check) -> None:  # type: ignore[no-untyped-def]
    """10 % of the patterns are held out (none in both halves); on them the truth fits better than a flat
    object or a noisy truth, at any overall amplitude (the scale is fitted to the counts)."""
    import numpy as np

    from ptychodus_pinn.engine.simulate import simulate_scan

    scan = simulate_scan("siemens", photons=1e5, n_positions=100, N=32, seed=3)
    kept, held = metric_check.split(scan)
    assert (kept.count, held.count) == (90, 10)
    pairs = {tuple(p) for p in kept.positions_yx_px} & {tuple(p) for p in held.positions_yx_px}
    assert not pairs
    truth = scan.ground_truth
    noise = np.exp(0.5j * np.random.default_rng(0).standard_normal(truth.shape)).astype(np.complex64)
    truth_nll = metric_check.held_out_nll(held, truth)
    assert metric_check.held_out_nll(held, 3.0 * truth) == pytest.approx(truth_nll, abs=1e-6)
    assert truth_nll < metric_check.held_out_nll(held, truth * noise) < metric_check.held_out_nll(held, np.ones_like(truth))


@pytest.fixture(scope="module")
def streaming_bench():  # type: ignore[no-untyped-def]
    yield from _benchmark_module("streaming_bench")


def test_lsqml_rows_are_reused_only_from_runs_scored_the_same_way(streaming_bench, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """--lsqml-from (streaming_bench, pretrained_bench) takes an earlier run's LSQML rows only for the same scans and
    scoring: a run scored over the lit region's bounding box (no "scoring" key) would mix two metrics in one ratio."""
    from ptychodus_pinn.engine.metrics import SCORING

    settings = {"size": 64, "positions": 576, "photons": 1e5, "seed": 11, "lsqml_epochs": 200}
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"settings": settings, "rows": []}))
    with pytest.raises(SystemExit, match="bounding box"):
        streaming_bench.reusable_lsqml_run(earlier, argparse.Namespace(**settings))
    earlier.write_text(json.dumps({"settings": {**settings, "scoring": SCORING}, "rows": [{"name": "a"}]}))
    assert streaming_bench.reusable_lsqml_run(earlier, argparse.Namespace(**settings))["rows"] == [{"name": "a"}]
    with pytest.raises(SystemExit, match="other scans"):
        streaming_bench.reusable_lsqml_run(earlier, argparse.Namespace(**{**settings, "seed": 12}))
