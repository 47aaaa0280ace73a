"""The analysis figures of sections 5.6 and 5.7: Figure 3(a), one sentence's saliency map
beside the mask DropMix takes from it, and Figure 3(b)/(c) with Table 5, channel importance per
class over a training set and the words that carry the top channels.

    python results/figures.py --model runs/sst2-sent-G/seed-1/model \
        --text "like jaglom 's films , some is honestly affecting" --png fig3a.png   # Figure 3(a)
    python results/figures.py --model runs/sst2-sent-G/seed-1/model --task sst2-sent \
        --channels --out results/figures                          # Figure 3(b), 3(c), Table 5

matplotlib is optional: without it --text prints a text view and --channels writes the numbers
and the table but no PNG.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the top-level modules

import data  # noqa: E402
from mix import ordinary_tokens, region_mask  # noqa: E402
from patches import window_shape  # noqa: E402
from saliency import model_inputs, saliency_map  # noqa: E402
from train import (DEFAULT_MODEL, VARIANTS, Parser, UsageError, check_model_fits,  # noqa: E402
                   default_model_dir, load_encoder, parse_device)

DROPMIX_VARIANTS = [name for name, variant in VARIANTS.items() if variant.mixes == "dropmix"]

# Both commands share one fixed mask setting, the one section 5.6 names: DropMix-G with n = 2,
# d = 1 and a FIXED lam = 0.3 (the paper fixes lam "to ensure that ... the proportion of units
# to be replaced is consistent"; it does not give the value, 0.3 is ours). The model runs in
# eval mode, so dropout does not perturb I.
#
# The region. In training M may only cover V, the positions that hold ordinary tokens in both
# X_A and its partner X_B (mix.mixing_region). An analysis has no partner, so V is the
# example's own ordinary tokens: [CLS], [SEP] and padding are never in M.
#
# Reading of "selected" (section 5.7): channel q is selected in an example when M takes at
# least one unit (p, q) of it. Channel importance of class c is the number of class-c examples
# in which q is selected, divided by the number of class-c examples: a (C, D) array.
#
# Table 5's reading. Its channels are, by default, the two ends of Figure 3(c): the k channels
# with the largest importance[A] - importance[B] for class A and the k with the largest
# importance[B] - importance[A] for class B (--rank-by importance takes each class's own top k
# instead). "We compute the maximum gradient of each word in this channel": in every example
# of the channel's class, the ordinary token (word piece) with the largest I in that channel is
# the example's contributed word, whether or not M selects the channel in that example; the
# column lists the most frequent contributed words with their counts.
#

FIGURE_DPI = 100                      # the PNGs' pixel size is their size in inches times this
FIGURE_WIDTH_IN = 13.0                # Figure 3(a): two heatmaps of D channels side by side
FIGURE_ROW_IN = 0.26                  # Figure 3(a): inches per token row
FIGURE_MARGIN_IN = 1.5                # Figure 3(a): title and channel axis
CHANNEL_FIGURE_IN = (13.0, 7.0)       # Figure 3(b) over 3(c)
SALIENCY_DECADES = 4                  # Figure 3(a) shows log10 I down to max(I) / 10^4
MATPLOTLIB_HINT = "writing a PNG needs matplotlib, which is not installed: pip install matplotlib"


def channel_selection_counts(masks: torch.Tensor, labels: torch.Tensor,
                             num_classes: int) -> torch.Tensor:
    """Section 5.7: (C, D) long, counts[c, q] = number of class-c examples in which channel q
    is selected. masks: M, (B, N, D) bool; labels: (B,) long in 0..C-1."""
    # channel q is selected in example b when M takes any unit (p, q) of it
    selected = masks.any(dim=1).long()                                      # (B, D)
    counts = torch.zeros(num_classes, masks.shape[2], dtype=torch.long, device=masks.device)
    return counts.index_add_(0, labels.to(masks.device), selected)          # (C, D)


def channel_importance(counts: torch.Tensor, class_totals: torch.Tensor) -> torch.Tensor:
    """Section 5.7, Figure 3(b): (C, D) float64, counts[c, q] / (number of class-c examples);
    "for fair comparison, we divide the count by the number of positive and negative samples".
    A class with no example gets 0 (not NaN). counts: (C, D); class_totals: (C,)."""
    totals = class_totals.to(torch.float64).clamp(min=1)[:, None]           # (C, 1)
    return counts.to(torch.float64) / totals                                # (C, D)


def contributed_positions(saliency: torch.Tensor, ordinary: torch.Tensor) -> torch.Tensor:
    """Table 5, for every channel at once: (B, D) long, the position of the ordinary token
    with the largest I in that channel ("the maximum gradient of each word in this channel"),
    or -1 for an example with no ordinary token. Special tokens and padding never contribute.
    saliency: I, (B, N, D); ordinary: (B, N) bool (mix.ordinary_tokens)."""
    scores = saliency.masked_fill(~ordinary[:, :, None], -math.inf)         # (B, N, D)
    positions = scores.argmax(dim=1)                                        # (B, D)
    return positions.masked_fill(~ordinary.any(1)[:, None], -1)


def top_channels(importance: torch.Tensor, first: int, second: int, k: int,
                 rank_by: str = "difference") -> tuple[list[int], list[int]]:
    """Table 5's channels: the top k of class `first` and the top k of class `second`.

    rank_by "difference" (our default): by importance[first] - importance[second] for the first
    class and by its negative for the second, the two ends of Figure 3(c). Channels that every
    example selects cancel out ("to eliminate the impact of irrelevant channels"), and the two
    lists never share a channel. rank_by "importance": by each class's own row of Figure 3(b).
    Ties go to the lower channel index (a stable sort), so the choice is deterministic.
    """
    if rank_by == "difference":
        score_first = importance[first] - importance[second]                # (D,)
        score_second = -score_first
    elif rank_by == "importance":
        score_first, score_second = importance[first], importance[second]
    else:
        raise ValueError(f"unknown ranking {rank_by!r}; choose difference or importance")
    def pick(score: torch.Tensor) -> list[int]:
        return score.sort(descending=True, stable=True).indices[:k].tolist()
    return pick(score_first), pick(score_second)


def word_ranking(word_ids: torch.Tensor, top: int) -> list[tuple[int, int]]:
    """Table 5, one column: the `top` most frequent token ids in word_ids (E,) with their
    counts, most frequent first, ties to the lower id; entries of -1 (no word) are skipped."""
    word_ids = word_ids[word_ids >= 0]
    if word_ids.numel() == 0:
        return []
    ids, counts = word_ids.unique(return_counts=True)                      # ids ascending
    order = counts.sort(descending=True, stable=True).indices[:top]
    return [(int(ids[i]), int(counts[i])) for i in order]


# ---------------------------------------------------------------------------------------------
# Command line: loading
# ---------------------------------------------------------------------------------------------

def has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        return False
    return True


def require_matplotlib() -> None:
    """Fail early, in one sentence, when a PNG is asked for and matplotlib is missing."""
    if not has_matplotlib():
        raise UsageError(MATPLOTLIB_HINT)


def load_classifier(name: str, task_labels: tuple[str, ...] | None,
                    device: torch.device) -> tuple[Any, torch.nn.Module, tuple[str, ...]]:
    """The tokenizer and the classifier saved by train.py (or any encoder train.py can load),
    in eval mode. Class names come from the task when given, else from the saved config."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    source = str(default_model_dir()) if name == DEFAULT_MODEL else name
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError):
        config = None  # load_encoder below says why, in one sentence
    if config is not None:
        saved = tuple(config.id2label[i] for i in range(config.num_labels))
        trained_head = any(arch.endswith("ForSequenceClassification")
                           for arch in (config.architectures or []))
        if task_labels is not None and trained_head and len(saved) != len(task_labels):
            raise UsageError(f"the model {name} has {len(saved)} classes but the task has "
                               f"{len(task_labels)}.")
    labels = task_labels or (saved if config is not None else ("0", "1"))
    # dropout 0: eval mode turns it off anyway; the figures must not depend on it
    tokenizer, model = load_encoder(source, labels, 0.0)
    return tokenizer, model.to(device).eval(), labels


def window_for(variant: str, num_tokens: int, dim: int, n: int, d: int) -> tuple[int, int]:
    """The variant's window (section 4.2), with G's and W's height fixed to n (section 5.6:
    "we also set n = 2"), as patches.window_shape gives it; bad sizes are usage errors."""
    try:
        return window_shape(variant, num_tokens, dim, n=n, d=d if variant == "G" else None)
    except ValueError as error:
        raise UsageError(f"{error}.") from None


# ---------------------------------------------------------------------------------------------
# Figure 3(a): one sentence's saliency map and mask (section 5.6)
# ---------------------------------------------------------------------------------------------

def sentence_analysis(model: torch.nn.Module, tokenizer: Any, text: str, variant: str, n: int,
                      d: int, lam: float, label: int | None, max_len: int,
                      device: torch.device) -> dict:
    """I and M of one text, exactly as a training step builds them, with lam fixed.

    The label of the loss L in I = |dL/dX| is the model's own predicted class unless `label`
    is given: a bare sentence has no gold label, and the prediction is what the model "sees".
    """
    encoded = data.encode([data.Example(text, None, 0)], tokenizer, max_len)
    batch = {k: v.to(device) for k, v in data.collate(tokenizer)(encoded).items()}
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], **model_inputs(batch)).logits  # (1, C)
    predicted = int(logits.argmax(1))
    batch["labels"] = torch.tensor([predicted if label is None else label], device=device)
    I = saliency_map(model, batch).float()                                   # (1, N, D)
    _, N, D = I.shape
    n_, d_ = window_for(variant, N, D, n, d)
    region = ordinary_tokens(batch)                                          # V: (1, N)
    M = region_mask(I, region, n_, d_, lam)                                   # (1, N, D)
    return {
        "tokens": tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist()),
        "saliency": I[0].cpu(), "mask": M[0].cpu(), "region": region[0].cpu(),
        "label": int(batch["labels"][0]), "predicted": predicted, "given": label is not None,
        "probability": float(logits.softmax(1)[0, int(batch["labels"][0])]),
        "n": n_, "d": d_,
    }


def _title(result: dict, variant: str, lam: float, label_names: tuple[str, ...],
           separator: str = "; ") -> str:
    """The setting, the share S / (L D) of V's units that M takes, and the loss's class."""
    L = int(result["region"].sum())
    D = result["mask"].shape[1]
    S = int(result["mask"].sum())
    how = "given" if result["given"] else "predicted"
    return (f"DropMix-{variant}, n={result['n']}, d={result['d']}, lam={lam:g}: M takes {S} of "
            f"{L}x{D} units ({S / max(L * D, 1):.1%})" + separator +
            f"class of the loss: {label_names[result['label']]} "
            f"({how}, p={result['probability']:.2f})")


def text_view(result: dict, variant: str, lam: float, label_names: tuple[str, ...],
              bar_width: int = 24) -> str:
    """The terminal view of Figure 3(a): two header lines, a column line, then ONE line per
    token in sentence order: its saliency rank among the ordinary tokens, the token,
    ||I_p||_2 (L2 over the D channels), a bar scaled to the most salient ordinary token, and
    the share of the token's channels that M takes ("never mixed" for [CLS], [SEP], padding).
    Fits 80 columns (a token over 16 characters is cut and ends in "~")."""
    I, M, region = result["saliency"], result["mask"], result["region"]     # (N, D), (N, D), (N,)
    norms = I.norm(dim=1)                                                    # (N,)
    ranked = norms.masked_fill(~region, -math.inf).argsort(descending=True).tolist()
    rank = {p: r + 1 for r, p in enumerate(ranked) if region[p]}
    # bars are scaled to the most salient ORDINARY token; a larger special token's bar is cut
    # at full width and ends in ">" ([CLS] often dwarfs the words)
    top = float(norms[region].max()) if region.any() else float(norms.max())
    top = top or 1.0
    lines = [*_title(result, variant, lam, label_names, separator="\n").splitlines(),
             f"{'rank':>4}  {'token':<16}{'|I| (L2)':>9}  {'saliency':<{bar_width}}  M takes"]
    for p, token in enumerate(result["tokens"]):
        length = round(bar_width * float(norms[p]) / top)
        bar = "#" * (bar_width - 1) + ">" if length > bar_width else "#" * max(1, length)
        share = f"{float(M[p].float().mean()):6.1%}" if region[p] else "never mixed"
        shown = token if len(token) <= 16 else token[:15] + "~"
        lines.append(f"{rank.get(p, ''):>4}  {shown:<16}{float(norms[p]):9.2e}  "
                     f"{bar:<{bar_width}}  {share}")
    return "\n".join(lines)


def figure_3a_inches(num_tokens: int) -> tuple[float, float]:
    """The size of the Figure 3(a) PNG in inches (times FIGURE_DPI for pixels)."""
    return FIGURE_WIDTH_IN, FIGURE_MARGIN_IN + FIGURE_ROW_IN * max(num_tokens, 4)


def plot_figure_3a(result: dict, title: str, path: Path) -> None:
    """Figure 3(a): left log10 I, right M, tokens down and channels across; special tokens
    (never mixed) have grey labels and a grey row in M. Blue = dropped, as in the paper."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    I, M, region = result["saliency"], result["mask"], result["region"]
    N, D = I.shape
    # log10 I, clipped to SALIENCY_DECADES below the largest unit of an ORDINARY token: I
    # spans many decades ("the saliency map has an extensive range of values"), so a linear
    # scale would show one spot, and [CLS]'s row, often far larger, would darken the words
    log_I = I.double().clamp(min=1e-30).log10()                              # (N, D)
    top = float(log_I[region].max()) if region.any() else float(log_I.max())
    fig = Figure(figsize=figure_3a_inches(N), dpi=FIGURE_DPI, layout="constrained")
    # not sharey: the two panels label their rows differently (right: with M's share)
    left, right = fig.subplots(1, 2)
    image = left.imshow(log_I.numpy(), aspect="auto", cmap="magma", interpolation="nearest",
                        vmin=top - SALIENCY_DECADES, vmax=top)
    fig.colorbar(image, ax=left, label="log10 I = log10 |dL/dX|", pad=0.01)
    # M: 0 white, 1 blue; rows outside V grey (value 2)
    shown = M.long().masked_fill(~region[:, None], 2).numpy()                # (N, D)
    right.imshow(shown, aspect="auto", interpolation="nearest", vmin=0, vmax=2,
                 cmap=ListedColormap(["white", "tab:blue", "0.8"]))
    left.set_title("saliency map I (log scale)")
    right.set_title("mask M (blue: dropped; grey: never mixed), % of each token's channels")
    left.set_yticks(range(N), result["tokens"])
    for tick, inside in zip(left.get_yticklabels(), region.tolist()):
        if not inside:
            tick.set_color("0.5")
            tick.set_fontstyle("italic")
    # the mask panel repeats the tokens on its right, each with the share of its D channels
    # that M takes, and thin lines between the rows, so a stroke is easy to place on its token
    shares = [f"{token}  {float(M[p].float().mean()):.0%}" if region[p] else token
              for p, token in enumerate(result["tokens"])]
    right.tick_params(axis="y", labelleft=False, labelright=True, left=False, right=True)
    right.set_yticks(range(N), shares)
    for tick, inside in zip(right.get_yticklabels(), region.tolist()):
        tick.set_color("black" if inside else "0.5")
    for p in range(N - 1):
        right.axhline(p + 0.5, color="0.85", linewidth=0.5)
    for axis in (left, right):
        axis.set_xlabel(f"channel (D = {D})")
        axis.tick_params(labelsize=9)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path)


# ---------------------------------------------------------------------------------------------
# Figure 3(b), 3(c) and Table 5: channel importance over a training set (section 5.7)
# ---------------------------------------------------------------------------------------------

def channel_statistics(model: torch.nn.Module, loader: Any, variant: str, n: int, d: int,
                       lam: float, num_classes: int,
                       device: torch.device) -> dict[str, torch.Tensor]:
    """One pass over the data: per batch I (gold labels, as the training loss uses them), M
    over the ordinary tokens, the channel selection counts, and each example's contributed
    token id in every channel (so Table 5 needs no second pass once its channels are known).

    Returns counts (C, D), class_totals (C,), labels (E,), contributed_ids (E, D) (-1: none).
    """
    counts, totals, labels, contributed = None, torch.zeros(num_classes, dtype=torch.long), [], []
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        I = saliency_map(model, batch).float()                               # (B, N, D)
        B, N, D = I.shape
        n_, d_ = window_for(variant, N, D, n, d)
        ordinary = ordinary_tokens(batch)                                    # V: (B, N)
        M = region_mask(I, ordinary, n_, d_, lam)                             # (B, N, D)
        batch_counts = channel_selection_counts(M, batch["labels"], num_classes).cpu()
        counts = batch_counts if counts is None else counts + batch_counts   # (C, D)
        totals += torch.bincount(batch["labels"].cpu(), minlength=num_classes)
        positions = contributed_positions(I, ordinary)                       # (B, D)
        ids = batch["input_ids"].gather(1, positions.clamp(min=0))           # (B, D)
        contributed.append(ids.masked_fill(positions < 0, -1).cpu())
        labels.append(batch["labels"].cpu())
    return {"counts": counts, "class_totals": totals, "labels": torch.cat(labels),
            "contributed_ids": torch.cat(contributed)}


def table_5_markdown(columns: list[dict], top: int) -> str:
    """Table 5 as Markdown: one column per channel ("class, channel q"), one row per rank,
    each cell "word (count)". `columns`: dicts with class, channel, words [[word, count]]."""
    escape = lambda s: s.replace("|", "\\|")  # noqa: E731  a "|" token must not split a cell
    header = "| rank | " + " | ".join(f"{c['class']}, ch. {c['channel']}" for c in columns) + " |"
    lines = [header, "|---:|" + "---|" * len(columns)]
    for r in range(top):
        cells = [f"{escape(c['words'][r][0])} ({c['words'][r][1]})" if r < len(c["words"])
                 else "" for c in columns]
        lines.append(f"| {r + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_channel_importance(importance: torch.Tensor, label_names: tuple[str, ...],
                            first: int, second: int, marked: tuple[list[int], list[int]],
                            title: str, path: Path) -> None:
    """Figure 3(b): one line per class across the D channels; Figure 3(c): importance[first] -
    importance[second], channels sorted by it (descending). Class `first` is red and `second`
    blue in both panels (other classes grey); Table 5's channels are dotted in (b) and listed
    in (c)."""
    from matplotlib.figure import Figure
    C, D = importance.shape
    colour = {first: "tab:red", second: "tab:blue"}
    fig = Figure(figsize=CHANNEL_FIGURE_IN, dpi=FIGURE_DPI, layout="constrained")
    top_axis, bottom_axis = fig.subplots(2, 1)
    # the compared classes last, so that they are drawn over the others
    for c in sorted(range(C), key=lambda c: c in colour):
        top_axis.plot(range(D), importance[c].numpy(), linewidth=0.7, alpha=0.85,
                      color=colour.get(c, "0.6"), label=label_names[c])
    for cls, channels in zip((first, second), marked):
        top_axis.plot(channels, importance[cls, channels].numpy(), "o", markersize=5,
                      color=colour[cls])
    top_axis.set(title="(b) channel importance: share of the class's training examples in "
                       "which M takes the channel (dots: Table 5's channels)",
                 xlabel="channel", ylabel="channel importance", xlim=(0, D - 1))
    top_axis.legend(loc="lower right", fontsize=9, ncol=min(C, 6))
    difference = importance[first] - importance[second]                      # (D,)
    order = difference.sort(descending=True, stable=True).indices            # (D,)
    sorted_difference = difference[order].numpy()
    bottom_axis.bar(range(D), sorted_difference, width=1.0,
                    color=[colour[first] if v > 0 else colour[second] for v in sorted_difference])
    bottom_axis.axhline(0, color="black", linewidth=0.6)
    for (cls, channels), corner in zip(zip((first, second), marked),
                                       (((0.99, 0.95), "right", "top"),
                                        ((0.01, 0.05), "left", "bottom"))):
        (x, y), ha, va = corner
        bottom_axis.text(x, y, f"Table 5, {label_names[cls]}: channels "
                               + ", ".join(map(str, channels)),
                         transform=bottom_axis.transAxes, ha=ha, va=va, fontsize=10,
                         color=colour[cls])
    bottom_axis.set(title=f"(c) {label_names[first]} minus {label_names[second]}, channels "
                          "sorted by the difference",
                    xlabel="channels, by decreasing difference", ylabel="difference",
                    xlim=(-0.5, D - 0.5))
    fig.suptitle(title, fontsize=11)
    fig.savefig(path)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        description="The analysis figures of DropMix (Kong et al., EMNLP 2022): Figure 3(a), "
                    "one sentence's saliency map and mask (--text), and Figure 3(b)/(c) with "
                    "Table 5, channel importance over a training set (--channels).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="Figure 3(a) for this text (tokenized like training)")
    what.add_argument("--channels", action="store_true",
                      help="Figure 3(b)/(c) and Table 5 over --task's training set")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="a model folder saved by train.py (runs/.../seed-1/model), or an "
                        "encoder name train.py accepts")
    p.add_argument("--task", choices=sorted(data.TASKS),
                   help="the task (needed by --channels; with --text it names the classes)")
    p.add_argument("--variant", default="G", choices=DROPMIX_VARIANTS,
                   help="DropMix variant whose windows build M (section 4.2)")
    p.add_argument("--n", type=int, default=2, help="window height n of G and W (section 5.6: 2)")
    p.add_argument("--window-width", type=int, default=1, help="G: window width d in channels")
    p.add_argument("--lam", type=float, default=0.3,
                   help="fixed share of units M may take (section 5.6 fixes lam)")
    p.add_argument("--max-len", type=int, default=128, help="max tokens per text (section 5.3)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:K; default cuda if present")
    figure = p.add_argument_group("Figure 3(a) (--text)")
    figure.add_argument("--label", default=None,
                        help="class of the loss in I = |dL/dX|, a name or index; default the "
                             "model's predicted class")
    figure.add_argument("--png", default=None,
                        help="write the figure here (needs matplotlib); default: print a text "
                             "view")
    channels = p.add_argument_group("Figure 3(b)/(c) and Table 5 (--channels)")
    channels.add_argument("--out", default="analysis",
                          help="folder for channel_importance.png/.json and table5.md")
    channels.add_argument("--data-dir", default=None,
                          help="dataset folder; default $DROPMIX_DATA, else ~/.cache/dropmix")
    channels.add_argument("--batch-size", type=int, default=64, help="examples per batch")
    channels.add_argument("--limit", type=int, default=None,
                          help="use a stratified sample of about this many training examples "
                               "(fixed seed) instead of all")
    channels.add_argument("--compare", default="1,0",
                          help="classes A,B (indices or names) of Figure 3(c)'s difference A - B "
                               "and of Table 5; 1,0 is positive minus negative on SST-2")
    channels.add_argument("--rank-by", choices=("difference", "importance"), default="difference",
                          help="Table 5's channels: the ends of Figure 3(c), or each class's "
                               "own top of Figure 3(b)")
    channels.add_argument("--top-channels", type=int, default=3, help="channels per class")
    channels.add_argument("--top-words", type=int, default=10, help="words per channel")
    return p


def class_index(value: str, label_names: tuple[str, ...]) -> int:
    """A class given by name or index."""
    if value in label_names:
        return label_names.index(value)
    if value.lstrip("-").isdigit() and 0 <= int(value) < len(label_names):
        return int(value)
    raise UsageError(f"unknown class {value!r}; the classes are {', '.join(label_names)}.")


def check_mask_settings(args: argparse.Namespace) -> None:
    if not 0.0 <= args.lam <= 1.0:  # also rejects NaN
        raise UsageError(f"--lam must be in [0, 1], got {args.lam}.")
    if args.n < 1:
        raise UsageError(f"--n must be >= 1, got {args.n}.")
    if args.max_len < 8:  # train.py's floor: room for the special tokens and words
        raise UsageError(f"--max-len must be at least 8, got {args.max_len}.")


def writable_path(path: Path, what: str) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        raise UsageError(f"cannot create the folder {path.parent} for {what}.") from None
    return path


def run_figure_3a(args: argparse.Namespace, device: torch.device) -> None:
    """python results/figures.py --text TEXT [--png PATH]: Figure 3(a)."""
    if args.png is not None:
        require_matplotlib()  # before minutes of work, not after
    if not args.text.strip():
        raise UsageError("--text is empty.")
    task_labels = data.TASKS[args.task].labels if args.task else None
    tokenizer, model, labels = load_classifier(args.model, task_labels, device)
    check_model_fits(tokenizer, model, args.max_len)
    label = None if args.label is None else class_index(args.label, labels)
    result = sentence_analysis(model, tokenizer, args.text, args.variant, args.n,
                               args.window_width, args.lam, label, args.max_len, device)
    if args.png is None:
        print(text_view(result, args.variant, args.lam, labels))
        return
    path = writable_path(Path(args.png), "the PNG")
    try:
        plot_figure_3a(result, _title(result, args.variant, args.lam, labels), path)
    except OSError as error:
        raise UsageError(f"cannot write {path}: {error.strerror or error}.") from None
    print(f"wrote {path}")


def run_channels(args: argparse.Namespace, device: torch.device) -> None:
    """python results/figures.py --channels --task T --out DIR: Figure 3(b)/(c) and Table 5."""
    if args.task is None:
        raise UsageError("--channels needs --task, whose training set is analysed.")
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise UsageError("--batch-size and --limit must be >= 1.")
    if args.top_channels < 1 or args.top_words < 1:
        raise UsageError("--top-channels and --top-words must be >= 1.")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError:
        raise UsageError(f"cannot create the output folder {out}.") from None
    plot = has_matplotlib()
    if not plot:  # the numbers and the table do not need it: write them, skip the PNG
        print(f"note: {MATPLOTLIB_HINT}; skipping channel_importance.png.", file=sys.stderr)
    splits = data.load_task(args.task, data.resolve_data_dir(args.data_dir))
    label_names = data.TASKS[args.task].labels
    compare = args.compare.split(",")
    if len(compare) != 2:
        raise UsageError(f"--compare takes two classes A,B, got {args.compare!r}.")
    first, second = (class_index(c.strip(), label_names) for c in compare)
    if first == second:
        raise UsageError("--compare needs two different classes.")
    tokenizer, model, _ = load_classifier(args.model, label_names, device)
    check_model_fits(tokenizer, model, args.max_len)
    examples = splits["train"]
    if args.limit is not None and args.limit < len(examples):
        # data.subsample: stratified, with a fixed seed, so a --limit run is repeatable
        examples = data.subsample(examples, args.limit / len(examples))
    encoded = data.encode(examples, tokenizer, args.max_len)
    # Batches of similar length waste little on padding. In eval mode an example's I and M do
    # not depend on its batch mates (padding is masked out of attention; up to float rounding),
    # so the order is free; labels and contributed words are kept together, in that order.
    encoded.sort(key=lambda features: len(features["input_ids"]))
    loader = DataLoader(encoded, batch_size=args.batch_size, shuffle=False,
                        collate_fn=data.collate(tokenizer))
    start = time.perf_counter()
    stats = channel_statistics(model, loader, args.variant, args.n, args.window_width, args.lam,
                               len(label_names), device)
    seconds = time.perf_counter() - start
    importance = channel_importance(stats["counts"], stats["class_totals"])  # (C, D)
    chosen = top_channels(importance, first, second, args.top_channels, args.rank_by)
    columns = []
    for cls, channels in zip((first, second), chosen):
        of_class = stats["labels"] == cls                                     # (E,)
        for q in channels:
            ranking = word_ranking(stats["contributed_ids"][of_class, q], args.top_words)
            words = tokenizer.convert_ids_to_tokens([i for i, _ in ranking])
            columns.append({"class": label_names[cls], "channel": q,
                            "importance": float(importance[cls, q]),
                            "difference": float(importance[first, q] - importance[second, q]),
                            "words": [[w, c] for w, (_, c) in zip(words, ranking)]})
    difference = importance[first] - importance[second]                       # (D,)
    D = importance.shape[1]
    setting = (f"DropMix-{args.variant}, n={args.n}, d={args.window_width}, lam={args.lam:g}; "
               f"{args.task} train, {len(examples)} examples")
    (out / "table5.md").write_text(
        f"Contributed words of the top {args.top_channels} channels of {label_names[first]} and "
        f"of {label_names[second]} ({setting}; channels ranked by {args.rank_by}; a word "
        f"counts once per example of the channel's class in which it has the largest I in "
        f"that channel):\n\n" + table_5_markdown(columns, args.top_words))
    selected_share = stats["counts"].sum().item() / max(len(examples) * D, 1)
    (out / "channel_importance.json").write_text(json.dumps({
        "task": args.task, "model": args.model, "variant": args.variant, "n": args.n,
        "d": args.window_width, "lam": args.lam, "examples": len(examples),
        "limit": args.limit, "seconds": round(seconds, 1),
        "class_names": list(label_names),
        "class_totals": stats["class_totals"].tolist(),
        "selection_counts": stats["counts"].tolist(),
        "channel_importance": [[round(v, 6) for v in row] for row in importance.tolist()],
        "mean_share_of_channels_selected": round(selected_share, 6),
        "difference": {"minuend": label_names[first], "subtrahend": label_names[second],
                       "values": [round(v, 6) for v in difference.tolist()],
                       "channels_by_decreasing_difference":
                           difference.sort(descending=True, stable=True).indices.tolist()},
        "rank_by": args.rank_by, "table5": columns}, indent=1) + "\n")
    written = [out / "channel_importance.json", out / "table5.md"]
    if plot:
        plot_channel_importance(importance, label_names, first, second, chosen, setting,
                                out / "channel_importance.png")
        written.append(out / "channel_importance.png")
    print(f"{setting}: {seconds:.0f} s; M selects {selected_share:.1%} of the channels of an "
          f"example on average")
    for column in columns:
        words = ", ".join(w for w, _ in column["words"][:5])
        print(f"  {column['class']:>10} channel {column['channel']:>4} "
              f"(importance {column['importance']:.3f}, difference {column['difference']:+.3f}): "
              f"{words}")
    print("wrote " + ", ".join(str(p) for p in written))


def main(argv: list[str] | None = None) -> int:
    """python results/figures.py --text TEXT [--png PATH] | --channels --task T [--out DIR]."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return exit_.code
    try:
        check_mask_settings(args)
        device = parse_device(args.device)
        if args.text is not None:
            run_figure_3a(args, device)
        else:
            run_channels(args, device)
    except (UsageError, data.DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
