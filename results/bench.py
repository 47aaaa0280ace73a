"""What each variant costs: the time of a training step, and of the mask alone.

    python results/bench.py --task trec --steps 30                    # the encoder you train with
    python results/bench.py --task trec --steps 30 --shape bert-base  # the paper's shape, random weights
    python results/bench.py --mask                                    # patch_mask against eq. 4's loop
    python results/bench.py --mask --against 38096f3                  # patch_mask against an older one

The step table times training steps (forward, backward, clipping, AdamW) of every variant on the
same batches in one process; the variants take turns in three rounds and each keeps its median,
so a drift of the machine's speed does not favour whichever ran first. Columns:
    s/step          one training step of the variant, as train.py runs it
    x dropout       s/step over dropout's s/step at the same precision
    mask ms         building the mixed input alone (saliency -> mask -> mixed embeddings, or
                    SSMix's spans; the lam draw included), timed apart from the step
    mask % of step  mask ms over the variant's step
    literal s/step  the same step with the saliency map from a pass of its own (one more
                    forward and backward), as a literal reading of section 4.1 and SSMix's
                    published code do; train.py reuses the clean pass instead
    x dropout       literal s/step over dropout's s/step
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
from transformers import DataCollatorWithPadding

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the top-level modules

import data  # noqa: E402
import patches  # noqa: E402
import train  # noqa: E402
from mix import mixed_cross_entropy, partner  # noqa: E402
from saliency import clean_step, saliency_map  # noqa: E402

# the variants that use the saliency map, and so have a literal step to compare with
SALIENCY_VARIANTS = [name for name, v in train.VARIANTS.items() if v.mixes in ("ssmix", "dropmix")]


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def variant_list(text: str) -> list[str]:
    """--variants: names from train.VARIANTS, comma-separated; dropout is always timed, as the
    baseline of the "x dropout" columns."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in train.VARIANTS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"expected names from {', '.join(train.VARIANTS)}, got {text!r}")
    return [name for name in train.VARIANTS if name in names or name == "dropout"]


def now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def literal_step(config: train.RunConfig, model, batch: dict) -> None:
    """A mixing step whose saliency map costs a forward and backward pass of its own."""
    saliency = saliency_map(model, batch)                        # the pass of its own
    train.train_step(dataclasses.replace(config, variant="dropout"), model, batch, 0.5)
    kwargs, r, _ = train.mixed_inputs(config, model, batch, saliency.float())
    with train.autocast(batch["input_ids"].device, config.bf16):
        logits = model(**kwargs).logits
    (0.5 * mixed_cross_entropy(logits, batch["labels"], partner(batch["labels"]), r)).backward()


def time_steps(model, optimizer, batches: list[dict], config: train.RunConfig,
               literal: bool = False) -> float:
    """Seconds per training step (forward, backward, clip, AdamW) over `batches`."""
    train.set_dropout(model, config.dropout)
    device = batches[0]["input_ids"].device
    start = now(device)
    for batch in batches:
        if literal:
            literal_step(config, model, batch)
        else:
            train.train_step(config, model, batch)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (now(device) - start) / len(batches)


def time_mask(model, batches: list[dict], config: train.RunConfig) -> float:
    """Seconds per batch spent building the mixed input from a saliency map made beforehand."""
    train.set_dropout(model, config.dropout)
    device = batches[0]["input_ids"].device
    seconds = 0.0
    for batch in batches:
        _, I = clean_step(model, batch)
        model.zero_grad(set_to_none=True)
        start = now(device)
        train.mixed_inputs(config, model, batch, I.float())
        seconds += now(device) - start
    return seconds / len(batches)


def benchmark_model(shape: str, model_name: str, label_names: tuple[str, ...]):
    """The encoder to time: the given model, or bert-base's shape (12 layers, 768 wide) with
    random weights and the given model's tokenizer (the default's is bert-base's uncased
    30,522 words); for that shape a folder holding only a tokenizer will do."""
    if shape == "model":
        return train.load_encoder(model_name, label_names, 0.1)
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    source = str(train.default_model_dir()) if model_name == train.DEFAULT_MODEL else model_name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise train.UsageError(f"cannot load a tokenizer from {model_name!r}: "
                               f"{train.first_line(error)}") from None
    return tokenizer, BertForSequenceClassification(BertConfig(num_labels=len(label_names)))


def run_steps(args: argparse.Namespace, warmup: int = 3, rounds: int = 3) -> list[dict]:
    """Time the variants of --variants on the same batches; one row per (variant, precision)."""
    device = train.parse_device(args.device)
    torch.manual_seed(0)
    splits = data.load_task(args.task, data.resolve_data_dir(args.data_dir))
    tokenizer, model = benchmark_model(args.shape, args.model, data.TASKS[args.task].labels)
    model.to(device).train()
    # bert-base's shape pads every batch to --max-len, as the paper's setting does
    collate = DataCollatorWithPadding(tokenizer, padding="max_length" if args.shape == "bert-base"
                                      else "longest", max_length=args.max_len)
    encoded = data.encode(splits["train"], tokenizer, args.max_len)
    order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(0)).tolist()
    per_round = max(1, args.steps // rounds)
    batches = []
    for i in range(warmup + per_round):
        chunk = [encoded[order[(i * args.batch_size + j) % len(order)]]
                 for j in range(args.batch_size)]
        batches.append({k: v.to(device) for k, v in collate(chunk).items()})
    precisions = [False] + [True] * (device.type == "cuda" and torch.cuda.is_bf16_supported())
    configs = {(variant, bf16): train.configs_from_args(train.build_parser().parse_args(
                   ["--task", args.task, "--variant", variant, "--batch-size", str(args.batch_size)]
                   + ["--bf16"] * bf16))[0]
               for bf16 in precisions for variant in args.variants}
    optimizer, _ = train.build_optimizer(model, configs[("dropout", False)], 10**6)
    timings: dict[tuple, list] = {key: [] for key in configs}
    for key, config in configs.items():  # warm-up: allocations, caches
        time_steps(model, optimizer, batches[:warmup], config)
    for _ in range(rounds):
        for (variant, bf16), config in configs.items():
            mixing = bool(train.VARIANTS[variant].mixes)
            timings[(variant, bf16)].append((
                time_steps(model, optimizer, batches[warmup:], config),
                time_mask(model, batches[warmup:], config) if mixing else None,
                time_steps(model, optimizer, batches[warmup:], config, literal=True)
                if variant in SALIENCY_VARIANTS else None))
    median = lambda values: statistics.median(values) if values[0] is not None else None  # noqa: E731
    return [{"variant": variant, "bf16": bf16, "steps": per_round * rounds,
             "seconds_per_step": median([t[0] for t in runs]),
             "mask_seconds": median([t[1] for t in runs]),
             "literal_seconds_per_step": median([t[2] for t in runs])}
            for (variant, bf16), runs in timings.items()]


def format_steps(rows: list[dict], header: str) -> str:
    """The step table in Markdown; each column as the module docstring defines it."""
    out = [header,
           "| variant | precision | s/step | x dropout | mask ms | mask % of step "
           "| literal s/step | x dropout |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        plain = next(r["seconds_per_step"] for r in rows
                     if r["variant"] == "dropout" and r["bf16"] == row["bf16"])
        t, mask, literal = row["seconds_per_step"], row["mask_seconds"], row["literal_seconds_per_step"]
        cells = [row["variant"], "bf16" if row["bf16"] else "fp32", f"{t:.4f}", f"{t / plain:.2f}",
                 f"{1000 * mask:.2f}" if mask is not None else "–",
                 f"{100 * mask / t:.1f}%" if mask is not None else "–",
                 f"{literal:.4f}" if literal is not None else "–",
                 f"{literal / plain:.2f}" if literal is not None else "–"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


# the mask benchmark's batches: TREC's, on the default encoder, then random maps (B, N, D)
MASK_SHAPES = ("trec", (32, 128, 384), (32, 128, 768))


def mask_inputs(B: int, N: int, D: int):
    """The mask benchmark's batch: I ~ U[0, 1), L ~ U{2..N}, lam ~ Beta(0.25, 0.25)."""
    return (torch.rand(B, N, D), torch.distributions.Beta(0.25, 0.25).sample((B,)),
            torch.randint(2, N + 1, (B,)))


def trec_mask_inputs(data_dir: str | None = None, batch_size: int = 32):
    """TREC's first training batch as run_steps builds it (padded to its longest) on the
    default encoder: I = saliency_map of the batch, its ordinary tokens' rows moved to the
    front as mix.region_mask does, L = its ordinary tokens, lam ~ Beta(0.25, 0.25)."""
    from mix import ordinary_tokens
    splits = data.load_task("trec", data.resolve_data_dir(data_dir))
    tokenizer, model = train.load_encoder(train.DEFAULT_MODEL, data.TASKS["trec"].labels, 0.1)
    encoded = data.encode(splits["train"], tokenizer)
    order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(0)).tolist()
    batch = data.collate(tokenizer)([encoded[i] for i in order[:batch_size]])
    I, ordinary = saliency_map(model.train(), batch), ordinary_tokens(batch)    # (B, N, D)
    rows = ((~ordinary).long() * I.shape[1] + torch.arange(I.shape[1])).argsort(1)
    I = I.gather(1, rows[:, :, None].expand_as(I)).contiguous()
    return I, torch.distributions.Beta(0.25, 0.25).sample((batch_size,)), ordinary.sum(1)


def mask_cases(shapes=MASK_SHAPES, data_dir: str | None = None):
    """(I, lam, L) of each shape: "trec" for TREC's batch, else (B, N, D) random."""
    return [trec_mask_inputs(data_dir) if shape == "trec" else mask_inputs(*shape)
            for shape in shapes]


def mask_windows(variant: str, N: int, D: int) -> list[tuple[int, int]]:
    """The windows a mask table times for `variant`: W's and G's at n = 2, 5, ..., 32."""
    heights = range(2, 33, 3) if variant in ("W", "G") else [None]
    return [patches.window_shape(variant, N, D, n=h) for h in heights]


def seconds(fn, repeats: int, device: torch.device = torch.device("cpu")) -> float:
    fn()
    start = now(device)
    for _ in range(repeats):
        fn()
    return (now(device) - start) / repeats


def mask_table(repeats: int = 20, device: torch.device = torch.device("cpu"),
               shapes=MASK_SHAPES, data_dir: str | None = None) -> str:
    """patch_mask per window shape on a CPU or a GPU, and the literal eq. 4 on one example."""
    torch.manual_seed(0)
    where = (f"{torch.get_num_threads()} CPU threads" if device.type == "cpu"
             else torch.cuda.get_device_name(device))
    out = [f"patch_mask on {where}, torch {torch.__version__}; "
           "ms per batch, mean over n = 2, 5, ..., 32 for W and G",
           "| shape (B, N, D) | U | C | W | G | G / C | literal loop (one example, U) | speed-up |",
           "|---|---|---|---|---|---|---|---|"]
    for shape, case in zip(shapes, mask_cases(shapes, data_dir)):
        I, lam, lengths = (t.to(device) for t in case)
        (B, N, D), times = I.shape, {}
        for variant in patches.WINDOWS:
            times[variant] = statistics.mean(
                seconds(lambda: patches.patch_mask(I, n, d, lam, lengths), repeats, device)
                for n, d in mask_windows(variant, N, D))
        ms = {v: f"{1000 * t:.2f}" for v, t in times.items()}
        literal = "– | –"
        if N <= 32 and device.type == "cpu":  # the literal loop on one example, against patch_mask
            one = (I[:1], 1, 1, lam[:1], lengths[:1])
            slow = seconds(lambda: patches.literal_patch_mask(*one), 2)
            fast = seconds(lambda: patches.patch_mask(*one), repeats)
            literal = f"{1000 * slow:.0f} ms | {slow / fast:.0f}x"
        out.append(f"| {'TREC ' * (shape == 'trec')}{B}, {N}, {D} | {ms['U']} | {ms['C']} "
                   f"| {ms['W']} | {ms['G']} "
                   f"| {times['G'] / times['C']:.2f} | {literal} |")
    return "\n".join(out)


def previous_patches(rev: str) -> types.ModuleType:
    """patches.py as git revision `rev` of this repository had it, loaded as its own module."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(["git", "show", f"{rev}:patches.py"], cwd=root, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise train.UsageError(f"cannot read patches.py at {rev!r}: {done.stderr.strip()}")
    module = types.ModuleType(f"patches_at_{rev}")
    exec(compile(done.stdout, f"{rev}:patches.py", "exec"), module.__dict__)  # noqa: S102
    return module


def compare_table(before: types.ModuleType, label: str, rounds: int = 7,
                  shapes=MASK_SHAPES, data_dir: str | None = None) -> str:
    """patch_mask of `before` and of patches.py in this process, on the same batches: each
    variant's two versions take turns for `rounds` rounds (a drift of the machine's speed
    favours neither) and keep their median, of wall time and of this process's CPU time (all
    its threads; less swayed by other processes on a loaded machine); "same M" checks the
    masks bit for bit."""
    torch.manual_seed(0)
    out = [f"patch_mask, {label} against this tree, on {torch.get_num_threads()} CPU threads, "
           f"torch {torch.__version__}; ms per batch, median of {rounds} interleaved rounds "
           "(W and G: mean over n = 2, 5, ..., 32)",
           f"| shape (B, N, D) | variant | {label} ms | now ms | speed-up | {label} CPU ms "
           "| now CPU ms | CPU speed-up | same M |", "|---|---|---|---|---|---|---|---|---|"]
    for shape, (I, lam, lengths) in zip(shapes, mask_cases(shapes, data_dir)):
        (B, N, D), what = I.shape, "TREC " * (shape == "trec")
        for variant in patches.WINDOWS:
            windows = mask_windows(variant, N, D)
            same = all(torch.equal(before.patch_mask(I, n, d, lam, lengths),
                                   patches.patch_mask(I, n, d, lam, lengths)) for n, d in windows)
            runs: dict[tuple, list[float]] = collections.defaultdict(list)
            for _ in range(rounds):
                for name, module in (("before", before), ("now", patches)):
                    for clock in (time.perf_counter, time.process_time):
                        start = clock()
                        for n, d in windows:
                            module.patch_mask(I, n, d, lam, lengths)
                        runs[name, clock].append((clock() - start) / len(windows))
            ms = {key: 1000 * statistics.median(values) for key, values in runs.items()}
            cells = []
            for clock in (time.perf_counter, time.process_time):
                old, new = ms["before", clock], ms["now", clock]
                cells += [f"{old:.2f}", f"{new:.2f}", f"{old / new:.2f}x"]
            out.append(f"| {what}{B}, {N}, {D} | {variant} | " + " | ".join(cells)
                       + f" | {'yes' if same else 'NO'} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = train.Parser(description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--mask", action="store_true", help="time patch_mask alone, no model")
    p.add_argument("--against", metavar="REV", default=None,
                   help="with --mask: time patches.py of git revision REV beside this one")
    p.add_argument("--rounds", type=positive_int, default=7,
                   help="with --against: interleaved rounds, each version keeps its median")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default torch's)")
    p.add_argument("--task", choices=sorted(data.TASKS), default="trec", help="whose batches")
    p.add_argument("--steps", type=positive_int, default=30,
                   help="timed steps per variant, over three rounds")
    p.add_argument("--variants", type=variant_list, default=",".join(train.VARIANTS),
                   metavar="V1,V2", help="the variants to time, comma-separated (dropout always)")
    p.add_argument("--shape", choices=("model", "bert-base"), default="model",
                   help="time --model, or bert-base's shape with random weights")
    p.add_argument("--model", default=train.DEFAULT_MODEL, help="encoder, as train.py takes it")
    p.add_argument("--batch-size", type=positive_int, default=32, help="examples per step")
    p.add_argument("--max-len", type=positive_int, default=128,
                   help="max tokens; bert-base's shape pads every batch to it")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:K; default cuda if present")
    p.add_argument("--data-dir", default=None, help="dataset folder, as train.py takes it")
    try:
        args = p.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mask and args.against:
        try:
            print(compare_table(previous_patches(args.against), args.against, args.rounds,
                                data_dir=args.data_dir))
        except (train.UsageError, data.DataError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return 0
    if args.mask:
        try:
            device = train.parse_device(args.device)
            # a GPU machine holds no pretrained weights (results/gpu_check.sh): random maps only
            shapes = MASK_SHAPES if device.type == "cpu" else MASK_SHAPES[1:]
            table = mask_table(device=device, shapes=shapes, data_dir=args.data_dir)
        except (train.UsageError, data.DataError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(table)
        return 0
    try:
        rows = run_steps(args)
        env = train.provenance(train.parse_device(args.device))
    except (train.UsageError, data.DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    model = args.model if args.shape == "model" else "random bert-base"
    print(format_steps(rows, f"{rows[0]['steps']} steps per variant in 3 rounds (median), batch "
                             f"{args.batch_size}, task {args.task}, shape {args.shape} ({model}), "
                             f"{env['device_name']}, torch {env['torch']}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
