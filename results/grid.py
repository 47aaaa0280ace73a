"""The accuracy grid: on TREC every variant of Table 3, 10% of the data, Figure 2's sparse-data
curve and alpha; then Table 3's dropout, C and G on RTE, CR and MPQA. One run at a time, in
order; a run whose result file exists is skipped, and an interrupted run continues from its
last epoch checkpoint, so the grid can be stopped and restarted at any moment.

    python results/grid.py            # run (or continue) the whole grid
    python results/grid.py --list     # what is done and what is left
    python results/grid.py --readme README.md   # the tables into the README's results block

Each finished run's results.json is copied, atomically, to results/TASK/NAME.json;
`python train.py --summarize results/trec` turns those files into the README's tables.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("base", "dropout", "mixup", "dropout-mixup", "ssmix", "U", "C", "W", "G")
ALPHA = {"mixup": 0.1, "dropout-mixup": 0.1, "U": 0.25, "C": 0.25, "W": 0.25, "G": 0.25}
SEEDS = (1, 2, 3)
# Every setting gets about the same number of optimizer steps (~515 at batch 32): 3 epochs of
# all 5,452 questions (the paper's baseline setting), 30 of 10%, 57 of 5%, 12 of 25%, 6 of 50%.
EPOCHS = {1.0: 3, 0.5: 6, 0.25: 12, 0.1: 30, 0.05: 57}


@dataclass(frozen=True)
class Run:
    variant: str
    alpha: float | None
    fraction: float
    epochs: int
    seed: int
    task: str = "trec"

    @property
    def name(self) -> str:
        alpha = "-" if self.alpha is None else f"{self.alpha:g}"
        return f"{self.variant}-a{alpha}-f{self.fraction:g}-e{self.epochs}-s{self.seed}"

    def flags(self) -> list[str]:
        flags = ["--task", self.task, "--variant", self.variant, "--train-fraction", str(self.fraction),
                 "--epochs", str(self.epochs), "--seed", str(self.seed)]
        return flags + (["--alpha", str(self.alpha)] if self.alpha is not None else [])


def plan() -> list[Run]:
    """The grid, in the order it runs: seeds outer and variants inner, so that every variant
    has a first seed before any has a third."""
    runs = []
    for fraction in (1.0, 0.1):                                     # Table 3, full and 10%
        runs += [Run(v, ALPHA.get(v), fraction, EPOCHS[fraction], s) for s in SEEDS for v in VARIANTS]
    for fraction in (0.05, 0.25, 0.5):                              # Figure 2's curve
        runs += [Run(v, ALPHA.get(v), fraction, EPOCHS[fraction], s)
                 for s in SEEDS for v in ("dropout", "C", "G")]
    runs += [Run("G", a, 0.1, EPOCHS[0.1], s) for s in SEEDS for a in (0.1, 0.5, 1.0)]  # alpha
    for task in ("rte", "cr", "mpqa"):                              # Table 3 beyond TREC
        runs += [Run(v, ALPHA.get(v), 1.0, 3, s, task) for s in SEEDS for v in ("dropout", "C", "G")]
    return runs


def run_grid(runs: list[Run], results_root: Path, work_dir: Path, extra: list[str] = ()) -> None:
    """Run every run without a result file; copy each finished result into results_root/TASK."""
    for index, run in enumerate(runs, 1):
        target = results_root / run.task / f"{run.name}.json"
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        out = work_dir / run.task / run.name
        out.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, str(REPO / "train.py"), *run.flags(), "--output-dir", str(out),
                   "--no-save-model", "--no-progress", "--resume", *extra]
        print(f"[{time.strftime('%H:%M:%S')}] {index}/{len(runs)} {run.name}", flush=True)
        with open(out / "log.txt", "a") as log:
            status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
        produced = out / f"seed-{run.seed}" / "results.json"
        if status != 0 or not produced.exists():
            print(f"  failed with status {status}; see {out / 'log.txt'}", flush=True)
            continue
        tmp = target.with_suffix(".json.tmp")
        shutil.copyfile(produced, tmp)
        os.replace(tmp, target)  # a result file is whole or absent


START, END = "<!-- results:start -->", "<!-- results:end -->"


def update_readme(readme: Path, results_dir: Path, total: int) -> str | None:
    """Regenerate the tables (train.py --summarize) and put them, with the grid's progress,
    between the README's START and END markers. Returns an error sentence, or None."""
    summary = subprocess.run([sys.executable, str(REPO / "train.py"), "--summarize", str(results_dir)],
                             capture_output=True, text=True)
    if summary.returncode != 0:
        return summary.stderr.strip() or f"train.py --summarize failed with status {summary.returncode}."
    try:
        text = readme.read_text()
    except OSError as error:
        return f"cannot read {readme}: {error.strerror}."
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        return f"{readme} needs one {START} line followed by one {END} line."
    done = len(list(results_dir.glob("*.json")))
    block = [f"**Status: {done} of the grid's {total} runs are finished** (every table below is "
             "regenerated from the result files by `python results/grid.py --readme README.md`).",
             (results_dir / "summary.md").read_text().strip()]
    curve = results_dir / "curve.png"
    if curve.exists():
        link = os.path.relpath(curve, readme.resolve().parent)
        block.append(f"![Test accuracy against the share of the training set]({link})")
    before, rest = text.split(START)
    after = rest.split(END)[1]
    tmp = readme.with_name(readme.name + ".tmp")
    tmp.write_text(before + START + "\n" + "\n\n".join(block) + "\n" + END + after)
    os.replace(tmp, readme)  # the README is never half-written
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="show done and pending runs, run nothing")
    parser.add_argument("--results-root", default=str(REPO / "results"),
                        help="finished result files go to RESULTS_ROOT/TASK/NAME.json")
    parser.add_argument("--work-dir", default=str(REPO / "runs" / "grid"),
                        help="where runs keep checkpoints and logs while they run")
    parser.add_argument("--readme", default=None, metavar="README",
                        help="run nothing; regenerate the tables and curve from the result files "
                             "and write them into README's results block")
    args = parser.parse_args()
    runs, results_root = plan(), Path(args.results_root)
    if args.readme is not None:
        error = update_readme(Path(args.readme), results_root / "trec", len(runs))
        if error:
            print(error, file=sys.stderr)
            return 2
        print(f"updated {args.readme}")
        return 0
    if args.list:
        for run in runs:
            done = (results_root / run.task / f"{run.name}.json").exists()
            print(("done " if done else "todo ") + f"{run.task}/{run.name}")
        return 0
    run_grid(runs, results_root, Path(args.work_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
