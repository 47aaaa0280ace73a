"""How much DropMix's mask depends on the dropout draw of the clean pass.

    python results/mask_overlap.py --model runs/trec-G/seed-1/model --task trec --out results/mask-overlap.md

train.py takes the saliency map I_A from the clean pass of the training step (saliency.py), and
that pass runs in training mode: the encoder's dropout is on. So I_A, and the mask M built from
it, depend on the step's dropout draw. This script measures how much: on the same batches, with
the same lam and window, it builds M from two clean passes that differ only in their dropout
draw, and reports the overlap |M1 & M2| / |M1 | M2| (IoU) per example, next to the overlap of
two random masks of the same sizes inside the same region V (uniform over V's units), and next
to the overlap of a training-mode mask with the mask of the model in eval mode (no dropout).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the top-level modules

import data  # noqa: E402
from mix import mixing_region, ordinary_tokens, region_mask, sample_lam  # noqa: E402
from patches import N_RANGE, window_shape  # noqa: E402
from saliency import saliency_map  # noqa: E402
from train import (DEFAULT_MODEL, VARIANTS, Parser, UsageError, load_encoder,  # noqa: E402
                   parse_device, replace_atomically)


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) |a & b| / |a | b| per example of two (B, N, D) bool masks; NaN where both are empty."""
    union = (a | b).sum((1, 2)).double()
    return (a & b).sum((1, 2)).double() / union.where(union > 0, torch.nan)


def random_mask_like(mask: torch.Tensor, region: torch.Tensor, generator: torch.Generator
                     ) -> torch.Tensor:
    """A mask with as many units as `mask` per example, drawn uniformly among the units of V."""
    B, N, D = mask.shape
    scores = torch.rand(B, N, D, generator=generator).masked_fill(~region[:, :, None], -1.0)
    ranks = scores.flatten(1).argsort(1, descending=True).argsort(1).view(B, N, D)
    return ranks < mask.sum((1, 2))[:, None, None]


def masks(model, batch: dict, variant: str, lam: torch.Tensor, n: int, train_mode: bool,
          seed: int) -> torch.Tensor:
    """M of one clean pass: the saliency map in train or eval mode (the dropout draw fixed by
    `seed`), then eq. 4 inside V with the budget floor(lam L_A D), as mix.dropmix builds it."""
    model.train(train_mode)
    torch.manual_seed(seed)
    I = saliency_map(model, batch).float()                                  # (B, N, D)
    _, N, D = I.shape
    n_, d_ = window_shape(variant, N, D, n=n)
    ordinary = ordinary_tokens(batch)                                       # (B, N)
    return region_mask(I, mixing_region(ordinary), n_, d_, lam, budget_rows=ordinary.sum(1))


def measure(model, loader, variant: str, alpha: float, generator: torch.Generator) -> dict:
    """Per example: the IoU of two training draws, of two random masks of the same sizes, and
    of a training draw with eval mode; the share of V the first draw takes; and how many
    masks are empty. A lam near 0 or 1 (Beta(alpha, alpha) with a small alpha) makes masks
    that take nothing or all of V, whose overlap says nothing of saliency, so the overlaps are
    also given for the examples whose mask takes 10% to 90% of V."""
    columns = {"draws": [], "random": [], "eval": [], "share": []}
    torch.manual_seed(0)  # lam per example and G's height per batch, shared by the masks compared
    lams = [sample_lam(alpha, batch["input_ids"].shape[0]) for batch in loader]
    heights = torch.randint(N_RANGE[0], N_RANGE[1] + 1, (len(loader),), generator=generator)
    for b, (batch, lam, n) in enumerate(zip(loader, lams, heights.tolist())):
        first = masks(model, batch, variant, lam, n, True, seed=2 * b)
        second = masks(model, batch, variant, lam, n, True, seed=2 * b + 1)
        clean = masks(model, batch, variant, lam, n, False, seed=0)
        region = mixing_region(ordinary_tokens(batch))
        columns["draws"].append(iou(first, second))
        columns["random"].append(iou(random_mask_like(first, region, generator),
                                     random_mask_like(second, region, generator)))
        columns["eval"].append(iou(first, clean))
        columns["share"].append(first.sum((1, 2)).double()
                                / (region.sum(1) * first.shape[2]).clamp(min=1))
    values = {name: torch.cat(parts) for name, parts in columns.items()}     # (examples,)
    middle = (values["share"] > 0.1) & (values["share"] < 0.9)

    def summary(x: torch.Tensor) -> tuple[float, float, int]:
        x = x[~x.isnan()]                                                     # both masks empty
        return (x.mean().item(), x.median().item(), len(x)) if len(x) else (math.nan, math.nan, 0)
    return {"examples": len(values["share"]), "empty": int((values["share"] == 0).sum()),
            "share_of_V": values["share"].mean().item(), "middle": int(middle.sum()),
            **{name: summary(values[name]) for name in ("draws", "random", "eval")},
            **{f"{name} middle": summary(values[name][middle]) for name in ("draws", "random", "eval")}}


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0],
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="a model saved by train.py")
    p.add_argument("--task", choices=sorted(data.TASKS), default="trec", help="whose training set")
    p.add_argument("--variants", default="C,G", help="DropMix variants whose masks to compare")
    p.add_argument("--batches", type=int, default=20, help="batches of 32 to measure")
    p.add_argument("--out", type=Path, default=None, help="also write the table here")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:K; default cuda if present")
    p.add_argument("--data-dir", default=None, help="dataset folder, as train.py takes it")
    try:
        args = p.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code
    try:
        if args.batches < 1:
            raise UsageError(f"--batches must be a positive integer, got {args.batches}.")
        variants = args.variants.split(",")
        if any(VARIANTS.get(v) is None or VARIANTS[v].mixes != "dropmix" for v in variants):
            raise UsageError(f"--variants {args.variants} must list DropMix variants (U, C, W, G).")
        device = parse_device(args.device)
        splits = data.load_task(args.task, data.resolve_data_dir(args.data_dir))
        torch.manual_seed(1)
        tokenizer, model = load_encoder(args.model, data.TASKS[args.task].labels, 0.1)
        model.to(device)
        encoded = data.encode(splits["train"], tokenizer, 128)
        order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(0))
        chosen = [encoded[i] for i in order[:32 * args.batches].tolist()]
        collate = data.collate(tokenizer)
        loader = [{k: v.to(device) for k, v in batch.items()}
                  for batch in DataLoader(chosen, batch_size=32, collate_fn=collate)]
    except (UsageError, data.DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    lines = [f"Mask overlap (IoU) per example, {args.task} training batches of 32, model "
             f"{args.model}; lam ~ Beta(alpha, alpha) and n drawn once per batch and shared by "
             "the masks compared; mean / median over the examples where either mask is "
             "non-empty, and (second row of a variant) over those whose mask takes 10-90% of V\n",
             "| variant | examples | empty masks | mean share of V taken | two dropout draws "
             "| two random masks, same sizes | a dropout draw and eval mode |",
             "|---|---|---|---|---|---|---|"]
    for variant in variants:
        result = measure(model, loader, variant, VARIANTS[variant].alpha,
                         torch.Generator().manual_seed(0))
        cell = lambda name: f"{result[name][0]:.3f} / {result[name][1]:.3f}"  # noqa: E731
        lines.append(f"| {variant} | {result['examples']} | {result['empty']} "
                     f"| {result['share_of_V']:.3f} | {cell('draws')} | {cell('random')} "
                     f"| {cell('eval')} |")
        lines.append(f"| {variant}, M takes 10-90% of V | {result['middle']} | – | – "
                     f"| {cell('draws middle')} | {cell('random middle')} | {cell('eval middle')} |")
    table = "\n".join(lines) + "\n"
    print(table, end="")
    if args.out is not None:
        try:
            replace_atomically(Path(args.out), lambda file: file.write(table.encode()))
        except data.DataError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
