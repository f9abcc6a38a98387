"""``ptychodus-pinn pretrain``: a broad corpus, reproducible from its seeds, and a model file that loads."""

from __future__ import annotations

import math

import numpy as np

from ptychodus_pinn.app.cli import main
from ptychodus_pinn.app.pretrain import CORPUS_SEED, corpus, corpus_scans
from ptychodus_pinn.engine.persistence import load_model
from ptychodus_pinn.engine.simulate import ObjectKind, ScanPath


def test_the_corpus_covers_kinds_paths_probes_and_doses():
    entries = corpus(25, 64)
    assert {entry.kind for entry in entries} == set(ObjectKind)
    assert {entry.path for entry in entries} == set(ScanPath)
    assert len({entry.probe_radius_px for entry in entries}) == 3
    assert len({entry.probe_curvature_rad for entry in entries}) == 3
    decades = sorted(math.log10(entry.photons) for entry in entries)
    assert decades[0] >= 3 and decades[-1] <= 7 and max(np.diff(decades)) < 0.5  # evenly spread over 10³–10⁷
    assert min(entry.seed for entry in entries) == CORPUS_SEED >= 2000  # no test, demo or benchmark scan
    assert len({(e.kind, e.path, e.probe_radius_px, e.probe_curvature_rad) for e in entries}) == 25


def test_the_one_probe_corpus_keeps_the_default_probe():
    entries = corpus(25, 64, one_probe=True)
    assert {(entry.probe_radius_px, entry.probe_curvature_rad) for entry in entries} == {(16.0, 2.0)}
    assert min(entry.photons for entry in entries) >= 1e4 and max(entry.photons for entry in entries) <= 1e6
    assert {entry.kind for entry in entries} == set(ObjectKind)


def test_corpus_scans_are_reproducible():
    first, second = corpus_scans(3, 32, 9), corpus_scans(3, 32, 9)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.patterns, b.patterns)


def test_pretrain_writes_a_model_that_names_its_corpus(tmp_path):
    out = tmp_path / "corpus.pinn.pt"
    argv = ["pretrain", "--out", str(out), "--size", "32", "--corpus", "broad", "--scans", "5", "--positions", "9"]
    assert main([*argv, "--epochs", "1", "--n-filters-scale", "2", "--accelerator", "cpu", "--no-progress-bar"]) == 0
    model = load_model(out)
    assert model.config.N == 32 and "broad corpus: 5 scans × 9 patterns" in model.record.extra["pretrained_on"]
    assert model.config.n_filters_scale == 2  # a wider network on request (the shipped ones are width 1)


def test_pretrain_distils_and_fine_tunes_a_saved_model(tmp_path):
    """--mode distil refines every corpus scan for its targets; --initial-model starts from a saved model's weights."""
    first, second = tmp_path / "first.pinn.pt", tmp_path / "second.pinn.pt"
    common = [
        "--size",
        "32",
        "--corpus",
        "broad",
        "--scans",
        "2",
        "--positions",
        "16",
        "--accelerator",
        "cpu",
        "--no-progress-bar",
    ]
    assert main(["pretrain", "--out", str(first), "--epochs", "1", *common]) == 0
    assert load_model(first).config.n_filters_scale == 1  # the default width
    argv = ["pretrain", "--out", str(second), "--epochs", "1", "--mode", "distil", "--initial-model", str(first)]
    assert main([*argv, *common]) == 0
    model = load_model(second)
    described = model.record.extra["pretrained_on"]
    assert "distil mode" in described and "fine-tuned from first.pinn.pt" in described
    assert model.record.extra["distillation_target_refreshes"] == 0  # 1 epoch: the first targets only
    assert model.config.mode.value == "distil"


def test_stage_one_of_the_shipped_models_recipe_is_the_default():
    from ptychodus_pinn.app.cli import build_parser, config_values
    from ptychodus_pinn.app.pretrain import siemens_lines_scans
    from ptychodus_pinn.engine.config import TrainingConfig
    from ptychodus_pinn.engine.persistence import pretrained_path

    arguments = build_parser().parse_args(["pretrain"])
    assert arguments.corpus == "siemens-lines"
    assert config_values(arguments, TrainingConfig) == {"epochs": 40, "learning_rate": 3e-3}
    scans = siemens_lines_scans(32)
    assert [scan.metadata["object_kind"] for scan in scans[:2]] == ["siemens", "lines"] and len(scans) == 8
    assert [scan.metadata["seed"] for scan in scans] == list(range(100, 108))
    shipped = load_model(pretrained_path(64))
    recipe = shipped.record.extra["pretrained_on"]
    # stage 2 (docs/quality.md, "Distilled pretraining") names stage 1's corpus inside its own
    assert "broad-one-probe corpus" in recipe and "distil mode, 30 epochs" in recipe and "100..107" in recipe


def test_pretrain_refuses_an_unsupported_size_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out, resources/pretrained-n33.pinn.pt, must not be created
    assert main(["pretrain", "--size", "33", "--epochs", "1"]) == 2
    captured = capsys.readouterr()
    assert "--size=33 is not allowed; it must be one of 32, 64, 128, 256" in captured.err
    assert "corpus:" not in captured.out and not (tmp_path / "resources").exists()


def test_pretrain_names_its_default_output_after_the_size(tmp_path, monkeypatch):
    import ptychodus_pinn.app.pretrain as pretrain

    written = []
    monkeypatch.setattr(pretrain, "run_pretraining", lambda out, *args, **kwargs: written.append(out) or out)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "resources").mkdir()
    assert main(["pretrain", "--size", "128", "--epochs", "1"]) == 0
    # a wider model gets its own name: the width-1 file every entry uses by default is never replaced by it
    assert main(["pretrain", "--size", "64", "--n-filters-scale", "4", "--epochs", "1"]) == 0
    assert [str(path) for path in written] == ["resources/pretrained-n128.pinn.pt", "resources/pretrained-n64-w4.pinn.pt"]


def test_pretrain_fine_tunes_a_model_at_its_own_width(tmp_path, capsys):
    """--initial-model fixes the width: a different --n-filters-scale is refused before any work, naming both."""
    start, out = tmp_path / "start.pinn.pt", tmp_path / "out.pinn.pt"
    common = ["--size", "32", "--corpus", "broad", "--scans", "1", "--positions", "9", "--epochs", "1", "--accelerator", "cpu"]
    assert main(["pretrain", "--out", str(start), *common, "--no-progress-bar"]) == 0
    capsys.readouterr()
    assert main(["pretrain", "--out", str(out), "--initial-model", str(start), "--n-filters-scale", "2", *common]) == 2
    captured = capsys.readouterr()
    assert "--n-filters-scale 2 differs from the initial model's width 1" in captured.err
    assert "corpus:" not in captured.out and not out.exists()


def test_pretrain_never_writes_over_the_model_it_starts_from(tmp_path, capsys, monkeypatch):
    """The default --out for --size 32 is resources/pretrained-n32.pinn.pt: fine-tuning that very file is refused."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "resources").mkdir()
    start = tmp_path / "resources" / "pretrained-n32.pinn.pt"
    start.write_bytes(b"the starting model")
    assert main(["pretrain", "--size", "32", "--epochs", "1", "--initial-model", str(start)]) == 2
    assert "--out resources/pretrained-n32.pinn.pt is the input --initial-model" in capsys.readouterr().err
    assert start.read_bytes() == b"the starting model"
