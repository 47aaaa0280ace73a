"""The accuracy grid: on TREC every variant of Table 3, 10% of the data, Figure 2's sparse-data
curve and alpha; then Table 3's dropout, C and G on RTE, CR and MPQA; then the paper's longer
schedule for the regularizers: dropout, C and G for 10 epochs on the same four tasks. One run at
a time, in order; a run whose result file exists is skipped, and an interrupted run continues from its
last epoch checkpoint, so the grid can be stopped and restarted at any moment.

    python results/grid.py            # run (or continue) the whole grid
    python results/grid.py --list     # what is done and what is left
    python results/grid.py --readme   # the tables into results/README.md
    python results/grid.py --only s1-mpnet   # only the runs whose TASK/NAME holds this text

Each finished run's results.json is copied, atomically, to results/TASK/NAME.json;
results/summary.py turns those files into the tables.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "results")]  # the top-level modules, and summary.py

import summary  # noqa: E402
from train import VARIANTS, replace_atomically  # noqa: E402

SEEDS = (1, 2, 3)
# Every TREC setting gets about the same number of optimizer steps (~515 at batch 32): 3 epochs
# of all 5,452 questions (the paper's baseline setting), 30 of 10%, 57 of 5%, 12 of 25%, 6 of 50%.
EPOCHS = {1.0: 3, 0.5: 6, 0.25: 12, 0.1: 30, 0.05: 57}
TASKS = ("trec", "rte", "cr", "mpqa")  # the results folders, in the order the grid fills them
# Section 5.3: "Since regularization methods reduce the speed of convergence, we run multiple
# epochs (5 to 10 times) for these regularization schemes". The top of that range, for dropout
# too, so that both comparisons can be made: C and G at 10 against dropout at 3 (the paper's
# protocol) and against dropout at 10 (the fair one). The schedule spans the whole run.
LONG_EPOCHS = 10
# A paper-sized encoder (12 layers, 768 wide, like bert-base), assembled offline from PyPI by
# results/mpnet.py: dropout and G on TREC at the paper's 3 epochs.
ENCODERS = {"mpnet": Path(__file__).resolve().parent / "mpnet.py"}


@dataclass(frozen=True)
class Run:
    variant: str
    alpha: float | None
    fraction: float
    epochs: int
    seed: int
    task: str = "trec"
    encoder: str = ""  # a key of ENCODERS; "" is train.py's default encoder

    @property
    def name(self) -> str:
        alpha = "-" if self.alpha is None else f"{self.alpha:g}"
        name = f"{self.variant}-a{alpha}-f{self.fraction:g}-e{self.epochs}-s{self.seed}"
        return name + (f"-{self.encoder}" if self.encoder else "")

    def flags(self) -> list[str]:
        flags = ["--task", self.task, "--variant", self.variant, "--train-fraction", str(self.fraction),
                 "--epochs", str(self.epochs), "--seed", str(self.seed)]
        if self.encoder:  # the script prints the folder, assembling it first where it is missing
            folder = subprocess.run([sys.executable, str(ENCODERS[self.encoder])], text=True,
                                    capture_output=True).stdout.strip()
            flags += ["--model", folder or f"(results/{ENCODERS[self.encoder].name} failed)"]
        return flags + (["--alpha", str(self.alpha)] if self.alpha is not None else [])


def plan() -> list[Run]:
    """The grid, in the order it runs: seeds outer and variants inner, so that every variant
    has a first seed before any has a third."""
    def runs_of(variants, fraction, epochs, task="trec", alphas=None, encoder=""):
        return [Run(v, a, fraction, epochs, s, task, encoder) for s in SEEDS for v in variants
                for a in (alphas or [VARIANTS[v].alpha])]
    runs = runs_of(VARIANTS, 1.0, EPOCHS[1.0]) + runs_of(VARIANTS, 0.1, EPOCHS[0.1])  # Table 3
    for fraction in (0.05, 0.25, 0.5):                                     # Figure 2's curve
        runs += runs_of(("dropout", "C", "G"), fraction, EPOCHS[fraction])
    runs += runs_of(("G",), 0.1, EPOCHS[0.1], alphas=(0.1, 0.5, 1.0))    # alpha
    for task in TASKS[1:]:                                                 # beyond TREC
        runs += runs_of(("dropout", "C", "G"), 1.0, 3, task)
    for task in TASKS:                                                     # the longer schedule
        runs += runs_of(("dropout", "C", "G"), 1.0, LONG_EPOCHS, task)
    runs += runs_of(("dropout", "G"), 1.0, EPOCHS[1.0], encoder="mpnet")   # a paper-sized encoder
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
        print(f"[{time.strftime('%H:%M:%S')}] {index}/{len(runs)} {run.task} {run.name}", flush=True)
        with open(out / "log.txt", "a") as log:
            status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
        produced = out / f"seed-{run.seed}" / "results.json"
        if status != 0 or not produced.exists():
            print(f"  failed with status {status}; see {out / 'log.txt'}", flush=True)
            continue
        replace_atomically(target, lambda file: file.write(produced.read_bytes()))  # a result file is whole or absent


START, END = "<!-- results:start -->", "<!-- results:end -->"


def replace_block(readme: Path, block: str) -> str | None:
    """Put `block` between the README's START and END markers, atomically. Returns an error
    sentence, or None."""
    try:
        text = readme.read_text()
    except OSError as error:
        return f"cannot read {readme}: {error.strerror}."
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        return f"{readme} needs one {START} line followed by one {END} line."
    before, rest = text.split(START)
    text = before + START + "\n" + block.strip() + "\n" + END + rest.split(END)[1]
    try:
        replace_atomically(readme, lambda file: file.write(text.encode()))
    except summary.DataError as error:  # a full disk, say: one sentence
        return str(error)
    return None


def update_readme(results_root: Path, runs: list[Run], readme: Path) -> str | None:
    """Regenerate every task's tables (results/summary.py) and put them, with the grid's
    progress, into the results block of `readme` (results/README.md). Returns an error
    sentence, or None."""
    # run_grid makes a task's folder when the task's first run starts; until that run has
    # finished the folder is empty, and the task has no table yet.
    folders = [results_root / task for task in TASKS if any((results_root / task).glob("*.json"))]
    try:
        tables = {folder.name: summary.summarize(folder, EPOCHS) for folder in folders}
        cross = summary.cross_task_table(folders)
        schedule = summary.schedule_table(folders, EPOCHS[1.0], LONG_EPOCHS)
        by_epoch = summary.epoch_table(folders, LONG_EPOCHS)
        figure = readme.resolve().parent / "long-schedule.png"
        print(summary.plot_epochs(folders, LONG_EPOCHS, EPOCHS[1.0], figure))
    except (summary.UsageError, summary.DataError) as error:
        return str(error)
    done = sum((results_root / r.task / f"{r.name}.json").exists() for r in runs)
    status = (f"**Status: {done} of the grid's {len(runs)} runs are finished** (every table "
              "below is regenerated from the result files by `python results/grid.py --readme`).")
    block = [status]
    for name, text in tables.items():
        block.append(text.strip())
        curve = results_root / name / "curve.png"
        if curve.exists():
            link = os.path.relpath(curve, readme.resolve().parent)
            block.append(f"![Test accuracy against the share of the training set]({link})")
    block.append("**C and G minus dropout on each task's full training set**\n\n" + cross.strip())
    if schedule.count("\n") > 2:  # the longer schedule's table and figure, once a run has finished
        block.append(f"**The longer schedule: C and G at {LONG_EPOCHS} epochs against dropout at "
                     f"{EPOCHS[1.0]} (the paper's protocol) and at {LONG_EPOCHS} (the fair "
                     "comparison)**, mean minus mean and seed by seed, in points\n\n"
                     + schedule.strip())
        if figure.exists():
            link = os.path.relpath(figure, readme.resolve().parent)
            block.append(f"![Held-out accuracy against the epoch, {LONG_EPOCHS}-epoch runs]({link})")
    if by_epoch.count("\n") > 2:  # the figure's numbers
        block.append(f"**Held-out accuracy (%) after each epoch, {LONG_EPOCHS}-epoch runs** (the "
                     "figure's numbers; the last column is the one reported)\n\n" + by_epoch.strip())
    return replace_block(readme, "\n\n".join(block))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="show done and pending runs, run nothing")
    parser.add_argument("--results-root", default=str(REPO / "results"),
                        help="finished result files go to RESULTS_ROOT/TASK/NAME.json")
    parser.add_argument("--work-dir", default=str(REPO / "runs" / "grid"),
                        help="where runs keep checkpoints and logs while they run")
    parser.add_argument("--only", metavar="TEXT", default="",
                        help="run (or --list) only the runs whose TASK/NAME contains TEXT, "
                             "e.g. 'rte/' or 's1-mpnet'")
    parser.add_argument("--readme", action="store_true",
                        help="run nothing; regenerate the tables and curves from the result files "
                             "and write them into the results block of results/README.md")
    args = parser.parse_args()
    runs, results_root = plan(), Path(args.results_root)
    chosen = [run for run in runs if args.only in f"{run.task}/{run.name}"]
    if not chosen:
        print(f"--only {args.only}: no run of the grid matches; --list shows their names.",
              file=sys.stderr)
        return 2
    if args.readme:
        error = update_readme(results_root, runs, REPO / "results" / "README.md")
        if error:
            print(error, file=sys.stderr)
            return 2
        print("updated results/README.md")
        return 0
    if args.list:
        for run in chosen:
            done = (results_root / run.task / f"{run.name}.json").exists()
            print(("done " if done else "todo ") + f"{run.task}/{run.name}")
        return 0
    run_grid(chosen, results_root, Path(args.work_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
