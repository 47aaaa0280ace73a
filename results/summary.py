"""The results tables and Figure 2's curve, from the result files of train.py.

    python results/summary.py results/trec                 # results/trec/summary.md, curve.png
    python results/summary.py results/trec results/rte --cross-task results/cross-task.md

Per folder: one table per setting (task, encoder, share of the training set, epochs) with mean
+- std over seeds per variant, at its default alpha, beside the paper's bert-base number where
Table 3 has one; each variant's gap to dropout, seed by seed; one table per alpha sweep; and the
numbers and plot of the sparse-data curve (section 5.5, Figure 2). Across folders: DropMix-C's
and -G's gap to dropout per task, on the full training set; and the longer schedule (section
5.3): C and G trained longer against dropout at 3 epochs and as long, with the accuracy after
every epoch as a table and a plot.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the top-level modules

from data import DataError  # noqa: E402
from train import DEFAULT_MODEL, VARIANTS, UsageError, replace_atomically  # noqa: E402

# Table 3 of the paper (bert-base-uncased, 5 seeds), for orientation beside our numbers, which
# come from another encoder. Its rows are train.VARIANTS, in that order.
PAPER_TABLE_3 = {task: dict(zip(VARIANTS, accuracies)) for task, accuracies in {
    "mnli": (84.43, 84.38, 84.38, 84.52, 84.12, 84.27, 84.77, 83.49, 84.78),
    "qqp": (91.11, 90.97, 91.29, 90.92, 91.19, 91.35, 91.42, 90.35, 91.45),
    "qnli": (91.49, 91.43, 91.51, 91.45, 91.48, 91.18, 91.70, 90.80, 91.54),
    "sst2": (92.41, 92.61, 92.66, 92.91, 92.39, 92.77, 93.17, 91.72, 93.33),
    "mrpc": (84.00, 84.03, 84.48, 82.89, 83.48, 81.75, 83.48, 81.62, 83.17),
    "rte": (64.55, 64.69, 65.13, 65.27, 65.85, 66.93, 67.94, 65.99, 68.09),
    "trec": (96.64, 96.60, 96.72, 96.72, 97.48, 97.68, 97.76, 97.16, 97.92),
    "sst1": (54.16, 53.86, 53.92, 53.59, 53.77, 53.80, 53.98, 53.14, 54.71),
    "subj": (97.22, 97.10, 97.04, 97.14, 97.22, 97.38, 97.58, 97.46, 97.64),
    "mr": (88.34, 88.13, 88.28, 88.25, 88.62, 88.81, 88.66, 88.47, 88.88),
    "cr": (91.11, 90.79, 91.06, 91.11, 92.01, 91.90, 92.01, 91.48, 92.06),
    "mpqa": (91.97, 91.91, 92.08, 92.03, 91.89, 92.29, 92.36, 91.42, 92.52),
}.items()}
VARIANT_ORDER = {v: i for i, v in enumerate(VARIANTS)}  # the tables' and the curve's row order
# A table's setting: results that differ in any of these never share a table.
SETTING_FIELDS = ("task", "model", "train_fraction", "epochs")


@dataclass
class Cell:
    """The runs of one variant (and alpha) in one setting: one per seed."""
    seeds: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    by_epoch: list[list[float]] = field(default_factory=list)  # per seed: each epoch's accuracy
    label_weight: list[float] = field(default_factory=list)
    commits: set = field(default_factory=set)
    empty_mixes: int = 0       # mixed examples that took nothing from the partner (r = 0)...
    mixed_examples: int = 0    # ...of these mixed examples, summed over...
    counted_runs: int = 0      # ...the runs whose files count them (older files do not)
    train_seconds: float = 0.0  # the cell's training time, all seeds together
    rest: dict | None = None   # every other config field: must agree within the cell
    source: str = ""

    def add(self, path: Path, results: dict, rest: dict) -> None:
        config = results["config"]
        if self.rest is not None and rest != self.rest:
            differing = sorted(k for k in rest if rest[k] != self.rest.get(k))
            raise UsageError(f"{path.name} and {self.source} differ in {', '.join(differing)} "
                             "but would share a cell; summarize them from separate folders.")
        if config["seed"] in self.seeds:
            raise UsageError(f"{path.name} and {self.source} are both seed {config['seed']} of "
                             "the same run; keep one.")
        self.rest, self.source = rest, self.source or path.name
        self.seeds.append(config["seed"])
        self.accuracy.append(100 * results["final"]["accuracy"])
        split = results["final"].get("split")  # the reported split, as every epoch records it
        self.by_epoch.append([100 * e[split]["accuracy"] for e in results["epochs"] if split in e])
        weights = [e["mean_label_weight"] for e in results["epochs"]
                   if e.get("mean_label_weight") is not None]
        if weights:
            self.label_weight.append(statistics.mean(weights))
        counted = [e for e in results["epochs"] if "empty_mixes" in e]
        self.empty_mixes += sum(e["empty_mixes"] for e in counted)
        self.mixed_examples += sum(e["mixed_examples"] for e in counted)
        self.counted_runs += bool(counted)
        self.commits.add((results.get("environment") or {}).get("commit") or "unknown")
        self.train_seconds += (results.get("timing") or {}).get("train_seconds") or 0.0

    def mean_std(self) -> tuple[float, float | None]:
        std = statistics.stdev(self.accuracy) if len(self.accuracy) > 1 else None
        return statistics.mean(self.accuracy), std

    def by_seed(self) -> dict[int, float]:
        return dict(zip(self.seeds, self.accuracy))


def collect_results(folder: Path) -> dict[tuple, dict[tuple, Cell]]:
    """{setting: {(variant, alpha): Cell}} from every results file in `folder`."""
    settings: dict[tuple, dict[tuple, Cell]] = {}
    files = sorted(folder.glob("*.json"))
    if not files:
        raise UsageError(f"{folder} holds no result files (*.json).")
    for path in files:
        try:
            results = json.loads(path.read_text())
            config = results["config"]
            results["final"]["accuracy"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UsageError(f"{path} is not a results file of train.py.") from None
        setting = tuple(config[f] for f in SETTING_FIELDS)
        row = (config["variant"], config["alpha"])
        rest = {k: v for k, v in config.items()
                if k not in SETTING_FIELDS + ("variant", "alpha", "seed")}
        settings.setdefault(setting, {}).setdefault(row, Cell()).add(path, results, rest)
    return settings


def default_alpha(variant: str) -> float | None:
    return VARIANTS[variant].alpha if variant in VARIANTS else None


def format_accuracy(mean: float, std: float | None) -> str:
    """mean +- std, or the mean alone where there is no spread (one seed: std is None)."""
    return f"{mean:.2f} +- {std:.2f}" if std is not None else f"{mean:.2f}"


def format_row(cell: Cell, label: str, paper: float | None = None) -> str:
    """One table row: label | accuracy mean +- std | seeds | r (| the paper's number)."""
    weight = f"{statistics.mean(cell.label_weight):.3f}" if cell.label_weight else "–"
    return (f"| {label} | {format_accuracy(*cell.mean_std())} | {len(cell.seeds)} | {weight} |"
            + (f" {paper:.2f} |" if paper is not None else ""))


def main_cells(cells: dict[tuple, Cell]) -> dict[str, tuple[float | None, Cell]]:
    """The setting's main table, {variant: (alpha, cell)}: each variant once, at its default
    alpha when it ran at several, in the order of train.VARIANTS."""
    alphas: dict[str, list] = {}
    for variant, alpha in cells:
        alphas.setdefault(variant, []).append(alpha)
    return {variant: (alpha, cells[(variant, alpha)])
            for variant, alpha in sorted(cells, key=lambda r: (VARIANT_ORDER.get(r[0], 99), r[1] or 0))
            if len(alphas[variant]) == 1 or alpha == default_alpha(variant)}


def format_setting(setting: tuple, cells: dict[tuple, Cell]) -> list[str]:
    """A setting's table of variants at their default alpha, its seed lines, then one alpha
    table per variant run at several alphas (every cell appears in exactly one of them),
    then its cost."""
    task, model, fraction, epochs = setting
    paper = PAPER_TABLE_3.get(task) if fraction == 1.0 else None
    name = f"{task}, {100 * fraction:g}% of the training set, {epochs} epochs, encoder {Path(model).name}"
    out = [f"**{name}**\n",
           "| variant | alpha | accuracy (%) | seeds | mean label weight r |"
           + (" paper, bert-base (%) |" if paper else ""),
           "|---|---|---|---|---|" + ("---|" if paper else "")]
    shown = {variant: cell for variant, (_, cell) in main_cells(cells).items()}
    for variant, (alpha, cell) in main_cells(cells).items():
        out.append(format_row(cell, f"{variant} | {alpha if alpha is not None else '–'}",
                              paper.get(variant, float("nan")) if paper else None))
    out += format_seed_means(list(shown.values())) + format_gaps(shown) + format_empty(shown)
    for variant in sorted({v for v, _ in cells}, key=lambda v: VARIANT_ORDER.get(v, 99)):
        swept = sorted((a for v, a in cells if v == variant), key=lambda a: a or 0)
        if len(swept) < 2:
            continue
        # A small alpha puts lam near 0 or 1, and a lam near 0 gives an empty mask: the last
        # column says how often that happened (r = 0), so that alpha's effect can be read.
        out += [(f"\n**alpha's effect: {variant}, {name}** (lam ~ Beta(alpha, alpha); every "
                 "alpha is reported, none is chosen)\n"),
                "| alpha | accuracy (%) | seeds | mean label weight r | r = 0 (% of mixed) |",
                "|---|---|---|---|---|"]
        out += [format_row(cells[(variant, a)], f"{a}") + f" {format_empty_share(cells[(variant, a)])} |"
                for a in swept]
    commits = sorted(set().union(*(c.commits for c in cells.values())))
    runs = sum(len(c.seeds) for c in cells.values())
    hours = sum(c.train_seconds for c in cells.values()) / 3600
    out.append(f"\n{runs} run{'s' if runs > 1 else ''}, {hours:.1f} h of training (wall "
               f"clock); results from commit{'s' if len(commits) > 1 else ''} "
               + ", ".join(c[:10] for c in commits) + "\n")
    return out


def shared_seeds(cells: list[Cell]) -> list[int]:
    return sorted(set.intersection(*(set(c.seeds) for c in cells))) if cells else []


def format_seed_means(cells: list[Cell]) -> list[str]:
    """The seed's own effect, to weigh the differences between rows against: each seed's
    accuracy averaged over the rows, for the seeds every row ran with (none if under two)."""
    shared = shared_seeds(cells) if len(cells) > 1 else []
    if len(shared) < 2:
        return []
    means = [statistics.mean(c.by_seed()[s] for c in cells) for s in shared]
    return [f"\nBy seed, mean of these {len(cells)} rows: "
            + ", ".join(f"seed {s} {m:.2f}" for s, m in zip(shared, means))
            + f" (spread {max(means) - min(means):.2f} points)."]


def gap_to_dropout(variant: Cell, dropout: Cell) -> tuple[float, dict[int, float]] | None:
    """The variant's accuracy minus dropout's, seed by seed, and their mean, over the seeds
    both ran with (None if none)."""
    seeds = shared_seeds([variant, dropout])
    if not seeds:
        return None
    gaps = {s: variant.by_seed()[s] - dropout.by_seed()[s] for s in seeds}
    return statistics.mean(gaps.values()), gaps


def signed(points: float) -> str:
    """A gap in points with its sign; a mean that cancels to -5e-15 reads +0.00, not -0.00."""
    return f"{round(points, 6) + 0.0:+.2f}"


def format_gaps(shown: dict[str, Cell]) -> list[str]:
    """One line: each variant's mean minus dropout's, with the gap of every seed."""
    if "dropout" not in shown:
        return []
    parts = []
    for variant, cell in shown.items():
        gap = None if variant == "dropout" else gap_to_dropout(cell, shown["dropout"])
        if gap is not None:
            seeds = ", ".join(signed(g) for _, g in sorted(gap[1].items()))
            parts.append(f"{variant} {signed(gap[0])} ({seeds})")
    return ["\nMinus dropout, mean (seed by seed): " + "; ".join(parts) + "."] if parts else []


def empty_share(cell: Cell) -> float:
    """The percentage of a cell's counted mixed examples that took nothing from their partner."""
    return 100 * cell.empty_mixes / cell.mixed_examples


def format_empty_share(cell: Cell) -> str:
    """The share of a cell's mixed examples that took nothing from their partner, with the
    number of runs that count them when not all do; '–' when none does."""
    if not cell.mixed_examples:
        return "–"
    share = f"{empty_share(cell):.1f}"
    runs = cell.counted_runs
    return share if runs == len(cell.seeds) else f"{share} ({runs} run{'s' if runs > 1 else ''})"


def format_empty(shown: dict[str, Cell]) -> list[str]:
    """One line: the share of mixed examples that took nothing from their partner (r = 0),
    for the variants whose result files count them."""
    parts = [f"{variant} {empty_share(cell):.1f}% "
             f"({cell.counted_runs} run{'s' if cell.counted_runs > 1 else ''})"
             for variant, cell in shown.items() if cell.mixed_examples]
    return (["\nMixed examples that took nothing from their partner (r = 0), over the runs "
             "that count them: " + ", ".join(parts) + "."] if parts else [])


def format_curve(lines: dict[tuple, list]) -> list[str]:
    """The numbers behind curve.png: one row per variant, one column per training fraction."""
    out = []
    for task, model in sorted({key[:2] for key in lines}):
        rows = {key[2]: points for key, points in lines.items() if key[:2] == (task, model)}
        fractions = sorted({p[0] for points in rows.values() for p in points})
        out += [(f"**Figure 2's experiment: {task}, encoder {model}, test accuracy (%) against "
                 "the share of the training set** (mean +- std over seeds, seed count in "
                 "brackets; epochs per share as in the tables above)\n"),
                "| variant | " + " | ".join(f"{100 * f:g}%" for f in fractions) + " |",
                "|---|" + "---|" * len(fractions)]
        for variant, points in rows.items():
            at = {f: f"{format_accuracy(mean, std)} ({seeds})" for f, mean, std, seeds in points}
            out.append(f"| {variant} | " + " | ".join(at.get(f, "–") for f in fractions) + " |")
        out.append("")
    return out


def setting_order(setting: tuple, cells: dict[tuple, Cell]) -> tuple:
    """Where a setting's table goes: by task, the default encoder's before any other (a folder
    path such as /root/... would sort before "all-MiniLM-..."), then settings with more variants
    first (Table 3's), the larger share of the training set first, then the fewer epochs."""
    task, model, fraction, epochs = setting
    return task, model != DEFAULT_MODEL, model, -len({v for v, _ in cells}), -fraction, epochs


def format_tables(settings: dict[tuple, dict[tuple, Cell]], lines: dict[tuple, list]) -> str:
    """The summary in Markdown: per setting (in setting_order), mean +- std (sample std over
    seeds) per variant, then the numbers of the curve's `lines`."""
    out = []
    for setting in sorted(settings, key=lambda s: setting_order(s, settings[s])):
        out += format_setting(setting, settings[setting])
    return "\n".join(out + format_curve(lines))


def curve_points(settings: dict[tuple, dict[tuple, Cell]],
                 epochs_of: dict[float, int] | None = None) -> dict[tuple, list]:
    """Figure 2's experiment: per (task, encoder, variant) at its default alpha, the points
    (fraction, mean, std, seeds) of every setting it ran in (std None for one seed), for the
    variants measured at three fractions or more (two points make no curve), in the order of
    train.VARIANTS. `epochs_of` {fraction: epochs}, when given, keeps only the settings of the
    curve's own budget (the grid's), so that a longer schedule on the same share is no point."""
    lines: dict[tuple, dict[float, tuple]] = {}  # {(task, model, variant): {fraction: (epochs, point)}}
    for (task, model, fraction, epochs), cells in settings.items():
        if epochs_of is not None and epochs_of.get(fraction, epochs) != epochs:
            continue
        for (variant, alpha), cell in cells.items():
            if alpha != default_alpha(variant):
                continue
            line = lines.setdefault((task, model, variant), {})
            if fraction in line:  # the same share trained for two epoch counts: two settings
                raise UsageError(f"{variant} ran on {100 * fraction:g}% of {task} for both "
                                 f"{epochs} and {line[fraction][0]} epochs, two points at one "
                                 "place on the curve; summarize them from separate folders.")
            mean, std = cell.mean_std()
            line[fraction] = (epochs, (fraction, mean, std, len(cell.seeds)))
    return {key: [point for _, (_, point) in sorted(lines[key].items())]
            for key in sorted(lines, key=lambda k: (k[:2], VARIANT_ORDER.get(k[2], 99)))
            if len(lines[key]) >= 3}


def plot_curve(lines: dict[tuple, list], path: Path) -> str:
    """Accuracy against the training fraction, one line per variant; says what it did."""
    if not lines:
        return "no variant has results at three training fractions yet: no curve"
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no curve: it needs matplotlib (pip install matplotlib)"
    pairs = sorted({key[:2] for key in lines})
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, ((task, model, variant), points) in enumerate(lines.items()):
        # Nudge each line sideways a little (log axis) so that error bars do not hide each other.
        shift = 1 + 0.03 * (i - (len(lines) - 1) / 2)
        ax.errorbar([100 * p[0] * shift for p in points], [p[1] for p in points],
                    yerr=[p[2] or 0.0 for p in points], marker="o", capsize=3,  # 1 seed: no bar
                    label=variant if len(pairs) == 1 else f"{variant} ({task}, {model})")
    ax.set_xscale("log")
    ax.set_xticks([5, 10, 25, 50, 100], labels=["5", "10", "25", "50", "100"])
    ax.set_xlabel("share of the training set (%)")
    ax.set_ylabel("test accuracy (%), mean +- std over seeds")
    ax.set_title("Sparse data (Figure 2's experiment)"
                 + (": {}, {}".format(*pairs[0]) if len(pairs) == 1 else ""))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"wrote {path}"


def cross_task_table(folders: list[Path]) -> str:
    """DropMix-C and -G minus dropout on each task's full training set (mean over the seeds
    both ran with, and the seed spread of that setting's table), then the mean over tasks of
    each setting (epochs, encoder) that two or more tasks ran: a task's gap counts once in a mean."""
    out = ["| task | C - dropout | G - dropout | seeds | spread over seeds |", "|---|---|---|---|---|"]
    means: dict[str, dict[str, list[float]]] = {}  # setting -> variant -> the tasks' gaps
    for folder in folders:
        settings = collect_results(folder)
        for (task, model, fraction, epochs), cells in sorted(settings.items(),
                                                             key=lambda item: setting_order(*item)):
            shown = {variant: cell for variant, (_, cell) in main_cells(cells).items()}
            if fraction != 1.0 or "dropout" not in shown or not {"C", "G"} & shown.keys():
                continue  # nothing to compare yet (e.g. dropout's run landed before G's)
            label = f"{epochs} epochs" + ("" if model == DEFAULT_MODEL else f", {Path(model).name}")
            row, seeds = [], set()
            for variant in ("C", "G"):
                gap = gap_to_dropout(shown[variant], shown["dropout"]) if variant in shown else None
                row.append(signed(gap[0]) if gap else "–")
                if gap:
                    means.setdefault(label, {"C": [], "G": []})[variant].append(gap[0])
                    seeds |= set(gap[1])
            in_table = [shown[v] for v in ("dropout", "C", "G") if v in shown]
            by_seed = [statistics.mean(c.by_seed()[s] for c in in_table)
                       for s in shared_seeds(in_table)]
            spread = f"{max(by_seed) - min(by_seed):.2f}" if len(by_seed) > 1 else "–"
            out.append(f"| {task} ({label}) | {row[0]} | {row[1]} | {len(seeds)} | {spread} |")
    for label, gaps in means.items():
        if max(len(gaps["C"]), len(gaps["G"])) < 2:
            continue
        cells = [signed(statistics.mean(gaps[v])) if len(gaps[v]) > 1 else "–" for v in ("C", "G")]
        out.append(f"| mean over tasks ({label}) | {cells[0]} | {cells[1]} | | |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# The longer schedule (section 5.3: "we run multiple epochs (5 to 10 times) for these
# regularization schemes"): C and G trained longer, against dropout at the paper's 3 epochs
# (what Table 3 compares) and against dropout trained as long (the fair comparison)
# ---------------------------------------------------------------------------------------------

def full_set_cells(folder: Path, epochs: int, model: str = DEFAULT_MODEL) -> dict[str, Cell]:
    """{variant: cell} of a task folder's table on the full training set at `epochs`."""
    return {variant: cell
            for (_, m, fraction, e), cells in collect_results(folder).items()
            if fraction == 1.0 and e == epochs and m == model
            for variant, (_, cell) in main_cells(cells).items()}


def seed_spread(cells: list[Cell]) -> float | None:
    """The range of the seed means over `cells` (the "By seed" line), over the shared seeds."""
    means = [statistics.mean(c.by_seed()[s] for c in cells) for s in shared_seeds(cells)]
    return max(means) - min(means) if len(means) > 1 else None


def format_gap(gap: tuple[float, dict[int, float]] | None) -> str:
    """mean (seed by seed), or '–'."""
    if gap is None:
        return "–"
    return f"{signed(gap[0])} ({', '.join(signed(g) for _, g in sorted(gap[1].items()))})"


def schedule_table(folders: list[Path], short: int, long: int) -> str:
    """Per task: C and G at `long` epochs minus dropout at `short` (the paper's protocol) and
    minus dropout at `long` (the fair one), mean and seed by seed; the seed spread of each
    comparison's three rows."""
    out = [f"| task | C at {long} - dropout at {short} | G at {long} - dropout at {short} "
           f"| C - dropout, both at {long} | G - dropout, both at {long} | seeds "
           f"| spread over seeds (protocol / fair) |", "|---|---|---|---|---|---|---|"]
    for folder in folders:
        at_short, at_long = full_set_cells(folder, short), full_set_cells(folder, long)
        if not any(v in at_long for v in ("C", "G")) or "dropout" not in at_short:
            continue
        gaps, seeds = [], {"C": set(), "G": set()}
        for baseline in (at_short["dropout"], at_long.get("dropout")):
            for variant in ("C", "G"):
                gap = (gap_to_dropout(at_long[variant], baseline)
                       if variant in at_long and baseline is not None else None)
                gaps.append(format_gap(gap))
                seeds[variant] |= set(gap[1]) if gap else set()
        # one count when C and G share it, else each (a grid still running: G a seed behind C)
        counts = {variant: len(s) for variant, s in seeds.items() if s}
        count = (str(next(iter(counts.values()))) if len(set(counts.values())) == 1
                 else ", ".join(f"{variant} {n}" for variant, n in counts.items()))
        spreads = [seed_spread([c for c in [dropout, at_long.get("C"), at_long.get("G")] if c])
                   for dropout in (at_short["dropout"], at_long.get("dropout"))]
        spread = " / ".join(f"{x:.2f}" if x is not None else "–" for x in spreads)
        out.append(f"| {folder.name} | {' | '.join(gaps)} | {count} | {spread} |")
    return "\n".join(out) + "\n"


def epoch_table(folders: list[Path], long: int,
                variants: tuple[str, ...] = ("dropout", "C", "G")) -> str:
    """The numbers behind plot_epochs: each `long`-epoch run's held-out accuracy (%) after every
    epoch, a row per task, variant and seed ("–" for an epoch a run has not recorded)."""
    out = ["| task | variant | seed | " + " | ".join(map(str, range(1, long + 1))) + " |",
           "|---|---|---|" + "---|" * long]
    for folder in folders:
        cells = full_set_cells(folder, long)
        for variant in (v for v in variants if v in cells):
            for seed, curve in sorted(zip(cells[variant].seeds, cells[variant].by_epoch)):
                row = [f"{accuracy:.1f}" for accuracy in curve] + ["–"] * (long - len(curve))
                out.append(f"| {folder.name} | {variant} | {seed} | " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


def plot_epochs(folders: list[Path], long: int, short: int, path: Path,
                variants: tuple[str, ...] = ("dropout", "C", "G")) -> str:
    """Held-out accuracy against the epoch of the `long` runs, one panel per task: the mean
    over seeds as a line, the min-max over seeds as a band, and dropout's mean at `short`
    epochs as a dashed line (the baseline of the paper's protocol). Says what it did."""
    panels = [(folder.name, full_set_cells(folder, long), full_set_cells(folder, short))
              for folder in folders]
    panels = [p for p in panels if any(v in p[1] and p[1][v].by_epoch[0] for v in variants)]
    if not panels:
        return f"no {long}-epoch runs with per-epoch accuracies yet: no plot"
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: it needs matplotlib (pip install matplotlib)"
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), squeeze=False)
    for ax, (task, cells, short_cells) in zip(axes[0], panels):
        for i, variant in enumerate(v for v in variants if v in cells):
            curves = [c for c in cells[variant].by_epoch if c]
            done = min(len(c) for c in curves)  # epochs every seed has finished
            columns = list(zip(*(c[:done] for c in curves)))
            x = range(1, done + 1)
            color = f"C{i}"
            ax.plot(x, [statistics.mean(col) for col in columns], color=color, marker=".",
                    label=f"{variant} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
            ax.fill_between(x, [min(col) for col in columns], [max(col) for col in columns],
                            color=color, alpha=0.15, linewidth=0)
        if "dropout" in short_cells:
            ax.axhline(short_cells["dropout"].mean_std()[0], color="C0", linestyle="--",
                       linewidth=1, label=f"dropout, {short} epochs")
        ax.set_title(task)
        ax.set_xlabel("epoch")
        ax.set_xticks(range(1, long + 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("held-out accuracy (%)")
    fig.suptitle(f"{long} epochs: mean over seeds, band from min to max", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"wrote {path}"


def summarize(folder: Path, curve_epochs: dict[float, int] | None = None) -> str:
    """Write FOLDER/summary.md (and curve.png); returns the tables. `curve_epochs`: see
    curve_points."""
    settings = collect_results(folder)
    lines = curve_points(settings, curve_epochs)
    tables = format_tables(settings, lines)
    replace_atomically(folder / "summary.md", lambda file: file.write(tables.encode()))
    print(f"wrote {folder / 'summary.md'}; " + plot_curve(lines, folder / "curve.png"))
    return tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="folders of result files")
    parser.add_argument("--cross-task", type=Path, default=None, metavar="PATH",
                        help="also write the table of C's and G's gaps to dropout per task")
    args = parser.parse_args(argv)
    try:
        for folder in args.folders:
            print(summarize(folder))
        if args.cross_task is not None:
            table = cross_task_table(args.folders)
            replace_atomically(Path(args.cross_task), lambda file: file.write(table.encode()))
            print(table + f"wrote {args.cross_task}")
    except (UsageError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
