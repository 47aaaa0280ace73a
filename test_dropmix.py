"""Tests of the DropMix reference (Kong et al., EMNLP 2022): the method against literal
versions of its equations or hand-worked numbers, the loaders on the real files, and end-to-end
runs on tiny encoders built here.

    python -m pytest -q test_dropmix.py

The sections follow the README's table "The paper, section by section":
     1. shared builders: the tiny models and tokenizers, the helpers every section uses
     2. saliency (section 4.1)                                      saliency.py
     3. windows and f (section 4.1, eq. 3; section 4.2)             patches.py
     4. the mask (eq. 4)                                            patches.py
     5. mixing and eq. 5 (sections 3.1, 3.2, 4; SSMix)              mix.py
     6. the loss (eq. 6) and the training step (section 4.3)        mix.py, train.py
     7. data (section 5.1)                                          data.py
     8. training (sections 5.2, 5.3)                                train.py
     9. processes: accumulation, torchrun, the Trainer snippet     train.py, README.md
    10. encoders (section 5.2)                                      train.load_encoder

Real-data tests read ../shared/data (or $DROPMIX_DATA) and are skipped, with the reason, where
it is absent. Nothing is downloaded. The programs that torchrun starts are functions here too,
probe_*, run as `python test_dropmix.py probe-NAME ARGS...` (the dispatcher is at the end).
The reproduction code under results/ has tests of its own, results/test_results.py, which build
on the builders of section 1.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import fractions
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import torch

# Before any process group exists, as in train.py (which says why): the probe-* programs below
# run under torchrun, and this import after init_process_group kept gloo's threads alive into
# interpreter teardown, a SIGABRT at exit (cf. pytorch/pytorch#65231).
import torch.distributed.nn.functional
import torch.nn.functional as F

import data
import mix
import patches
import saliency
import train

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("DROPMIX_DATA") or HERE.parent / "shared" / "data")
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"benchmark data not found at {DATA}")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device here; results/gpu_check.sh runs these on one")


# =============================================================================================
# 1. Shared builders: the tiny models and tokenizers, and what every section uses
# One builder per tokenizer (write_tokenizer) and per tiny model (write_tiny_encoder); the
# fixtures build each model folder once per session. Nothing here is downloaded.
# =============================================================================================

TINY_WORDS = ["what", "how", "who", "where", "when", "which", "why", "is", "are", "was", "the",
              "a", "of", "in", "to", "and", "for", "name", "does", "did", "many", "much", "city",
              "country", "called", "first", "world", "year", "origin", "mean", "river", "state",
              "president"]
TINY_VOCAB = ["?", ",", "'", ".", *TINY_WORDS]  # after the specials: the tiny models' words


def write_tokenizer(folder: Path, family: str = "bert", words=TINY_VOCAB):
    """A tokenizer of `words`, saved in `folder` and loaded back from it. WordPiece with [CLS]
    and [SEP] (BERT, DistilBERT, ALBERT, ELECTRA); MPNet's WordPiece with RoBERTa's specials,
    <s> a </s></s> b </s>; RoBERTa a byte-level BPE trained on the words, with no token types.
    The WordPiece vocabulary is the five specials, then `words`, in this order."""
    import transformers
    folder.mkdir(parents=True, exist_ok=True)
    if family == "roberta":
        from tokenizers import ByteLevelBPETokenizer
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator([" ".join(words)] * 4, vocab_size=300, show_progress=False,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        bpe.save_model(str(folder))
        return transformers.RobertaTokenizerFast.from_pretrained(str(folder))
    if family == "mpnet":
        specials, kind = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"], transformers.MPNetTokenizerFast
    else:
        specials, kind = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], transformers.BertTokenizerFast
    (folder / "vocab.txt").write_text("\n".join([*specials, *words]) + "\n")
    # transformers 5 ignores BertTokenizerFast(vocab_file=...): load the folder instead
    return kind.from_pretrained(str(folder))


LAYERS = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
          "intermediate_size": 64}
# family: (its config class, 2 layers 32 wide in its own field names, its dropout fields)
ENCODER_FAMILIES = {
    "bert": ("BertConfig", LAYERS, ("hidden_dropout_prob", "attention_probs_dropout_prob")),
    "roberta": ("RobertaConfig", LAYERS, ("hidden_dropout_prob", "attention_probs_dropout_prob",
                                          "classifier_dropout")),
    "distilbert": ("DistilBertConfig", {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
                   ("dropout", "attention_dropout", "seq_classif_dropout")),
    "albert": ("AlbertConfig", {**LAYERS, "embedding_size": 16},
               ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob")),
    "electra": ("ElectraConfig", {**LAYERS, "embedding_size": 16},
                ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")),
    "mpnet": ("MPNetConfig", LAYERS, ("hidden_dropout_prob", "attention_probs_dropout_prob")),
}
FAMILIES = tuple(ENCODER_FAMILIES)


def write_tiny_encoder(folder: Path, family: str = "bert", num_labels: int | None = None,
                       dropout: float | None = None) -> Path:
    """A 2-layer, 32-wide random encoder of `family` with write_tokenizer's tokenizer of
    TINY_VOCAB, saved like a pretrained checkpoint: no classifier head unless num_labels is
    given; every dropout field of its config at `dropout` if given, else at its default."""
    import transformers
    tokenizer = write_tokenizer(folder, family)
    config_class, shape, dropout_fields = ENCODER_FAMILIES[family]
    config = getattr(transformers, config_class)(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        # RoBERTa and MPNet count positions after the padding index: 130 hold 128 tokens
        max_position_embeddings=130 if family in ("roberta", "mpnet") else 128, **shape,
        **({} if dropout is None else dict.fromkeys(dropout_fields, dropout)),
        **({} if num_labels is None else {"num_labels": num_labels}))
    torch.manual_seed(0)
    auto = transformers.AutoModel if num_labels is None else transformers.AutoModelForSequenceClassification
    auto.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny BERT encoder without a head, as train.py's --model takes a pretrained one."""
    return write_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_classifier_folder(tmp_path_factory) -> Path:
    """A tiny BERT classifier of 3 classes, saved."""
    return write_tiny_encoder(tmp_path_factory.mktemp("tiny-classifier"), num_labels=3)


@pytest.fixture(scope="session")
def tiny_classifier(tiny_classifier_folder):
    """(model, tokenizer) of the 3-class tiny classifier, loaded once: tests that change its
    mode or gradients put them back."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    return (AutoModelForSequenceClassification.from_pretrained(tiny_classifier_folder),
            AutoTokenizer.from_pretrained(tiny_classifier_folder))


@pytest.fixture(scope="session")
def tiny_two_class_model(tmp_path_factory) -> Path:
    """A tiny BERT classifier of 2 classes, saved like train.py saves a model."""
    return write_tiny_encoder(tmp_path_factory.mktemp("tiny-2-classes"), num_labels=2)


@pytest.fixture(scope="session")
def tiny_mpnet(tmp_path_factory) -> Path:
    """A tiny random MPNet (no token types, <s> a </s></s> b </s>), for all-mpnet-base-v2."""
    return write_tiny_encoder(tmp_path_factory.mktemp("tiny-mpnet"), "mpnet")


@pytest.fixture
def tiny_tokenizer(tmp_path):
    """A WordPiece tokenizer of 13 words whose ids the data tests spell out: [PAD] 0, [UNK] 1,
    [CLS] 2, [SEP] 3, [MASK] 4, the 5, cat 6, sat 7, on 8, mat 9, a 10, dog 11, . 12."""
    return write_tokenizer(tmp_path, words=["the", "cat", "sat", "on", "mat", "a", "dog", "."])


def tiny_batch(tokenizer, texts, labels):
    """A batch as data.py's collate makes it: with special_tokens_mask and labels."""
    enc = tokenizer(texts, padding=True, return_tensors="pt", return_special_tokens_mask=True)
    return {**enc, "labels": torch.tensor(labels)}


def dropout_probabilities(model) -> set:
    return {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}


def offline(*args, **kwargs):
    """urllib.request.urlopen on a machine without a network."""
    raise urllib.error.URLError("no network")


def run_train(*argv) -> int:
    return train.main([str(a) for a in argv])


# 64 TREC questions (0.0118 of 5,452), one epoch, batches of 16, on the CPU
TINY_RUN = ("--task", "trec", "--train-fraction", "0.0118", "--epochs", "1",
            "--batch-size", "16", "--no-progress", "--device", "cpu")
# 64 RTE pairs (0.026 of 2,490), the same way, 64 tokens at most
TINY_PAIRS_RUN = ("--task", "rte", "--train-fraction", "0.026", "--epochs", "1",
                  "--batch-size", "16", "--max-len", "64", "--no-progress", "--device", "cpu")


# the same on the user's own files (--train-file)
OWN_RUN = ("--epochs", "1", "--batch-size", "16", "--no-progress", "--device", "cpu")


def tiny_run(model, out, *flags, run=TINY_RUN) -> int:
    """train.py's exit status for `run` on the real data with `model`, into `out`."""
    return run_train(*run, "--model", model, "--data-dir", DATA, "--output-dir", out, *flags)


def results_of(out: Path, seed: int = 1) -> dict:
    """The results.json train.py wrote for `seed` into its --output-dir `out`."""
    return json.loads((out / f"seed-{seed}" / "results.json").read_text())


class GradientRecorder:
    """An optimizer that only keeps the gradients of each step it is asked to take, so the
    weights stay put and every step is compared on the same model."""

    def __init__(self, model):
        self.model, self.grads = model, []

    def step(self):
        self.grads.append({n: p.grad.clone() for n, p in getattr(self.model, "module", self.model).named_parameters()
                           if p.grad is not None})

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)


class NoSchedule:
    def step(self):
        pass


# =============================================================================================
# 2. Saliency (section 4.1): saliency.py
# I_A = |dL/dX_A| against torch.autograd.grad, and the clean pass's gradients against a plain
# backward.
# =============================================================================================

def test_clean_step_saliency_is_the_gradient_and_grads_are_a_plain_backward(tiny_classifier):
    model, tokenizer = tiny_classifier
    model.eval()  # no dropout, so the two passes below see the same function
    batch = tiny_batch(tokenizer, ["what is the city ?", "who was the first president",
                                   "how many", "where is the river"], [0, 1, 2, 1])
    model.zero_grad()
    loss, I = saliency.clean_step(model, batch)
    clean_grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    x = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
    logits = model(inputs_embeds=x, attention_mask=batch["attention_mask"],
                   token_type_ids=batch["token_type_ids"]).logits
    expected_loss = F.cross_entropy(logits, batch["labels"])
    (grad_x,) = torch.autograd.grad(expected_loss, x, retain_graph=True)
    torch.testing.assert_close(I, grad_x.abs())
    torch.testing.assert_close(loss, expected_loss.detach())

    model.zero_grad()
    plain = F.cross_entropy(model(**{k: v for k, v in batch.items()
                                     if k not in ("labels", "special_tokens_mask")}).logits,
                            batch["labels"])
    plain.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(clean_grads[name], p.grad, msg=name)

    model.zero_grad()
    torch.testing.assert_close(saliency.saliency_map(model, batch), I)
    assert all(p.grad is None for p in model.parameters())  # saliency_map leaves .grad alone
    # a scaled backward returns the same map and half the gradients
    _, I_half = saliency.clean_step(model, batch, loss_scale=0.5)
    torch.testing.assert_close(I_half, I)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, clean_grads[name] / 2, msg=name)
    model.zero_grad()
    model.train()


def test_model_inputs_drops_labels_and_special_mask():
    batch = {"input_ids": 1, "attention_mask": 2, "token_type_ids": 3, "labels": 4,
             "special_tokens_mask": 5}
    assert saliency.model_inputs(batch) == {"attention_mask": 2, "token_type_ids": 3}


# =============================================================================================
# 3. Windows and f (section 4.1, eq. 3; section 4.2): patches.py
# window_activation F_A (the L2 norm of every n x d window) against a loop over the windows,
# window_units f(i, j) of eq. 3 by hand, and the window settings U, C, W, G of section 4.2.
# =============================================================================================

def literal_window_activation(I: torch.Tensor, n: int, d: int) -> torch.Tensor:
    """F[b, i, j] = sqrt(sum over f(i, j) of I^2), one window at a time."""
    B, N, D = I.shape
    F_ = torch.empty(B, N - n + 1, D - d + 1, dtype=I.dtype)
    for b in range(B):
        for i in range(N - n + 1):
            for j in range(D - d + 1):
                F_[b, i, j] = math.sqrt(sum(float(I[b, p, q]) ** 2
                                            for p, q in patches.window_units(i, j, n, d)))
    return F_


def test_window_activation_equals_looped_norms():
    g = torch.Generator().manual_seed(2)
    I = torch.rand(2, 6, 5, dtype=torch.float64, generator=g)
    for n, d in [(1, 1), (2, 1), (3, 2), (6, 5), (1, 5), (4, 3)]:
        got = patches.window_activation(I, n, d)
        assert got.shape == (2, 6 - n + 1, 5 - d + 1)
        torch.testing.assert_close(got, literal_window_activation(I, n, d))


@pytest.mark.parametrize("n", [2, 5, 17, 31])
def test_a_cut_window_scores_the_same_on_its_rows_as_on_the_whole_map(n):
    # patch_mask scores the window of an example shorter than n on its first n rows alone;
    # its F must be the bits the whole zeroed map gives (the mask is bit-identical to scoring
    # the zeroed map, as the path before it did)
    g = torch.Generator().manual_seed(n)
    I = torch.rand(8, 64, 96, generator=g) * torch.rand(8, 64, 1, generator=g) ** 4
    lengths = torch.randint(0, n, (8,), generator=g)
    rows = torch.arange(64) < lengths[:, None]
    zeroed = I.masked_fill(~rows[:, :, None], 0.0)
    whole = patches.window_activation(zeroed, n, 1)[:, :1]
    head = patches.window_activation(zeroed[:, :n], n, 1)
    assert torch.equal(whole.view(torch.int32), head.view(torch.int32))


def test_window_units_is_eq3():
    assert patches.window_units(2, 3, 2, 3) == [(2, 3), (2, 4), (2, 5), (3, 3), (3, 4), (3, 5)]
    assert patches.window_units(0, 0, 1, 1) == [(0, 0)]
    assert len(set(patches.window_units(4, 1, 5, 7))) == 35


def test_window_shapes_of_section_4_2():
    assert patches.window_shape("U", 40, 384) == (1, 1)
    assert patches.window_shape("C", 40, 384) == (40, 1)
    assert patches.window_shape("W", 40, 384, n=3) == (3, 384)
    assert patches.window_shape("G", 40, 384, n=5) == (5, 1)
    assert patches.window_shape("G", 40, 384, n=5, d=384) == (5, 384)  # the paper's d = D
    g = torch.Generator().manual_seed(0)
    drawn = {patches.window_shape("G", 40, 384, generator=g)[0] for _ in range(400)}
    assert drawn == set(range(2, 33))
    with pytest.raises(ValueError, match="^unknown DropMix variant 'X'; choose one of U, C, W, G$"):
        patches.window_shape("X", 40, 384)
    with pytest.raises(ValueError, match=r"^window width 385 is outside 1\.\.384$"):
        patches.window_shape("G", 40, 384, d=385)


# =============================================================================================
# 4. The mask (section 4.1, eq. 4): patches.py
# patch_mask, batched (no loop over the examples, no host sync), against literal_patch_mask,
# eq. 4 as written: random cases with distinct and with tied scores, ties taken in reading
# order, the budget unit_budget, and the order statistic (radix select against a sort).
# =============================================================================================

def random_mask_case(rng: random.Random, ties: bool = False):
    """A random batch for eq. 4: shapes, windows taller than the text, lam at 0 and 1, a
    budget counted on N >= L rows (DropMix's L_A >= |V|), and, with `ties`, a saliency map of
    a few distinct values (all zero at times), so that equal windows straddle the budget."""
    B, N, D = rng.randint(1, 4), rng.randint(1, 9), rng.randint(1, 8)
    n = rng.choice([1, 2, 3, rng.randint(1, N), N, N + 3])
    d = min(rng.choice([1, 2, D, rng.randint(1, D)]), D)
    lengths = torch.tensor([rng.randint(0 if ties else 1, N) for _ in range(B)])
    lengths[rng.randrange(B)] = N
    budget_rows = lengths + torch.tensor([rng.choice([0, 0, 1, 5]) for _ in range(B)])
    lam = torch.tensor([rng.choice([0.0, 1e-3, 0.02, rng.random(), 0.98, 0.999, 1.0])
                        for _ in range(B)], dtype=torch.float64)
    g = torch.Generator().manual_seed(rng.randrange(10**9))
    if ties:
        I = torch.randint(0, rng.choice([1, 2, 3]), (B, N, D), generator=g).double()
    else:
        I = torch.rand(B, N, D, dtype=torch.float64, generator=g)
    return I, n, d, lam, lengths, budget_rows


@pytest.mark.parametrize("ties", [False, True], ids=["distinct scores", "tied scores"])
def test_patch_mask_equals_literal_eq4_on_random_cases(ties):
    rng = random.Random(0)
    for _ in range(200):
        I, n, d, lam, lengths, budget_rows = random_mask_case(rng, ties)
        expected = patches.literal_patch_mask(I, n, d, lam, lengths, budget_rows)
        got = patches.patch_mask(I, n, d, lam, lengths, budget_rows)
        assert torch.equal(got, expected), (I.shape, n, d, lam, lengths, budget_rows)
        # eq. 4: never past the budget, and an empty mask only where the first window is too big
        S = got.sum((1, 2))
        assert (S <= patches.unit_budget(lam, budget_rows, I.shape[2])).all()


@needs_cuda
@pytest.mark.parametrize("ties", [False, True], ids=["distinct scores", "tied scores"])
def test_patch_mask_on_cuda_equals_literal_eq4(ties):
    rng = random.Random(0)
    for _ in range(200):
        I, n, d, lam, lengths, budget_rows = random_mask_case(rng, ties)
        expected = patches.literal_patch_mask(I, n, d, lam, lengths, budget_rows)
        got = patches.patch_mask(I.cuda(), n, d, lam.cuda(), lengths.cuda(), budget_rows.cuda())
        assert got.is_cuda and torch.equal(got.cpu(), expected), (I.shape, n, d, lam, lengths)


def test_patch_mask_float32_and_scalar_lam():
    rng = random.Random(1)
    for _ in range(50):
        I, n, d, lam, lengths, _ = random_mask_case(rng)
        I32 = I.float()
        expected = patches.literal_patch_mask(I32, n, d, lam[:1].expand(len(lam)), lengths)
        assert torch.equal(patches.patch_mask(I32, n, d, float(lam[0]), lengths), expected)


def many_mask_cases(rng: random.Random):
    """Random batches for eq. 4 of every kind the batched mask handles apart: ties (a few
    distinct values), all-zero maps and all-zero examples, L = 0, L <= n for every example (a
    batch shorter than G's window) or some, lam 0 and 1, unequal lengths, budgets counted on
    N > L rows, float32 and float64 maps, windows of every width and taller than N."""
    B, N, D = rng.randint(1, 5), rng.randint(1, 10), rng.randint(1, 8)
    n = rng.choice([1, 1, 2, 3, rng.randint(1, N), N, N + 2])
    d = rng.choice([1, 1, 2, D, rng.randint(1, D)])
    d = min(d, D)
    short = rng.random() < 0.3                                   # every L <= n
    lengths = torch.tensor([rng.randint(0, min(N, n) if short else N) for _ in range(B)])
    if rng.random() < 0.3:
        lengths[rng.randrange(B)] = 0
    budget_rows = lengths + torch.tensor([rng.choice([0, 0, 0, 1, 4]) for _ in range(B)])
    lam = torch.tensor([rng.choice([0.0, 1.0, 1e-3, 0.5, rng.random(), rng.random()])
                        for _ in range(B)], dtype=torch.float64)
    g = torch.Generator().manual_seed(rng.randrange(10**9))
    kind = rng.choice(["distinct", "ties", "ties", "zero", "zero example"])
    if kind == "distinct":
        I = torch.rand(B, N, D, generator=g)
    else:
        I = torch.randint(0, 1 if kind == "zero" else rng.choice([2, 3]), (B, N, D),
                          generator=g).float()
        if kind == "zero example":
            I[rng.randrange(B)] = 0.0
    I = I.double() if rng.random() < 0.3 else I
    return I, n, d, lam, lengths, budget_rows


def test_batched_patch_mask_equals_the_literal_loop_on_many_cases():
    rng = random.Random(7)
    for case in range(400):
        I, n, d, lam, lengths, budget_rows = many_mask_cases(rng)
        expected = patches.literal_patch_mask(I, n, d, lam, lengths, budget_rows)
        got = patches.patch_mask(I, n, d, lam, lengths, budget_rows)
        assert torch.equal(got, expected), (case, I, n, d, lam, lengths, budget_rows)
        default = patches.patch_mask(I, n, d, float(lam[0]))    # default lengths and budget
        assert torch.equal(default, patches.literal_patch_mask(I, n, d, float(lam[0])))


def test_patch_mask_makes_no_host_sync(monkeypatch):
    # Every way a CPU tensor hands a value to python raises while patch_mask runs; on a GPU
    # each of them would wait for the device. (38096f3's mask fails here: .tolist() in its
    # loop over the examples and bool() to choose its path.)
    rng = random.Random(3)
    cases = [many_mask_cases(rng) for _ in range(40)]
    cases += [(torch.rand(4, 12, 16), n, d, torch.tensor([0.0, 0.3, 1.0, 0.7]),
               torch.tensor([12, 5, 0, 3]), torch.tensor([12, 6, 0, 3]))
              for n, d in [(1, 1), (12, 1), (4, 16), (4, 1), (20, 1), (2, 3)]]
    expected = [patches.literal_patch_mask(*case) for case in cases]

    def no_sync(*args, **kwargs):
        raise AssertionError("patch_mask passed a tensor's value to python (a host sync)")
    for name in ["item", "tolist", "numpy", "__bool__", "__int__", "__index__", "__float__"]:
        monkeypatch.setattr(torch.Tensor, name, no_sync)
    got = [patches.patch_mask(*case) for case in cases]
    monkeypatch.undo()
    for case, g, e in zip(cases, got, expected):
        assert torch.equal(g, e), case


def test_tied_windows_are_taken_in_reading_order():
    # An all-zero map: every window ties, so eq. 4 takes them in reading order (row, then
    # channel) until the budget: floor(0.5 * 2 * 4) = 4 units are the first row.
    zero = torch.zeros(1, 2, 4)
    assert patches.patch_mask(zero, 1, 1, 0.5).tolist() == [[[True] * 4, [False] * 4]]
    # C: channels 1 and 3 tie for the top; a budget of one channel takes channel 1.
    I = torch.tensor([[[0.1, 0.9, 0.2, 0.9], [0.1, 0.3, 0.2, 0.3]]])     # (1, L=2, D=4)
    M = patches.patch_mask(I, 2, 1, 0.25)                                # budget 2 units
    assert M[0].any(0).tolist() == [False, True, False, False]
    assert torch.equal(M, patches.literal_patch_mask(I, 2, 1, 0.25))
    # two equal top windows of G (2 x 1) that overlap nothing: the budget fits one of them
    I = torch.tensor([[[5.0, 0.0], [5.0, 0.0], [0.0, 5.0], [0.0, 5.0]]])
    M = patches.patch_mask(I, 2, 1, 0.25)                                # budget 2 units
    assert M[0].nonzero().tolist() == [[0, 0], [1, 0]]


def test_unit_variant_takes_single_most_salient_units():
    I = torch.tensor([[[0.1, 0.9], [0.5, 0.2], [0.8, 0.3]]])  # (1, 3, 2)
    M = patches.patch_mask(I, 1, 1, 0.5, torch.tensor([3]))   # budget floor(0.5 * 6) = 3
    assert M.tolist() == [[[False, True], [True, False], [True, False]]]


def test_kth_largest_equals_a_sort():
    # the radix select against torch.sort: keys of 1 to 48 bits, heavy ties, the extremes -1
    # (no key) and 2**bits - 1, rows of -1 only, k = 0 and k >= K, rows short and long
    rng, g = random.Random(0), torch.Generator().manual_seed(0)
    for trial in range(200):
        B, K = rng.randint(1, 5), rng.choice([1, 2, rng.randint(1, 400), rng.randint(1, 5000)])
        bits = rng.choice([1, 5, 16, 17, 31, 48])
        top = (1 << bits) - 1
        spread = rng.choice([top + 1, 4, 1])             # all of [0, 2^bits), or a few values
        base = torch.randint(0, top + 1, (B, 1), generator=g)
        keys = (base + torch.randint(-2, 2, (B, K), generator=g) * spread // 4).clamp(-1, top)
        keys[:, :3] = torch.tensor([top, -1, 0])[:min(3, K)]
        if trial % 10 == 0:
            keys[0] = -1
        k = torch.tensor([rng.choice([0, K - 1, K, K + 2, rng.randrange(K)]) for _ in range(B)])
        k = k.clamp(min=0)
        ordered = keys.sort(dim=1, descending=True).values
        expected = ordered.gather(1, k.clamp(max=K - 1)[:, None]).squeeze(1).masked_fill(k >= K, -1)
        assert torch.equal(patches.kth_largest(keys, k, bits), expected), (trial, keys, k)


# eq. 4's budget floor(lam N D), by hand: lam as float32 holds it (the trainer's Beta draws are
# float32), the exact product lam N D in the comment, and what the float32 product and round()
# would give instead
BUDGETS_BY_HAND = [  # (lam, N, D, floor(lam N D))
    (0.3, 10, 384, 1152),    # 0.300000011920928955078125 * 3840 = 1152.0000457763671875
    (0.7, 10, 384, 2687),    # 0.699999988079071044921875 * 3840 = 2687.9999542236328125: f32 2688
    (0.7, 10, 768, 5375),    # * 7680 = 5375.999908447265625: float32 product 5376, round 5376
    (0.1, 24, 384, 921),     # 0.100000001490116119384765625 * 9216 = 921.6000137329...: round 922
    (0.9, 24, 768, 16588),   # 0.89999997615814208984375 * 18432 = 16588.799560546875: round 16589
]


@pytest.mark.parametrize("D", [384, 768])
def test_budget_is_floor_of_lam_L_D_exactly(D):
    lam, L, expected = zip(*[(l, n, b) for l, n, d, b in BUDGETS_BY_HAND if d == D])
    lam, L = torch.tensor(lam, dtype=torch.float32), torch.tensor(L)
    assert patches.unit_budget(lam, L, D).tolist() == list(expected)
    # lam as the trainer draws it: float32 Beta(alpha, alpha) draws, one per example; the exact
    # floor(lam L D) from the float32 value as a fraction, lam L D never a whole number here
    torch.manual_seed(0)
    lam = mix.sample_lam(0.25, 64).repeat(128)                             # (8192,) float32
    L = torch.arange(1, 129).repeat_interleave(64)                         # L_A = 1..128
    exact = [fractions.Fraction(float(l)) * int(n) * D for l, n in zip(lam, L)]
    expected = torch.tensor([math.floor(x) for x in exact])
    assert lam.dtype == torch.float32 and all(x.denominator > 1 for x in exact)
    budget = patches.unit_budget(lam, L, D)
    assert torch.equal(budget, expected)
    # the test can fail: the float32 product and round() give one unit too many somewhere
    in_float32 = torch.floor(lam * (L * D).float()).long()
    too_many = (in_float32 == expected + 1).nonzero().flatten()
    assert len(too_many) > 0
    assert (torch.tensor([round(x) for x in exact]) == expected + 1).any()
    # and M holds exactly that many units where a U mask can fill it: distinct saliency values
    # (a U window is one unit, so eq. 4 takes the budget's units one by one), L D >= budget
    pick = torch.cat([too_many[:8], torch.randperm(len(L))[:24]])          # 32 examples
    B, N = len(pick), int(L[pick].max())
    I = torch.stack([torch.randperm(N * D).float().view(N, D) for _ in range(B)])   # (B, N, D)
    M = patches.patch_mask(I, 1, 1, lam[pick], L[pick])
    assert torch.equal(M.sum((1, 2)), expected[pick])


# =============================================================================================
# 5. Mixing and eq. 5 (sections 3.1, 3.2, 4; eq. 1, 2, 5; SSMix of 5.2): mix.py
# dropmix's X~ and r against a literal loop, unit by unit; the label weight S / (L_A D) by
# hand; partner, input_dropout, mixup and sample_lam; ssmix against a brute-force span search.
# =============================================================================================

def literal_dropmix(x, I, ordinary, n, d, lam):
    """Eq. 2 and 5 with loops: for each example A and its partner B (the example before it),
    V lists the positions where both hold an ordinary token; eq. 4 runs on V's rows of I_A
    with the budget floor(lam L_A D), L_A = A's ordinary tokens; each unit of M, placed back
    at its V position, takes B's value. Returns X~ and r = S / (L_A D)."""
    B, N, D = x.shape
    mixed, r = x.clone(), torch.zeros(B, dtype=x.dtype)
    for b in range(B):
        p = (b - 1) % B                                   # the partner: the batch rolled by one
        V = [t for t in range(N) if ordinary[b, t] and ordinary[p, t]]
        L_A = int(ordinary[b].sum())
        M = patches.literal_patch_mask(I[b, V][None], n, d, lam[b:b + 1],
                                       torch.tensor([len(V)]), torch.tensor([L_A]))[0]
        for k, t in enumerate(V):
            for q in range(D):
                if M[k, q]:
                    mixed[b, t, q] = x[p, t, q]
        r[b] = int(M.sum()) / (L_A * D) if L_A else 0.0
    return mixed, r


def random_token_layout(rng: random.Random, B: int, N: int, pairs: bool) -> torch.Tensor:
    """(B, N) bool ordinary tokens of [CLS] a [SEP] (b [SEP]) pad, lengths at random; now and
    then an example with no ordinary token at all (an empty V for it and its successor)."""
    ordinary = torch.zeros(B, N, dtype=torch.bool)
    for b in range(B):
        if rng.random() < 0.1:
            continue
        if pairs:
            a_len = rng.randint(1, max(1, (N - 3) // 2))
            b_len = rng.randint(1, N - 3 - a_len)
            ordinary[b, 1:1 + a_len] = True
            ordinary[b, 2 + a_len:2 + a_len + b_len] = True
        else:
            ordinary[b, 1:1 + rng.randint(1, N - 2)] = True
    return ordinary


def check_dropmix_against_literal(cases: int = 60, seed: int = 0, device: str = "cpu") -> None:
    """Random batches, single texts and pairs, every variant: dropmix's X~ (computed on
    `device`) equals the literal loop's unit for unit, r equals it, and r is the share of A's
    units that changed."""
    rng = random.Random(seed)
    for case in range(cases):
        B, N, D = rng.randint(2, 5), rng.randint(5, 14), rng.randint(1, 6)
        ordinary = random_token_layout(rng, B, N, pairs=case % 2 == 1)
        g = torch.Generator().manual_seed(case)
        x = torch.randn(B, N, D, generator=g)      # every unit of B differs from A's
        I = torch.rand(B, N, D, generator=g)
        lam = torch.tensor([rng.choice([0.0, 1.0, rng.random(), rng.random()]) for _ in range(B)])
        variant = rng.choice(["U", "C", "W", "G"])
        n, d = patches.window_shape(variant, N, D, n=rng.randint(1, 4))
        mixed, r = (t.cpu() for t in mix.dropmix(
            x.to(device), I.to(device), ordinary.to(device), n, d, lam.to(device)))
        expected, expected_r = literal_dropmix(x, I, ordinary, n, d, lam)
        assert torch.equal(mixed, expected), (case, variant)
        torch.testing.assert_close(r, expected_r)
        L_A = ordinary.sum(1)
        changed = ((mixed != x) & ordinary[:, :, None]).sum((1, 2))      # A's units now B's
        assert not ((mixed != x) & ~ordinary[:, :, None]).any()
        torch.testing.assert_close(r, changed / (L_A * D).clamp(min=1))


def test_dropmix_equals_the_literal_loop_unit_for_unit():
    check_dropmix_against_literal()


@needs_cuda
def test_dropmix_on_cuda_equals_the_literal_loop_unit_for_unit():
    check_dropmix_against_literal(device="cuda")


def test_the_literal_check_catches_a_wrong_place_and_a_missing_mix(monkeypatch):
    # V's rows scattered back in reverse order: the right count at the wrong units.
    def reversed_region_mask(saliency, region, n, d, lam, budget_rows=None):
        M = original(saliency, region, n, d, lam, budget_rows)
        out = torch.zeros_like(M)
        for b in range(M.shape[0]):
            rows = region[b].nonzero().flatten()
            out[b, rows] = M[b, rows.flip(0)]
        return out
    original = mix.region_mask
    monkeypatch.setattr(mix, "region_mask", reversed_region_mask)
    # caught on X~ itself, unit for unit: the failed assertion is the one that names the case
    x_differs = r"^\(\d+, '[UCWG]'\)\nassert False"
    with pytest.raises(AssertionError, match=x_differs):
        check_dropmix_against_literal()
    # A DropMix that mixes nothing.
    monkeypatch.setattr(mix, "region_mask", lambda saliency, *args, **kwargs:
                        torch.zeros_like(saliency, dtype=torch.bool))
    with pytest.raises(AssertionError, match=x_differs):
        check_dropmix_against_literal()


def test_label_weight_counts_A_not_the_overlap():
    # A holds 20 ordinary tokens, its partner 2: at most 2 of A's rows can take B's values,
    # and with lam = 1 they do, so r = 2 D / (20 D) = 0.1 (|V| = 2 would claim 1.0).
    N, D = 24, 4
    ordinary = torch.zeros(2, N, dtype=torch.bool)
    ordinary[0, 1:3] = True                    # the partner of example 1: 2 tokens
    ordinary[1, 1:21] = True                   # A: 20 tokens
    x = torch.randn(2, N, D, generator=torch.Generator().manual_seed(0))
    mixed, r = mix.dropmix(x, torch.rand(2, N, D), ordinary, 1, 1, torch.ones(2))
    assert r[1].item() == pytest.approx(0.1)
    assert torch.equal(mixed[1, 1:3], x[0, 1:3]) and torch.equal(mixed[1, 3:], x[1, 3:])
    # A of 2 tokens beside a partner of 20: the budget counts A's 2 rows only.
    _, r = mix.dropmix(x, torch.rand(2, N, D), ordinary, 1, 1, torch.full((2,), 0.5))
    assert r[0].item() == pytest.approx(0.5)


def test_mixing_identities():
    g = torch.Generator().manual_seed(3)
    B, N, D = 3, 8, 4
    x = torch.randn(B, N, D, generator=g)
    ordinary = torch.zeros(B, N, dtype=torch.bool)
    ordinary[:, 1:5] = True
    mixed, r = mix.dropmix(x, torch.rand(B, N, D, generator=g), ordinary, 2, 1, torch.zeros(B))
    assert torch.equal(mixed, x) and (r == 0).all()            # lam = 0 gives X_A
    mixed, r = mix.dropmix(x, torch.rand(B, N, D, generator=g), ordinary, 2, 1, torch.ones(B))
    assert torch.equal(mixed[ordinary], mix.partner(x)[ordinary])  # lam = 1 gives X_B on V
    assert torch.equal(mixed[~ordinary], x[~ordinary])
    assert torch.equal(r, torch.ones(B))


def test_mixing_region_of_sentence_pairs_is_not_contiguous():
    # A: [CLS] a a [SEP] b [SEP] ; B: [CLS] a [SEP] b b [SEP]
    special = torch.tensor([[1, 0, 0, 1, 0, 1], [1, 0, 1, 0, 0, 1]])
    batch = {"attention_mask": torch.ones(2, 6, dtype=torch.long), "special_tokens_mask": special}
    ordinary = mix.ordinary_tokens(batch)
    region = mix.mixing_region(ordinary)
    assert region[0].tolist() == [False, True, False, False, True, False]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, 3, generator=g)
    mixed, r = mix.dropmix(x, torch.rand(2, 6, 3, generator=g), ordinary, 1, 1, torch.ones(2))
    assert torch.equal(mixed[region], mix.partner(x)[region])
    assert torch.equal(mixed[~region], x[~region])
    torch.testing.assert_close(r, torch.tensor([2 / 3, 2 / 3]))  # |V| = 2 of A's 3 tokens


def test_region_mask_is_the_mask_dropmix_applies():
    # region_mask must give exactly the units mix.dropmix replaces. dropmix does not
    # return M, so recover it: example b is filled with b, its partner with b - 1.
    torch.manual_seed(0)
    B, N, D = 3, 9, 8
    I = torch.rand(B, N, D)
    ordinary = torch.rand(B, N) > 0.3
    x = torch.arange(B, dtype=torch.float32)[:, None, None].expand(B, N, D).clone()
    lam = torch.tensor([0.3, 0.5, 0.2])
    mixed, _ = mix.dropmix(x, I, ordinary, 2, 1, lam)
    M = mix.region_mask(I, mix.mixing_region(ordinary), 2, 1, lam, budget_rows=ordinary.sum(1))
    assert torch.equal(M, mixed != x)


def test_partner_is_the_batch_rolled_by_one():
    # X_B[b] = X_A[b - 1]: the first example's partner is the last, and none meets itself
    assert mix.partner(torch.tensor([10, 11, 12, 13])).tolist() == [13, 10, 11, 12]
    assert mix.partner(torch.arange(6).view(3, 2)).tolist() == [[4, 5], [0, 1], [2, 3]]


def test_input_dropout_zeroes_units_and_scales_the_kept_ones():
    # Section 3.1, X~ = M * X with M ~ Bernoulli(1 - p), in the inverted form BERT's own
    # dropout layers use: a kept unit reads x / (1 - p), so a map of ones holds 0 and 4/3 only
    # at p = 1/4, a quarter of them 0; p = 0 leaves X as it is
    torch.manual_seed(0)
    x = torch.ones(64, 128, 32)
    dropped = mix.input_dropout(x, 0.25)
    values = dropped.unique()
    assert dropped.shape == x.shape and values[0] == 0 and len(values) == 2
    assert values[1].item() == pytest.approx(4 / 3)
    assert (dropped == 0).float().mean().item() == pytest.approx(0.25, abs=0.01)
    assert torch.equal(mix.input_dropout(x, 0.0), x)


def test_sample_lam_draws_beta_alpha_alpha_per_example():
    # Beta(alpha, alpha) has mean 1/2 and variance 1 / (4 (2 alpha + 1)): 1/6 at alpha = 1/4
    # (most draws near 0 or 1), 1/12 at alpha = 1 (the uniform distribution)
    for alpha, variance in ((0.25, 1 / 6), (1.0, 1 / 12)):
        torch.manual_seed(0)
        lam = mix.sample_lam(alpha, 100_000)
        assert lam.shape == (100_000,) and 0 <= lam.min() and lam.max() <= 1
        assert lam.mean().item() == pytest.approx(0.5, abs=0.01)
        assert lam.var().item() == pytest.approx(variance, rel=0.03)
    # one draw per example from torch's global generator: a seed fixes them
    torch.manual_seed(1)
    first = mix.sample_lam(0.1, 8)
    torch.manual_seed(1)
    assert torch.equal(mix.sample_lam(0.1, 8), first)
    torch.manual_seed(2)
    assert not torch.equal(mix.sample_lam(0.1, 8), first)


def test_mixup_eq1_and_attention_union():
    x = torch.arange(24.0).view(3, 2, 4)
    attention = torch.tensor([[1, 0], [1, 1], [1, 0]])
    lam = torch.tensor([0.25, 0.5, 1.0])
    mixed, union = mix.mixup(x, attention, lam)
    torch.testing.assert_close(mixed[1], 0.5 * x[1] + 0.5 * x[0])
    torch.testing.assert_close(mixed[2], x[1])
    assert union.tolist() == [[1, 0], [1, 1], [1, 1]]


# ---------------------------------------------------------------------------------------------
# SSMix (Yoon et al., 2021), the baseline of section 5.2: mix.ssmix
# ---------------------------------------------------------------------------------------------

def brute_span(token_saliency, positions, span, lowest):
    starts = [positions[i] for i in range(len(positions) - span + 1)]
    sums = {s: sum(token_saliency[s + t] for t in range(span)) for s in starts}
    return (min if lowest else max)(sums, key=sums.get)


def test_ssmix_replaces_least_salient_span_with_partners_most_salient():
    rng = random.Random(7)
    for trial in range(30):
        B, N, D = 4, 14, 3
        lengths = [rng.randint(1, N - 2) for _ in range(B)]
        ids = torch.randint(100, 200, (B, N), generator=torch.Generator().manual_seed(trial))
        special = torch.ones(B, N, dtype=torch.bool)
        attention = torch.zeros(B, N, dtype=torch.long)
        for b, length in enumerate(lengths):
            special[b, 1:length + 1] = False
            attention[b, :length + 2] = 1
        ordinary = ~special & attention.bool()
        segments = mix.token_segments(ordinary, special & attention.bool())
        I = torch.rand(B, N, D, dtype=torch.float64, generator=torch.Generator().manual_seed(trial))
        share = rng.choice([0.1, 0.3, 0.5])
        mixed, r, too_short = mix.ssmix(ids, I, segments, share)
        token_saliency = I.norm(dim=2).tolist()
        for b in range(B):
            a, p = b, (b - 1) % B
            span = max(1, int(share * lengths[a]))
            if lengths[p] < span:
                assert too_short[b] and r[b] == 0 and torch.equal(mixed[b], ids[b])
                continue
            start_a = brute_span(token_saliency[a], list(range(1, lengths[a] + 1)), span, True)
            start_b = brute_span(token_saliency[p], list(range(1, lengths[p] + 1)), span, False)
            expected = ids[b].clone()
            expected[start_a:start_a + span] = ids[p, start_b:start_b + span]
            assert torch.equal(mixed[b], expected)
            assert r[b].item() == pytest.approx(span / lengths[a])
            assert not too_short[b]


def test_ssmix_pairs_mix_segment_by_segment():
    # [CLS] a a a a [SEP] b b [SEP] pad  in both examples, different ids
    special = torch.tensor([[1, 0, 0, 0, 0, 1, 0, 0, 1, 1]] * 2, dtype=torch.bool)
    attention = torch.tensor([[1] * 9 + [0]] * 2)
    ids = torch.tensor([[101, 1, 2, 3, 4, 102, 5, 6, 102, 0],
                        [101, 11, 12, 13, 14, 102, 15, 16, 102, 0]])
    segments = mix.token_segments(~special & attention.bool(), special & attention.bool())
    assert segments[0].tolist() == [-1, 0, 0, 0, 0, -1, 1, 1, -1, -1]
    I = torch.rand(2, 10, 4, generator=torch.Generator().manual_seed(0))
    mixed, r, too_short = mix.ssmix(ids, I, segments, share=0.5)
    # [SEP], [CLS] and padding stay where they were; 2 of 4 and 1 of 2 tokens replaced
    assert torch.equal(mixed[:, [0, 5, 8, 9]], ids[:, [0, 5, 8, 9]])
    torch.testing.assert_close(r, torch.full((2,), 3 / 6))
    assert set(mixed[0, 1:5].tolist()) & {11, 12, 13, 14} and set(mixed[0, 6:8].tolist()) & {15, 16}
    assert not set(mixed[0, 6:8].tolist()) & {11, 12, 13, 14}  # segment b takes from b only
    assert not too_short.any()


# =============================================================================================
# 6. The loss (section 4.3, eq. 6) and the training step (sections 4, 4.3): mix.py, train.py
# mixed_cross_entropy against the soft-label cross-entropy and hand-worked numbers;
# train.train_step's gradient against (L_clean + L_mixed) / 2 written out, and the clipping
# of the whole step; last, the three method files copied alone.
# =============================================================================================

def test_mixed_cross_entropy_is_soft_label_cross_entropy():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(6, 5, generator=g)
    y_a, y_b = torch.randint(0, 5, (6,), generator=g), torch.randint(0, 5, (6,), generator=g)
    r = torch.rand(6, generator=g)
    soft = (1 - r)[:, None] * F.one_hot(y_a, 5) + r[:, None] * F.one_hot(y_b, 5)
    expected = -(soft * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(mix.mixed_cross_entropy(logits, y_a, y_b, r), expected)
    # by hand: logits (0, ln 3) give p = (1/4, 3/4), so with Y_A = 0, Y_B = 1 and r = 1/4 the
    # loss is 3/4 ln 4 + 1/4 ln 4/3 = 1.1116413; logits (ln 3, 0) with Y_A = Y_B = 0 give
    # ln 4/3 = 0.2876821 whatever r is; eq. 6 is their mean
    two = torch.tensor([[0.0, math.log(3)], [math.log(3), 0.0]])
    loss = mix.mixed_cross_entropy(two, torch.tensor([0, 0]), torch.tensor([1, 0]),
                                   torch.tensor([0.25, 0.7]))
    assert loss.item() == pytest.approx((1.1116413 + 0.2876821) / 2, abs=1e-6)


def literal_step_gradients(model, batch, lam, n):
    """grad of (L_clean + L_mixed) / 2 for DropMix-G with window n x 1, written out: the clean
    loss, I = |dL_clean/dX|, the mixed input of eq. 2 from that I, eq. 6's loss on it."""
    params = [p for p in model.parameters()]
    x = model.get_input_embeddings()(batch["input_ids"])
    inputs = saliency.model_inputs(batch)
    loss_clean = F.cross_entropy(model(inputs_embeds=x, **inputs).logits, batch["labels"])
    (I,) = torch.autograd.grad(loss_clean, x, retain_graph=True)
    mixed, r = mix.dropmix(x, I.abs(), mix.ordinary_tokens(batch), n, 1, lam)
    logits = model(inputs_embeds=mixed, **inputs).logits
    y = batch["labels"]
    ce_a = F.cross_entropy(logits, y, reduction="none")
    ce_b = F.cross_entropy(logits, y.roll(1), reduction="none")
    loss_mixed = ((1 - r) * ce_a + r * ce_b).mean()
    grads = torch.autograd.grad((loss_clean + loss_mixed) / 2, params, allow_unused=True)
    return {name: g for (name, _), g in zip(model.named_parameters(), grads) if g is not None}


def step_setup(tiny_classifier, monkeypatch, lam):
    """The tiny classifier without dropout, a batch, and a G config whose lam and n are fixed."""
    model, tokenizer = tiny_classifier
    model.eval()  # no dropout: the step and the literal version see the same function
    batch = tiny_batch(tokenizer, ["what is the city ?", "who was the first president of the state",
                                   "how many", "where is the river"], [0, 1, 2, 1])
    monkeypatch.setattr(train, "sample_lam", lambda alpha, size, device: lam.clone())
    (config,) = train.configs_from_args(train.build_parser().parse_args(
        ["--task", "trec", "--variant", "G", "--n-range", "2"]))
    return model, batch, config


def test_a_mixing_step_gives_the_gradient_of_half_the_clean_plus_half_the_mixed_loss(
        tiny_classifier, monkeypatch):
    lam = torch.tensor([0.3, 0.8, 0.5, 0.6])
    model, batch, config = step_setup(tiny_classifier, monkeypatch, lam)
    model.zero_grad(set_to_none=True)
    stats = train.train_step(config, model, batch)
    expected = literal_step_gradients(model, batch, lam, 2)
    assert expected.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, p in model.named_parameters():
        if name in expected:
            torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-7, msg=name)
    assert stats["mixed_examples"] == 4 and 0 < stats["label_weight"] < 1
    model.zero_grad(set_to_none=True)
    model.train()


def test_clipping_takes_the_whole_step_after_both_backward_passes(tiny_classifier, monkeypatch):
    # max_grad_norm far below the step's gradient norm: clip(g_clean / 2 + g_mixed / 2) is
    # what the optimizer must see; clipping between the two backward passes gives another g.
    import dataclasses
    lam = torch.tensor([0.3, 0.8, 0.5, 0.6])
    model, batch, config = step_setup(tiny_classifier, monkeypatch, lam)
    config = dataclasses.replace(config, max_grad_norm=1e-3)
    expected = literal_step_gradients(model, batch, lam, 2)
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in expected.values()]))
    assert norm > 100 * config.max_grad_norm
    recorder = GradientRecorder(model)
    train.train_epoch(config, model, recorder, NoSchedule(), [batch], 0)
    (seen,) = recorder.grads  # one batch: one optimizer step
    assert seen.keys() == expected.keys()
    for name, g in expected.items():
        torch.testing.assert_close(seen[name], g * config.max_grad_norm / norm, rtol=1e-4,
                                   atol=1e-9, msg=name)
    model.train()


@pytest.mark.parametrize("module, names", [
    ("saliency", ("clean_step", "saliency_map")),
    ("patches", ("patch_mask", "literal_patch_mask", "window_shape")),
    ("mix", ("mixup", "ssmix", "mixed_cross_entropy", "dropmix")),
])
def test_method_files_copy_alone_into_an_empty_folder(module, names, tmp_path):
    # copied alone, with matplotlib hidden: the file imports with torch only, and nothing of
    # the project (nor transformers or matplotlib) was imported
    shutil.copy(HERE / f"{module}.py", tmp_path / f"{module}.py")
    code = (f"import json, sys; sys.modules['matplotlib'] = None; import {module}; "
            f"print(json.dumps({{'file': {module}.__file__, "
            f"'callable': [n for n in {names!r} if callable(getattr({module}, n))], "
            "'loaded': [m for m in ('patches', 'mix', 'saliency', 'data', 'train', 'transformers') "
            f"if m in sys.modules and m != {module!r}]}}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout)
    assert Path(seen["file"]).resolve() == (tmp_path / f"{module}.py").resolve()  # the copy
    assert seen["callable"] == list(names) and seen["loaded"] == []


# =============================================================================================
# 7. Data (section 5.1): data.py
# The loaders on the real files in ../shared/data (skipped, with the reason, where absent) and
# on files written here; subsampling; downloads from file mirrors (no network); encode and
# collate; the default encoder's pinned checksum.
# =============================================================================================


# ---------------------------------------------------------------------------------------------
# The real files: splits, class counts, known examples, encodings
# ---------------------------------------------------------------------------------------------

def label_counts(examples):
    counts = collections.Counter(example.label for example in examples)
    return [counts[label] for label in range(max(counts) + 1)]


# task -> (train, select or None, report, train class counts, report class counts)
EXPECTED_SPLITS = {
    "trec": (5452, None, 500, [1162, 1250, 86, 1223, 835, 896], [138, 94, 9, 65, 81, 113]),
    "sst1": (8544, 1101, 2210, [1092, 2218, 1624, 2322, 1288], [279, 633, 389, 510, 399]),
    "sst2-sent": (6920, 872, 1821, [3310, 3610], [912, 909]),
    "sst2": (67349, None, 872, [29780, 37569], [428, 444]),
    "mrpc": (3668, None, 408, [1194, 2474], [129, 279]),
    "rte": (2490, None, 277, [1249, 1241], [146, 131]),
}

# task -> (split list, index, expected example)
KNOWN_EXAMPLES = {
    "trec": ("train", 0, data.Example(
        "How did serfdom develop in and then leave Russia ?", None, 0)),
    "sst1": ("select", 0, data.Example(
        "in his first stab at the form , jacquot takes a slightly anarchic approach that works "
        "only sporadically .", None, 2)),
    "sst2-sent": ("select", 0, data.Example("one long string of cliches .", None, 0)),
    "sst2": ("train", 0, data.Example("hide new secretions from the parental units ", None, 0)),
    "mrpc": ("report", 0, data.Example(
        "He said the foodservice pie business doesn 't fit the company 's long-term growth "
        "strategy .",
        '" The foodservice pie business does not fit our long-term growth strategy .', 1)),
    "rte": ("train", 0, data.Example(
        "No Weapons of Mass Destruction Found in Iraq Yet.",
        "Weapons of Mass Destruction Found in Iraq.", 1)),
}


@needs_data
@pytest.mark.parametrize("task", sorted(EXPECTED_SPLITS))
def test_split_tasks_match_readme(task):
    n_train, n_select, n_report, train_counts, report_counts = EXPECTED_SPLITS[task]
    loaded, spec = data.load_task(task, DATA), data.TASKS[task]
    assert spec.select == ("dev" if n_select else None)
    assert spec.report == ("test" if task in ("trec", "sst1", "sst2-sent") else "dev")
    assert set(loaded) == {"train", spec.report} | ({spec.select} if n_select else set())
    assert len(loaded["train"]) == n_train
    assert (len(loaded[spec.select]) if n_select else None) == n_select
    assert len(loaded[spec.report]) == n_report
    assert label_counts(loaded["train"]) == train_counts
    assert label_counts(loaded[spec.report]) == report_counts
    assert (len(spec.columns) == 3) == (task in ("mrpc", "rte"))  # the pair tasks
    split, index, expected = KNOWN_EXAMPLES[task]
    assert loaded[{"train": "train", "select": spec.select, "report": spec.report}[split]][index] == expected


@needs_data
def test_trec_cp1252_byte_and_label_names():
    train = data.read_split(data.TASKS["trec"], "train", DATA)
    assert "sister\u00f0city" in train[65].text_a  # file line 66, byte 0xF0
    assert data.TASKS["trec"].labels == ("DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM")


@needs_data
def test_mr_keeps_10662_lines_despite_nel_bytes():
    everything = data.read_split(data.TASKS["mr"], "all", DATA)
    assert len(everything) == 10662
    assert label_counts(everything) == [5331, 5331]
    assert everything[0] == data.Example("simplistic , silly and tedious . ", None, 0)
    assert any("\u2026" in example.text_a for example in everything)  # 0x85 -> "…"
    assert not any("\x85" in example.text_a for example in everything)


@needs_data
def test_mrpc_text_has_no_bom():
    train = data.read_split(data.TASKS["mrpc"], "train", DATA)
    assert train[0].text_a.startswith("Amrozi accused his brother")
    assert not any("\ufeff" in example.text_a for example in train[:5])


@needs_data
def test_qnli_dev():
    dev = data.read_split(data.TASKS["qnli"], "dev", DATA)
    assert len(dev) == 5463
    assert label_counts(dev) == [2702, 2761]
    assert dev[0].text_a == "What came into force after the new constitution was herald?"
    assert dev[0].label == 0


@needs_data
@pytest.mark.parametrize(
    "task, total, counts, blank_lines",
    [
        ("mr", 10662, [5331, 5331], []),
        ("cr", 3771, [1366, 2405], [769, 1368, 3691, 3775]),
        ("subj", 10000, [5000, 5000], []),
        ("mpqa", 10603, [7292, 3311], [6415, 7294, 10606]),
    ],
)
def test_holdout_tasks(task, total, counts, blank_lines, capsys):
    loaded = data.load_task(task, DATA)
    warnings = capsys.readouterr().err.splitlines()
    relative_path = data.TASKS[task].files["all"]
    assert warnings == [
        f"warning: {relative_path} line {line}: blank example dropped" for line in blank_lines
    ]
    assert set(loaded) == {"train", "test"} and data.TASKS[task].select is None
    assert len(loaded["train"]) + len(loaded["test"]) == total
    # 10% of the examples, rounded up as sklearn does: 1066.2, 377.1, 1000 and 1060.3
    assert len(loaded["test"]) == {"mr": 1067, "cr": 378, "subj": 1000, "mpqa": 1061}[task]
    totals = [a + b for a, b in zip(label_counts(loaded["train"]), label_counts(loaded["test"]))]
    assert totals == counts
    for label, count in enumerate(counts):  # stratified: each class split 90/10 (+-1)
        assert abs(label_counts(loaded["test"])[label] - count / 10) <= 1


@needs_data
def test_mr_split_is_9595_1067_and_fixed():
    first = data.load_task("mr", DATA)
    second = data.load_task("mr", DATA)
    assert (len(first["train"]), len(first["test"])) == (9595, 1067)
    assert first == second


def test_holdout_split_fixed_disjoint_stratified(tmp_path):
    labels = [0] * 700 + [1] * 250 + [2] * 50
    write(tmp_path / "x/x.all", "".join(f"{label} text {i}\n" for i, label in enumerate(labels)))
    task = data.Task(("a", "b", "c"), {"all": "x/x.all"}, columns=("text", "label"),
                     header=("label", "text"), format="lines")
    a, b = data.load_splits(task, tmp_path), data.load_splits(task, tmp_path)
    assert a == b and set(a) == {"train", "test"}
    assert sorted(e.text_a for e in a["train"] + a["test"]) == sorted(f"text {i}" for i in range(1000))
    assert collections.Counter(e.label for e in a["test"]) == {0: 70, 1: 25, 2: 5}


# ---------------------------------------------------------------------------------------------
# Subsampling (the sparse-data settings of section 5.5)
# ---------------------------------------------------------------------------------------------

def make_examples(counts):
    return [
        data.Example(f"text {label} {i}", None, label)
        for label, count in enumerate(counts)
        for i in range(count)
    ]


@needs_data
def test_subsample_trec_ten_percent():
    train = data.load_task("trec", DATA)["train"]
    small = data.subsample(train, 0.1)
    assert len(small) == 545
    assert small == data.subsample(train, 0.1)  # deterministic
    for full, part in zip(label_counts(train), label_counts(small)):
        assert abs(part - full / 10) <= 1  # stratified


def test_subsample_stratified_deterministic_and_full():
    examples = make_examples([600, 300, 100])
    half = data.subsample(examples, 0.5)
    assert label_counts(half) == [300, 150, 50]
    assert half == data.subsample(examples, 0.5)
    assert data.subsample(examples, 1.0) == examples


def test_subsample_too_small_is_data_error():
    with pytest.raises(data.DataError, match="cannot keep all 3 classes"):
        data.subsample(make_examples([10, 10, 10]), 0.05)  # 1 example, 3 classes


# ---------------------------------------------------------------------------------------------
# File formats, and a malformed file's one sentence
# ---------------------------------------------------------------------------------------------

MNLI_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
    "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label"
)
MNLI_DEV_HEADER = MNLI_HEADER.replace("label1\t", "label1\tlabel2\tlabel3\tlabel4\tlabel5\t")


def mnli_row(index, premise, hypothesis, labels):
    parses = ["( x )"] * 4
    fields = [str(index), "1", f"{index}e", "fiction", *parses, premise, hypothesis, *labels]
    return "\t".join(fields)


def write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)


def test_mnli_official_format(tmp_path):
    write(tmp_path / "glue/mnli/train.tsv", "\n".join([
        MNLI_HEADER,
        mnli_row(0, 'He said "yes".', "He agreed.", ["entailment", "entailment"]),
        mnli_row(1, "A cat.", "A dog.", ["contradiction", "contradiction"]),
        mnli_row(2, "It rains.", "It is May.", ["neutral", "neutral"]),
    ]) + "\n")
    write(tmp_path / "glue/mnli/dev_matched.tsv", "\n".join([
        MNLI_DEV_HEADER,
        # annotators disagree in label1..label5; only the last column counts
        mnli_row(0, "P.", "H.",
                 ["neutral", "entailment", "entailment", "neutral", "neutral", "neutral"]),
    ]) + "\n")
    loaded = data.load_task("mnli", tmp_path)
    assert data.TASKS["mnli"].labels == ("entailment", "neutral", "contradiction")
    assert loaded["train"] == [
        data.Example('He said "yes".', "He agreed.", 0),
        data.Example("A cat.", "A dog.", 2),
        data.Example("It rains.", "It is May.", 1),
    ]
    assert loaded["dev"] == [data.Example("P.", "H.", 1)] and set(loaded) == {"train", "dev"}


def test_qqp_official_format(tmp_path):
    header = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"
    write(tmp_path / "glue/qqp/train.tsv",
          f"{header}\n1\t1\t2\tHow do I cook rice?\tHow to cook rice?\t1\n"
          f"2\t3\t4\tWhat is AI?\tWho is Bob?\t0\n")
    write(tmp_path / "glue/qqp/dev.tsv", f"{header}\n3\t5\t6\tA?\tB?\t0\n")
    loaded = data.load_task("qqp", tmp_path)
    assert loaded["train"][0] == data.Example("How do I cook rice?", "How to cook rice?", 1)
    assert label_counts(loaded["train"]) == [1, 1] and len(loaded["dev"]) == 1


def test_qnli_train_official_format(tmp_path):
    header = "index\tquestion\tsentence\tlabel"
    write(tmp_path / "glue/qnli/train.tsv", f"{header}\n0\tWho?\tHe did.\tnot_entailment\n")
    train = data.read_split(data.TASKS["qnli"], "train", tmp_path)
    assert train == [data.Example("Who?", "He did.", 1)]


@pytest.mark.parametrize(
    "content, problem",
    [
        ("0 fine\nx bad label\n", "line 2: label 'x' is not one of 0, 1, 2, 3, 4, 5"),
        ("0 fine\n7 out of range\n", "line 2: label '7' is not one of 0, 1, 2, 3, 4, 5"),
        ("0 fine\n1\n", "line 2: expected 2 fields, found 1"),  # no space after the label
        ("0 fine\n\n1 after an empty line\n", "line 2: expected 2 fields, found 1"),
    ],
)
def test_malformed_label_text_line(tmp_path, content, problem):
    write(tmp_path / "trec/TREC.train.all", content)
    with pytest.raises(data.DataError, match=f"trec/TREC.train.all {problem}"):
        data.read_split(data.TASKS["trec"], "train", tmp_path)


def test_malformed_tsv_lines(tmp_path):
    write(tmp_path / "glue/rte/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\n")
    with pytest.raises(data.DataError, match="glue/rte/train.tsv line 2: expected 4 fields, found 3"):
        data.read_split(data.TASKS["rte"], "train", tmp_path)
    write(tmp_path / "glue/rte/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tyes\n")
    with pytest.raises(data.DataError, match="line 2: label 'yes' is not one of entailment"):
        data.read_split(data.TASKS["rte"], "train", tmp_path)
    write(tmp_path / "glue/rte/train.tsv", "idx\ts1\ts2\tlabel\n")
    with pytest.raises(data.DataError, match="line 1: has no column 'sentence1'"):
        data.read_split(data.TASKS["rte"], "train", tmp_path)


def test_own_files_csv_tsv_and_jsonl_read_alike(tmp_path, capsys):
    # a quoted comma, a quoted field over two lines, an empty line (no example, as in pandas),
    # a blank text (dropped, said with its line), labels sorted as strings: "10" before "9"
    write(tmp_path / "a.csv", 'text,label\n"fine, really",9\n"two\nlines",10\n\n  ,9\nok,10\n')
    task = data.own_task((str(tmp_path / "a.csv"), str(tmp_path / "a.csv"), None), ("text", "label"))
    assert task.labels == ("10", "9") and task.report == "test" and task.select is None
    want = [data.Example("fine, really", None, 1), data.Example("two\nlines", None, 0),
            data.Example("ok", None, 0)]
    assert data.load_splits(task)["train"] == want
    assert "a.csv line 6: blank example dropped" in capsys.readouterr().err  # after 2 + 2 + 1
    write(tmp_path / "a.tsv", 'q\tlabel\tp\n"fine, really"\t9\tx\n"two\nlines"\t10\ty\nok\t10\tz\n')
    write(tmp_path / "a.jsonl", '{"q": "fine, really", "label": 9, "p": "x"}\n'
                                '{"q": "two\\nlines", "label": "10", "p": "y"}\n{"q": "ok", "label": 10, "p": "z"}\n')
    for name in ("a.tsv", "a.jsonl"):  # a pair, and the label's column named otherwise
        task = data.own_task((str(tmp_path / name), None, str(tmp_path / name)), ("q", "p", "label"))
        assert task.labels == ("10", "9") and task.files["all"] and task.select == "dev"
        assert data.read_split(task, "dev", Path()) == [
            data.Example("fine, really", "x", 1), data.Example("two\nlines", "y", 0),
            data.Example("ok", "z", 0)]


def test_a_line_file_keeps_its_text_as_written_and_needs_no_final_newline(tmp_path):
    write(tmp_path / "trec/TREC.test.all", "0 They drank  the pub. \n5 Ok.")
    test = data.read_split(data.TASKS["trec"], "test", tmp_path)
    assert test == [data.Example("They drank  the pub. ", None, 0), data.Example("Ok.", None, 5)]


def test_wrong_encoding_names_file_and_line(tmp_path):
    write(tmp_path / "trec/TREC.train.all", b"0 fine\n1 also fine\n2 bad \x81 byte\n")
    expected = r"trec/TREC.train.all line 3: byte 0x81 is not valid cp1252"
    with pytest.raises(data.DataError, match=expected):
        data.read_split(data.TASKS["trec"], "train", tmp_path)
    write(tmp_path / "glue/mrpc/train.tsv",
          b"\xef\xbb\xbfQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\ta\t\xe9\n")
    expected = r"glue/mrpc/train.tsv line 2: byte 0xE9 is not valid utf-8; save the file as UTF-8"
    with pytest.raises(data.DataError, match=expected):
        data.read_split(data.TASKS["mrpc"], "train", tmp_path)


def test_blank_examples_dropped_with_warning(tmp_path, capsys):
    write(tmp_path / "cr/custrev.all", "0 good text\n1 \n1 more\n0  \n")
    examples = data.read_split(data.TASKS["cr"], "all", tmp_path)
    assert examples == [data.Example("good text", None, 0), data.Example("more", None, 1)]
    assert capsys.readouterr().err.splitlines() == [
        "warning: cr/custrev.all line 2: blank example dropped",
        "warning: cr/custrev.all line 4: blank example dropped",
    ]
    write(tmp_path / "glue/rte/train.tsv",
          "index\tsentence1\tsentence2\tlabel\n0\ta\t\tentailment\n")
    with pytest.raises(data.DataError, match="^glue/rte/train.tsv holds no example with a text.$"):
        data.read_split(data.TASKS["rte"], "train", tmp_path)
    assert "glue/rte/train.tsv line 2: blank example dropped" in capsys.readouterr().err


def test_the_known_tasks():
    # (the command line offers exactly these: argparse's choices)
    assert set(data.TASKS) == {
        "trec", "sst1", "sst2", "sst2-sent", "mr", "cr", "subj", "mpqa",
        "mrpc", "rte", "qnli", "mnli", "qqp",
    }


def test_resolve_data_dir(monkeypatch):
    monkeypatch.setenv("DROPMIX_DATA", "/from/env")
    assert data.resolve_data_dir("/from/cli") == Path("/from/cli")
    assert data.resolve_data_dir(None) == Path("/from/env")
    monkeypatch.delenv("DROPMIX_DATA")
    assert data.resolve_data_dir(None) == Path.home() / ".cache" / "dropmix"


# ---------------------------------------------------------------------------------------------
# Downloads, from file mirrors: pinned checksums, nothing half-written left behind
# ---------------------------------------------------------------------------------------------

def test_no_network_names_files_and_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(data.DataError) as error:
        data.load_task("trec", tmp_path / "empty")
    message = str(error.value)
    assert "trec/TREC.train.all" in message and "trec/TREC.test.all" in message
    assert str(tmp_path / "empty") in message and "$DROPMIX_DATA" in message
    assert message.count(". ") == 0  # one sentence


def mirror(monkeypatch, url_key, path):
    monkeypatch.setitem(data.SOURCE_URLS, url_key, path.as_uri())


@needs_data
def test_download_from_file_mirror(tmp_path, monkeypatch):
    for name in ("TREC.train.all", "TREC.test.all"):
        shutil.copy(DATA / "trec" / name, tmp_path / name)
        mirror(monkeypatch, name, tmp_path / name)
    data_dir = tmp_path / "data"
    loaded = data.load_task("trec", data_dir)
    assert len(loaded["train"]) == 5452 and len(loaded["test"]) == 500
    downloaded = (data_dir / "trec/TREC.test.all").read_bytes()
    assert downloaded == (DATA / "trec/TREC.test.all").read_bytes()
    assert sorted(p.name for p in (data_dir / "trec").iterdir()) == [
        "TREC.test.all", "TREC.train.all"]


@needs_data
def test_corrupt_mirror_refused_and_not_left_behind(tmp_path, monkeypatch):
    good, bad = tmp_path / "TREC.test.all", tmp_path / "TREC.train.all"
    shutil.copy(DATA / "trec/TREC.test.all", good)
    bad.write_bytes((DATA / "trec/TREC.train.all").read_bytes().replace(b"Russia", b"Prussia", 1))
    mirror(monkeypatch, "TREC.test.all", good)
    mirror(monkeypatch, "TREC.train.all", bad)
    data_dir = tmp_path / "data"
    with pytest.raises(data.DataError, match="TREC.train.all does not match its pinned SHA-256"):
        data.download(data.TASKS["trec"], data_dir)
    assert not (data_dir / "trec/TREC.train.all").exists()
    assert not list((data_dir / "trec").glob("*.tmp"))


@needs_data
def test_an_edited_benchmark_file_is_refused(tmp_path):
    write(tmp_path / "trec/TREC.test.all", b"0 not the real file\n")
    shutil.copy(DATA / "trec/TREC.train.all", tmp_path / "trec/TREC.train.all")
    with pytest.raises(data.DataError, match=r"TREC.test.all is not the published file \(its "
                                             r"SHA-256 differs\); restore it, or train on your "
                                             r"copy with --train-file.$"):
        data.load_task("trec", tmp_path)


@needs_data
def test_download_glue_archive_from_mirror(tmp_path, monkeypatch):
    archive = tmp_path / "RTE.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for name in ("train.tsv", "dev.tsv", "test.tsv"):
            zipped.write(DATA / "glue/rte" / name, f"RTE/{name}")
    mirror(monkeypatch, "RTE.zip", archive)
    data_dir = tmp_path / "data"
    loaded = data.load_task("rte", data_dir)
    assert (len(loaded["train"]), len(loaded["dev"])) == (2490, 277)
    assert sorted(p.name for p in (data_dir / "glue/rte").iterdir()) == ["dev.tsv", "train.tsv"]


@needs_data
def test_mrpc_built_like_glue_script(tmp_path, monkeypatch):
    mirror(monkeypatch, "msr_paraphrase_train.txt", DATA / "glue/mrpc/msr_paraphrase_train.txt")
    mirror(monkeypatch, "mrpc_dev_ids.tsv", DATA / "glue/mrpc/dev_ids.tsv")
    data_dir = tmp_path / "data"
    data.download(data.TASKS["mrpc"], data_dir)  # the pinned sums make this a byte-for-byte check
    for name in ("train.tsv", "dev.tsv"):
        built = hashlib.sha256((data_dir / "glue/mrpc" / name).read_bytes()).hexdigest()
        assert built == data.SHA256[f"glue/mrpc/{name}"]


def test_unpinned_download_is_noted(tmp_path, monkeypatch, capsys):
    header = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
    archive = tmp_path / "QQP-clean.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("QQP/train.tsv", header + "1\t1\t2\ta?\tb?\t1\n2\t3\t4\tc?\td?\t0\n")
        zipped.writestr("QQP/dev.tsv", header + "3\t5\t6\te?\tf?\t0\n")
    mirror(monkeypatch, "QQP-clean.zip", archive)
    loaded = data.load_task("qqp", tmp_path / "data")
    assert len(loaded["train"]) == 2 and len(loaded["dev"]) == 1
    assert "no SHA-256 is pinned for glue/qqp/train.tsv" in capsys.readouterr().err


def test_default_encoder_is_verified_before_use(monkeypatch):
    folder = train.default_model_dir()  # hashes model.safetensors against the pinned SHA-256
    config = json.loads((folder / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (384, 6, 30522)
    monkeypatch.setattr(train, "DEFAULT_MODEL_SHA256", "0" * 64)
    with pytest.raises(data.DataError, match="does not match the pinned SHA-256"):
        train.default_model_dir()


# ---------------------------------------------------------------------------------------------
# encode and collate
# ---------------------------------------------------------------------------------------------

def test_encode_single_texts_and_pad(tiny_tokenizer):
    examples = [data.Example("the cat sat on the mat", None, 1), data.Example("a dog", None, 0)]
    encoded = data.encode(examples, tiny_tokenizer)
    assert encoded[1] == {
        "input_ids": [2, 10, 11, 3],
        "attention_mask": [1, 1, 1, 1],
        "token_type_ids": [0, 0, 0, 0],
        "special_tokens_mask": [1, 0, 0, 1],
        "labels": 0,
    }
    batch = data.collate(tiny_tokenizer)(encoded)
    assert batch["input_ids"].shape == (2, 8)  # the longest in the batch, not max_len
    assert batch["input_ids"][1].tolist() == [2, 10, 11, 3, 0, 0, 0, 0]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert batch["special_tokens_mask"][1].tolist() == [1, 0, 0, 1, 1, 1, 1, 1]
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0]
    assert all(tensor.dtype == torch.long for tensor in batch.values())


def test_encode_pairs_and_truncation(tiny_tokenizer):
    examples = [
        data.Example("the cat sat", "on the mat .", 1),
        data.Example("a dog", "the dog", 0),
    ]
    encoded = data.encode(examples, tiny_tokenizer, max_len=8)
    assert all(len(item["input_ids"]) <= 8 for item in encoded)
    assert len(encoded[0]["input_ids"]) == 8  # 3 + 4 words + 3 specials, truncated
    assert encoded[1]["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]
    assert encoded[1]["special_tokens_mask"] == [1, 0, 0, 1, 0, 0, 1]
    batch = data.collate(tiny_tokenizer)(encoded)
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1, 0]]
    assert batch["special_tokens_mask"][1].tolist() == [1, 0, 0, 1, 0, 0, 1, 1]


# =============================================================================================
# 8. Training (sections 5.2, 5.3): train.py end to end on a tiny BERT
# Every variant on real TREC and RTE; the epoch's counts; seeds; heads; resume bit for bit;
# bf16 and gradient accumulation; CUDA; every bad input's one sentence; a NaN loss.
# =============================================================================================

@needs_data
@pytest.mark.parametrize("variant", train.VARIANTS)
def test_every_variant_trains_end_to_end_on_real_trec(variant, tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    assert tiny_run(tiny_bert, out, "--variant", variant) == 0
    results = results_of(out)
    assert results["data"]["train"] == 64 and results["data"]["test"] == 500
    (epoch,) = results["epochs"]
    assert math.isfinite(epoch["train_loss"])
    assert results["final"]["split"] == "test" and 0 <= results["final"]["accuracy"] <= 1
    if train.VARIANTS[variant].mixes:
        assert 0 < epoch["mean_label_weight"] < 1
    assert results["config"]["dropout"] == (0.0 if variant in ("base", "mixup") else 0.1)
    from transformers import pipeline
    classify = pipeline("text-classification", model=str(out / "seed-1" / "model"), device="cpu")
    assert classify("what is the name of the river ?")[0]["label"] in data.TASKS["trec"].labels
    assert not (out / "seed-1" / "checkpoint.pt").exists()


@needs_data
@pytest.mark.parametrize("variant", [v for v in train.VARIANTS if train.VARIANTS[v].mixes])
def test_every_mixing_variant_trains_end_to_end_on_sentence_pairs(variant, tiny_bert, tmp_path):
    out = tmp_path / "rte"
    assert tiny_run(tiny_bert, out, "--variant", variant, "--no-save-model",
                    run=TINY_PAIRS_RUN) == 0
    results = results_of(out)
    assert results["data"]["train"] == 64 and results["final"]["examples"] == 277
    assert results["final"]["split"] == "dev" and results["final"]["selected_on"] == "last epoch"
    (epoch,) = results["epochs"]
    assert math.isfinite(epoch["train_loss"]) and 0 < epoch["mean_label_weight"] < 1


def alternating_lam(alpha: float, size: int, device) -> torch.Tensor:
    """lam = 0, 1, 0, 1, ... over a batch, in place of mix.sample_lam."""
    return (torch.arange(size, device=device) % 2).float()


@needs_data
@pytest.mark.parametrize("variant", ["mixup", "U", "C"])
def test_epoch_counts_the_mixed_examples_that_took_nothing(variant, tiny_bert, tmp_path,
                                                           monkeypatch):
    # lam alternates 0 (budget 0: nothing mixed, r = 0) and 1 (U's and C's top window always
    # fits a budget of L_A D units), so exactly half of the 64 examples take nothing.
    monkeypatch.setattr(train, "sample_lam", alternating_lam)
    out = tmp_path / "run"
    assert tiny_run(tiny_bert, out, "--variant", variant, "--no-save-model") == 0
    (epoch,) = results_of(out)["epochs"]
    assert epoch["mixed_examples"] == 64 and epoch["empty_mixes"] == 32


@needs_data
def test_a_last_batch_of_one_has_no_partner_and_is_not_counted_as_mixed(tiny_bert, tmp_path,
                                                                       monkeypatch):
    # 64 examples in batches of 21: 21 + 21 + 21 + 1. Each batch of 21 has 11 lam of 0.
    monkeypatch.setattr(train, "sample_lam", alternating_lam)
    out = tmp_path / "run"
    assert tiny_run(tiny_bert, out, "--batch-size", "21", "--variant", "C", "--no-save-model") == 0
    (epoch,) = results_of(out)["epochs"]
    assert epoch["batches_without_partner"] == 1
    assert epoch["mixed_examples"] == 63 and epoch["empty_mixes"] == 33


@needs_data
def test_several_seeds_give_a_mean_and_std(tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    assert tiny_run(tiny_bert, out, "--variant", "dropout", "--seeds", "1", "2", "--no-save-model") == 0
    runs = [results_of(out, seed) for seed in (1, 2)]
    assert [r["config"]["seed"] for r in runs] == [1, 2]
    a, b = (r["final"]["accuracy"] for r in runs)
    # the mean of two numbers and their sample standard deviation: (a + b) / 2, |a - b| / sqrt 2
    assert (f"trec dropout: test accuracy {100 * (a + b) / 2:.2f} +- "
            f"{100 * abs(a - b) / math.sqrt(2):.2f} over 2 seeds") in capsys.readouterr().out


@needs_data
def test_a_checkpoint_with_another_head_size_starts_a_new_head(tiny_two_class_model, tmp_path,
                                                               capsys):
    out = tmp_path / "run"
    assert tiny_run(tiny_two_class_model, out, "--variant", "dropout") == 0
    assert f"{tiny_two_class_model}'s head is of another size: a new head of 6 classes" in capsys.readouterr().out
    saved = json.loads((out / "seed-1" / "model" / "config.json").read_text())
    assert list(saved["id2label"].values()) == list(data.TASKS["trec"].labels)
    assert saved["hidden_dropout_prob"] == 0.1 and saved["classifier_dropout"] == 0.1


# ---------------------------------------------------------------------------------------------
# Resume, determinism, precision
# ---------------------------------------------------------------------------------------------

@needs_data
def test_resume_without_a_checkpoint_says_it_starts_fresh(tiny_bert, tmp_path, capsys):
    assert tiny_run(tiny_bert, tmp_path / "run", "--variant", "base", "--no-save-model",
                    "--resume") == 0
    assert (f"--resume: {tmp_path / 'run' / 'seed-1'} holds no checkpoint, so the run starts "
            "fresh") in capsys.readouterr().out
    assert [e["epoch"] for e in results_of(tmp_path / "run")["epochs"]] == [1]  # and it ran


def saved_weights(folder: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(folder / "model.safetensors"))


def same_finished_run(a: Path, b: Path) -> None:
    """Two run folders hold the same results (but for the time taken) and the same weights."""
    ra, rb = results_of(a), results_of(b)
    assert ra["final"] == rb["final"] and ra["config"] == rb["config"]
    assert [e["train_loss"] for e in ra["epochs"]] == [e["train_loss"] for e in rb["epochs"]]
    wa, wb = saved_weights(a / "seed-1/model"), saved_weights(b / "seed-1/model")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@needs_data
def test_resume_gives_the_same_weights_and_metrics_bit_for_bit(tiny_bert, tmp_path, capsys):
    flags = ("--variant", "G", "--epochs", "2")
    assert tiny_run(tiny_bert, tmp_path / "straight", *flags) == 0
    assert tiny_run(tiny_bert, tmp_path / "halves", *flags, "--stop-after", "1") == 0
    assert (tmp_path / "halves/seed-1/checkpoint.pt").exists()
    assert not (tmp_path / "halves/seed-1/results.json").exists()
    assert tiny_run(tiny_bert, tmp_path / "halves", *flags, "--resume") == 0
    same_finished_run(tmp_path / "straight", tmp_path / "halves")


# The golden run: two short runs of the default encoder on 2% of TREC (109 questions, 4 steps
# an epoch, 2 epochs, lr 2e-4 so that the model moves), committed in results/golden/ from
# `python train.py --task trec --variant V GOLDEN_FLAGS --output-dir DIR` at 494d348, before
# the minimal-reference redesign. Any change that alters a result fails here.
GOLDEN_FLAGS = ("--train-fraction", "0.02", "--epochs", "2", "--lr", "2e-4", "--no-save-model",
                "--no-progress", "--device", "cpu")
# what must be equal to the last digit: the counts and every metric of the reported split
GOLDEN_EXACT = ("epoch", "batches_without_partner", "unmixed_examples", "mixed_examples",
                "empty_mixes", "test")


@needs_data
@pytest.mark.parametrize("variant", ["dropout", "G"])
def test_the_golden_run_gives_the_same_numbers(variant, tmp_path):
    golden = json.loads((HERE / "results/golden" / f"{variant}.json").read_text())
    assert run_train("--task", "trec", "--variant", variant, *GOLDEN_FLAGS, "--data-dir", DATA,
                     "--output-dir", tmp_path) == 0
    now = results_of(tmp_path)
    assert len(now["epochs"]) == len(golden["epochs"]) == 2
    for got, want in zip(now["epochs"], golden["epochs"]):
        assert {k: got[k] for k in GOLDEN_EXACT} == {k: want[k] for k in GOLDEN_EXACT}
        # float sums differ in the last bits with the thread count and the CPU's features, so
        # losses and r match to a relative 1e-6, never looser
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-6, abs=0)
        if want["mean_label_weight"] is not None:
            assert got["mean_label_weight"] == pytest.approx(want["mean_label_weight"], rel=1e-6, abs=0)
        else:
            assert got["mean_label_weight"] is None
    assert now["final"] == golden["final"] and now["data"] == golden["data"]


# The user's own files: the new path is the old path. CR written out as a CSV and RTE as a TSV
# with a pair column train exactly as --task cr and --task rte: same split, same numbers.
TIMING = ("train_seconds", "seconds_per_step")


def same_run(a: dict, b: dict, a_split: str, b_split: str) -> None:
    """Two results.json agree to the last digit, but for the time taken and the split's name."""
    for ea, eb in zip(a["epochs"], b["epochs"], strict=True):
        assert ea.pop(a_split) == eb.pop(b_split)
        assert {k: v for k, v in ea.items() if k not in TIMING} == \
            {k: v for k, v in eb.items() if k not in TIMING}
    assert {k: v for k, v in a["final"].items() if k != "split"} == \
        {k: v for k, v in b["final"].items() if k != "split"}


@needs_data
def test_cr_written_as_a_csv_trains_exactly_as_the_cr_task(tiny_bert, tmp_path, capsys):
    import csv
    lines = (DATA / "cr/custrev.all").read_text(encoding="utf-8").removesuffix("\n").split("\n")
    with open(tmp_path / "reviews.csv", "w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows([("text", "label"), *(line.split(" ", 1)[::-1] for line in lines)])
    flags = ("--variant", "G", "--train-fraction", "0.02", *OWN_RUN, "--model", tiny_bert)
    assert run_train("--task", "cr", "--data-dir", DATA, "--output-dir", tmp_path / "task", *flags) == 0
    capsys.readouterr()
    assert run_train("--train-file", tmp_path / "reviews.csv", "--output-dir", tmp_path / "own", *flags) == 0
    # the CSV's blank reviews are dropped with a warning, as in the task's file (one line later:
    # the header row)
    assert [line.split(":")[1] for line in capsys.readouterr().err.splitlines()] == \
        [f" {tmp_path / 'reviews.csv'} line {n}" for n in (770, 1369, 3692, 3776)]
    task, own = results_of(tmp_path / "task"), results_of(tmp_path / "own")
    assert task["data"] == own["data"] == {"train": 67, "test": 378, "report_split": "test",
                                           "select_split": None}
    same_run(task, own, "test", "test")
    # the saved model answers with the file's labels
    config = json.loads((tmp_path / "own/seed-1/model/config.json").read_text())
    assert config["id2label"] == {"0": "0", "1": "1"}


@needs_data
def test_rte_written_as_a_tsv_with_a_pair_column_trains_exactly_as_the_rte_task(tiny_bert, tmp_path):
    import csv
    for split in ("train", "dev"):
        rows = [line.split("\t") for line in
                (DATA / f"glue/rte/{split}.tsv").read_text(encoding="utf-8").removesuffix("\n").split("\n")]
        with open(tmp_path / f"{split}.tsv", "w", newline="", encoding="utf-8") as file:
            csv.writer(file, delimiter="\t").writerows(rows)
    flags = ("--variant", "C", "--train-fraction", "0.026", "--max-len", "64", *OWN_RUN,
             "--model", tiny_bert, "--no-save-model")
    assert run_train("--task", "rte", "--data-dir", DATA, "--output-dir", tmp_path / "task", *flags) == 0
    assert run_train("--train-file", tmp_path / "train.tsv", "--test-file", tmp_path / "dev.tsv",
                     "--text-column", "sentence1", "--text-pair-column", "sentence2",
                     "--output-dir", tmp_path / "own", *flags) == 0
    task, own = results_of(tmp_path / "task"), results_of(tmp_path / "own")
    assert (task["data"]["train"], task["data"]["dev"]) == (own["data"]["train"], own["data"]["test"]) == (64, 277)
    same_run(task, own, "dev", "test")


@needs_data
def test_a_run_of_one_optimizer_step_learns(tiny_bert, tmp_path):
    # 64 questions in one batch of 64, one epoch: one step, which the warm-up must not take at
    # lr 0 (it would report an untrained model's accuracy)
    assert tiny_run(tiny_bert, tmp_path / "run", "--variant", "dropout", "--batch-size", "64") == 0
    before, after = saved_weights(tiny_bert), saved_weights(tmp_path / "run/seed-1/model")
    name = "embeddings.word_embeddings.weight"
    assert not torch.equal(before[name], after[f"bert.{name}"])


@needs_data
def test_same_seed_same_metrics(tiny_bert, tmp_path):
    for name in ("a", "b"):
        assert tiny_run(tiny_bert, tmp_path / name, "--variant", "U", "--no-save-model") == 0
    a, b = results_of(tmp_path / "a"), results_of(tmp_path / "b")
    assert a["epochs"][0]["train_loss"] == b["epochs"][0]["train_loss"]
    assert a["final"] == b["final"]


@needs_data
def test_finished_run_is_not_overwritten_unless_asked(tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    assert tiny_run(tiny_bert, out, "--variant", "dropout", "--no-save-model") == 0
    before = (out / "seed-1/results.json").read_text()
    assert tiny_run(tiny_bert, out, "--variant", "dropout", "--no-save-model") == 2
    assert (f"error: {out / 'seed-1'} holds a finished run; pass --overwrite to replace it."
            in capsys.readouterr().err.splitlines())
    assert (out / "seed-1/results.json").read_text() == before
    # --overwrite replaces it: a marker in its place gives way to the same run's results again
    (out / "seed-1/results.json").write_text('{"final": "replaced?"}')
    assert tiny_run(tiny_bert, out, "--variant", "dropout", "--no-save-model", "--overwrite") == 0
    assert results_of(out)["final"] == json.loads(before)["final"]


@needs_data
def test_overwrite_deletes_the_old_run_first_and_ctrl_c_says_what_is_kept(tiny_bert, tmp_path,
                                                                         monkeypatch, capsys):
    out, run = tmp_path / "run", ("--variant", "dropout", "--epochs", "2")
    assert tiny_run(tiny_bert, out, *run) == 0
    assert (out / "seed-1/model/model.safetensors").exists()
    # the new run's results never sit beside the old run's model
    assert tiny_run(tiny_bert, out, *run, "--overwrite", "--no-save-model") == 0
    assert sorted(p.name for p in (out / "seed-1").iterdir()) == ["results.json"]
    real_step, calls = train.train_step, {"n": 0}

    def interrupted_at(n):
        def step(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return real_step(*args, **kwargs)
        return step
    # Ctrl-C in epoch 1 of --overwrite: the old run is gone, and nothing of the new one is kept
    monkeypatch.setattr(train, "train_step", interrupted_at(2))
    capsys.readouterr()
    assert tiny_run(tiny_bert, out, *run, "--overwrite") == 130
    assert capsys.readouterr().err == "interrupted; no epoch had finished: no checkpoint is kept\n"
    assert list((out / "seed-1").iterdir()) == []
    # Ctrl-C in epoch 2: epoch 1's model and checkpoint are kept, and --resume goes on from them
    calls["n"] = 0
    monkeypatch.setattr(train, "train_step", interrupted_at(6))
    assert tiny_run(tiny_bert, out, *run) == 130
    assert capsys.readouterr().err == (f"interrupted; the last finished epoch's checkpoint is kept "
                                       f"in {out / 'seed-1'} (--resume)\n")
    assert sorted(p.name for p in (out / "seed-1").iterdir()) == ["checkpoint.pt", "model"]
    monkeypatch.setattr(train, "train_step", real_step)
    assert tiny_run(tiny_bert, out, *run, "--resume") == 0
    assert [e["epoch"] for e in results_of(out)["epochs"]] == [1, 2]


@needs_data
def test_a_killed_runs_temporary_files_are_swept_at_the_next_start(tiny_bert, tmp_path):
    out, run = tmp_path / "run", ("--variant", "dropout", "--epochs", "2")
    assert tiny_run(tiny_bert, out, *run, "--stop-after", "1") == 0
    # what kill -9 leaves in the middle of a write: a checkpoint, the results or the model
    folder = out / "seed-1"
    (folder / "checkpoint.pt.tmp").write_bytes(b"")
    (folder / "results.json.tmp").write_text("{")
    shutil.copytree(folder / "model", folder / "model.tmp")
    # the next start sweeps them, before anything is written (here: nothing is, yet)
    assert tiny_run(tiny_bert, out, *run, "--resume", "--stop-after", "1") == 0
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "model"]
    # and a new run in that folder starts in an empty one: a killed first epoch's model too
    (folder / "checkpoint.pt").unlink()
    (folder / "checkpoint.pt.tmp").write_bytes(b"")
    assert tiny_run(tiny_bert, out, *run, "--no-save-model") == 0
    assert sorted(p.name for p in folder.iterdir()) == ["results.json"]


def fail_writing(monkeypatch, name: str, nth: int) -> None:
    """Make train.py's nth write of `name` fail as on a full disk, after the write itself: the
    temporary then holds everything, and must still go."""
    real, calls = train.replace_atomically, collections.Counter()

    def replace_atomically(path, write, folder=False):
        calls[path.name] += 1
        if path.name == name and calls[name] == nth:
            def write_then_fail(target):
                write(target)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(path, write_then_fail, folder)
        return real(path, write, folder)
    monkeypatch.setattr(train, "replace_atomically", replace_atomically)


@needs_data
@pytest.mark.parametrize("name, nth, kept", [("checkpoint.pt", 2, 1), ("model", 2, 1),
                                             ("results.json", 1, 2)])
def test_a_full_disk_is_one_sentence_and_resume_finishes_the_run(name, nth, kept, tiny_bert,
                                                                 tmp_path, monkeypatch, capsys):
    run = ("--variant", "G", "--epochs", "2")
    assert tiny_run(tiny_bert, tmp_path / "straight", *run) == 0
    folder = tmp_path / "full/seed-1"
    with monkeypatch.context() as patched:
        fail_writing(patched, name, nth)
        capsys.readouterr()
        assert tiny_run(tiny_bert, tmp_path / "full", *run) == 2
    assert capsys.readouterr().err == f"error: cannot write {folder / name}: No space left on device.\n"
    # no temporary left, and the last checkpoint that was written is whole
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "model"]
    assert torch.load(folder / "checkpoint.pt", weights_only=False)["epoch"] == kept
    assert tiny_run(tiny_bert, tmp_path / "full", *run, "--resume") == 0
    same_finished_run(tmp_path / "straight", tmp_path / "full")


@needs_data
def test_a_full_tmpfs_is_one_sentence_and_resume_finishes_the_run(tiny_bert, tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", disk],
                           capture_output=True, text=True, check=False)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mount.stderr.strip()}); the patched writes "
                    "of the test above stand for it")
    try:
        run = ("--variant", "G", "--epochs", "2")
        assert tiny_run(tiny_bert, tmp_path / "straight", *run) == 0
        assert tiny_run(tiny_bert, disk, *run, "--stop-after", "1") == 0
        checkpoint = (disk / "seed-1/checkpoint.pt").read_bytes()
        # room for epoch 2's model, not for its checkpoint beside the last one
        room = shutil.disk_usage(disk).used + len(checkpoint) // 2
        subprocess.run(["mount", "-o", f"remount,size={room}", disk], check=True)
        capsys.readouterr()
        assert tiny_run(tiny_bert, disk, *run, "--resume") == 2
        assert capsys.readouterr().err == (f"error: cannot write {disk / 'seed-1/checkpoint.pt'}: "
                                           "No space left on device.\n")
        assert sorted(p.name for p in (disk / "seed-1").iterdir()) == ["checkpoint.pt", "model"]
        assert (disk / "seed-1/checkpoint.pt").read_bytes() == checkpoint
        subprocess.run(["mount", "-o", "remount,size=16m", disk], check=True)
        assert tiny_run(tiny_bert, disk, *run, "--resume") == 0
        same_finished_run(tmp_path / "straight", disk)
    finally:
        subprocess.run(["umount", disk], check=True)


# Two processes that call train.main at the same moment (each waits for the file `go`)
AT_ONCE = """import os, sys, time
sys.path.insert(0, sys.argv[1])
import train
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
sys.exit(train.main(sys.argv[3:]))
"""


@needs_data
def test_two_runs_started_at_once_into_one_folder(tiny_bert, tmp_path):
    out, go = tmp_path / "out", tmp_path / "go"
    flags = [*TINY_RUN, "--model", tiny_bert, "--data-dir", DATA, "--output-dir", out,
             "--variant", "G", "--no-save-model"]
    runs = [subprocess.Popen([sys.executable, "-c", AT_ONCE, HERE, go, *map(str, flags)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in range(2)]
    assert [run.stdout.readline() for run in runs] == ["ready\n"] * 2
    go.touch()
    said = [run.communicate(timeout=300) for run in runs]
    assert sorted(run.returncode for run in runs) == [0, 2], said
    loser = [err for run, (_, err) in zip(runs, said) if run.returncode == 2][0]
    assert loser == (f"error: another run is writing to {out / 'seed-1'}; wait for it to end, or "
                     "choose another --output-dir.\n")
    assert results_of(out)["data"]["train"] == 64


def test_a_masked_lm_checkpoint_without_a_pooler_loads(tmp_path):
    # BERT's pooler is the head's: a checkpoint saved by BertForMaskedLM has none, and
    # fine-tuning starts it new, as it starts the classifier
    import transformers
    folder = tmp_path / "mlm"
    transformers.BertForMaskedLM(transformers.BertConfig(vocab_size=42, **LAYERS)).save_pretrained(folder)
    write_tokenizer(folder, "bert")
    _, model = train.load_encoder(str(folder), ("a", "b"), 0.1)
    from safetensors.torch import load_file
    saved = load_file(str(folder / "model.safetensors"))
    name = "bert.encoder.layer.1.output.dense.weight"
    assert torch.equal(model.state_dict()[name], saved[name])


def test_a_run_refused_by_the_lock_leaves_the_other_runs_empty_folder(tmp_path, monkeypatch):
    out = tmp_path / "runs/seed-1"
    with train.run_folder(out):  # the other run: it made the folder and has written nothing yet
        # this run looked before the other one made the folder, so it counts it as its own
        monkeypatch.setattr(train.os.path, "exists", lambda path: False)
        with pytest.raises(data.DataError, match="another run is writing to"):
            with train.run_folder(out):
                pass
        monkeypatch.undo()
        assert out.is_dir()


def test_load_encoder_leaves_transformers_logging_as_it_found_it(tiny_bert):
    from transformers.utils import logging as hf_logging
    before = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    try:
        hf_logging.set_verbosity_info()
        hf_logging.enable_progress_bar()
        train.load_encoder(str(tiny_bert), ("a", "b"), 0.1)
        assert hf_logging.get_verbosity() == hf_logging.INFO and hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.set_verbosity(before[0])
        (hf_logging.enable_progress_bar if before[1] else hf_logging.disable_progress_bar)()


@needs_data
@pytest.mark.parametrize("flags", [("--bf16",), ("--grad-accum", "2")])
def test_bf16_and_gradient_accumulation_train(tiny_bert, tmp_path, flags, monkeypatch, capsys):
    # what each flag changes, seen from inside the run: every forward pass under bf16
    # autocast or none; 64 examples in 4 batches of 16, taken as 4 steps of one batch each or
    # as 2 steps of two (each batch's loss scaled by 1/2, the gradients reduced on the last)
    steps, precisions = [], []
    real_step, real_autocast = train.train_step, train.autocast

    def recorded_step(config, model, batch, loss_scale=1.0, reduce=True):
        steps.append((loss_scale, reduce))
        return real_step(config, model, batch, loss_scale=loss_scale, reduce=reduce)

    def recorded_autocast(device, bf16):
        precisions.append(bf16)
        return real_autocast(device, bf16)
    monkeypatch.setattr(train, "train_step", recorded_step)
    monkeypatch.setattr(train, "autocast", recorded_autocast)
    assert tiny_run(tiny_bert, tmp_path / "run", "--variant", "C", "--no-save-model", *flags) == 0
    bf16 = flags == ("--bf16",)
    assert set(precisions) == {bf16}
    assert steps == ([(1.0, True)] * 4 if bf16 else [(0.5, False), (0.5, True)] * 2)
    said = capsys.readouterr()
    assert f"64 train, 500 test; {4 if bf16 else 2} steps per epoch on cpu" in said.out
    # bf16 on a CPU runs, and says that it may be slow
    assert said.err == ("warning: --bf16 on a CPU can make a step many times slower\n" if bf16 else "")
    results = results_of(tmp_path / "run")
    assert (results["config"]["bf16"], results["config"]["grad_accum"]) == (bf16, 1 if bf16 else 2)
    (epoch,) = results["epochs"]
    assert math.isfinite(epoch["train_loss"]) and epoch["mixed_examples"] == 64
    assert 0 < epoch["mean_label_weight"] < 1


@needs_cuda
@needs_data
@pytest.mark.parametrize("flags", [(), ("--bf16",)], ids=["fp32", "bf16"])
def test_training_on_cuda_resumes_and_saves(tiny_bert, tmp_path, flags):
    cuda = ("--device", "cuda", "--variant", "G", "--epochs", "2", *flags)
    assert tiny_run(tiny_bert, tmp_path / "straight", *cuda) == 0
    assert tiny_run(tiny_bert, tmp_path / "halves", *cuda, "--stop-after", "1") == 0
    assert tiny_run(tiny_bert, tmp_path / "halves", *cuda, "--resume") == 0
    a, b = results_of(tmp_path / "straight"), results_of(tmp_path / "halves")
    assert a["environment"]["device_name"] == torch.cuda.get_device_name()
    assert all(0 < e["mean_label_weight"] < 1 for e in a["epochs"])
    # the resumed run restores CUDA's generator too; CUDA's atomic adds in the backward pass
    # may still reorder sums, so the two agree closely rather than bit for bit
    torch.testing.assert_close([e["train_loss"] for e in b["epochs"]],
                               [e["train_loss"] for e in a["epochs"]], rtol=1e-3, atol=1e-4)
    from transformers import pipeline
    classify = pipeline("text-classification", model=str(tmp_path / "straight/seed-1/model"),
                        device=0)
    assert classify("what is the name of the river ?")[0]["label"] in data.TASKS["trec"].labels


# ---------------------------------------------------------------------------------------------
# Bad input: one sentence, status 2, nothing changed on disk
# ---------------------------------------------------------------------------------------------

def write_trec_copy(folder: Path, train_bytes: bytes) -> Path:
    (folder / "trec").mkdir(parents=True)
    (folder / "trec/TREC.train.all").write_bytes(train_bytes)
    shutil.copy(DATA / "trec/TREC.test.all", folder / "trec/TREC.test.all")
    return folder


def folder_state(root: Path) -> dict:
    """Every file and folder under root, with each file's bytes: what a failed run may not change."""
    return {str(path.relative_to(root)): path.read_bytes() if path.is_file() else "folder"
            for path in sorted(root.rglob("*"))}


def damaged_checkpoint(keep: float):
    """A setup that leaves a checkpoint.pt cut to `keep` of its bytes in the run's folder."""
    def setup(tmp_path, tiny_bert, monkeypatch):
        path = tmp_path / "out/seed-1/checkpoint.pt"
        path.parent.mkdir(parents=True)
        torch.save({"config": {}, "model": {"w": torch.zeros(10_000)}}, path)
        path.write_bytes(path.read_bytes()[:int(keep * path.stat().st_size)])
        return ("--resume",)
    return setup


def model_copy_with_cut_weights(tmp_path, tiny_bert, monkeypatch):
    folder = tmp_path / "cut-model"
    shutil.copytree(tiny_bert, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 3])
    return ("--model", folder)


def model_copy_without_weights(tmp_path, tiny_bert, monkeypatch):
    folder = tmp_path / "no-weights"
    shutil.copytree(tiny_bert, folder)
    (folder / "model.safetensors").unlink()
    return ("--model", folder)


def a_file(tmp_path, tiny_bert, monkeypatch):
    (tmp_path / "model.bin").write_bytes(b"not a model")
    return ("--model", tmp_path / "model.bin")


def an_empty_folder(tmp_path, tiny_bert, monkeypatch):
    (tmp_path / "empty-model").mkdir()
    return ("--model", tmp_path / "empty-model")


def no_hub(tmp_path, tiny_bert, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return ("--model", "no-such-model-anywhere")


def a_finished_run(*flags):
    def setup(tmp_path, tiny_bert, monkeypatch):
        (tmp_path / "out/seed-1").mkdir(parents=True)
        (tmp_path / "out/seed-1/results.json").write_text('{"final": "kept"}')
        return flags
    return setup


def output_under_a_file(tmp_path, tiny_bert, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    return ("--output-dir", tmp_path / "file" / "out")


def trec_with_a_malformed_line(tmp_path, tiny_bert, monkeypatch):
    lines = (DATA / "trec/TREC.train.all").read_bytes().split(b"\n")
    bad = write_trec_copy(tmp_path / "bad", b"\n".join(lines[:10] + [b"x Who is it ?"] + lines[10:]))
    return ("--data-dir", bad)


def sst1_with_a_cp1252_byte(tmp_path, tiny_bert, monkeypatch):
    sst = tmp_path / "sst" / "sst1"
    sst.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        shutil.copy(DATA / f"sst1/stsa.fine.{split}", sst / f"stsa.fine.{split}")
    (sst / "stsa.fine.dev").write_bytes(b"2 fine\n3 caf\xe9 au lait\n")  # cp1252 in a UTF-8 file
    return ("--task", "sst1", "--data-dir", tmp_path / "sst")


def no_data_and_no_network(tmp_path, tiny_bert, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    return ("--data-dir", tmp_path / "no-data")


def a_file_as_data_dir(tmp_path, tiny_bert, monkeypatch):
    (tmp_path / "afile").write_text("not a folder")
    return ("--data-dir", tmp_path / "afile")


def a_tokenizer_larger_than_the_embeddings(tmp_path, tiny_bert, monkeypatch):
    from transformers import AutoTokenizer
    folder = tmp_path / "grown-vocab"
    shutil.copytree(tiny_bert, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens(["zebra", "yak"])  # ids 42 and 43; the table has rows 0..41
    tokenizer.save_pretrained(folder)
    return ("--model", folder)


def roberta_weights_under_a_bert_config(tmp_path, tiny_bert, monkeypatch):
    import transformers
    # a RoBERTa pretrained checkpoint (RobertaForMaskedLM: roberta.* and lm_head.* weights)
    config = transformers.RobertaConfig(vocab_size=42, max_position_embeddings=130, **LAYERS)
    torch.manual_seed(0)
    transformers.RobertaForMaskedLM(config).save_pretrained(tmp_path / "roberta")
    folder = tmp_path / "bert-config-roberta-weights"
    shutil.copytree(tiny_bert, folder)
    shutil.copy(tmp_path / "roberta/model.safetensors", folder / "model.safetensors")
    return ("--model", folder)


def weights_of_another_shape(tmp_path, tiny_bert, monkeypatch):
    folder = tmp_path / "other-shape"
    shutil.copytree(tiny_bert, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    return ("--model", folder)


def a_finished_run_of_other_flags(tmp_path, tiny_bert, monkeypatch):
    assert tiny_run(tiny_bert, tmp_path / "out", "--variant", "dropout", "--no-save-model") == 0
    return ("--variant", "dropout", "--no-save-model", "--resume", "--lr", "3e-5")


# what a setup holds while train.py runs (another run's lock on the folder); the table's test
# lets go of it when the run is over
HELD = contextlib.ExitStack()


def another_run_in_the_folder(tmp_path, tiny_bert, monkeypatch):
    HELD.enter_context(train.run_folder(tmp_path / "out/seed-1"))  # as another process holds it
    return ()


OWN = object()  # flags that start with it replace the run on TREC by a run on the user's files


def own_file(name: str, content: bytes | str, *flags):
    """A setup that writes the user's file `name` and trains on it with `flags`."""
    def setup(tmp_path, tiny_bert, monkeypatch):
        write(tmp_path / name, content)
        return (OWN, "--train-file", tmp_path / name, *flags)
    return setup


CSV = "text,label\na fine film,pos\na dull film,neg\nfine,pos\ndull,neg\n"


def own_test_file(name: str, content: str):
    """A setup that trains on CSV with the test file `name` holding `content`."""
    def setup(tmp_path, tiny_bert, monkeypatch):
        write(tmp_path / name, content)
        return own_file("a.csv", CSV, "--test-file", tmp_path / name)(tmp_path, tiny_bert, monkeypatch)
    return setup

# Every bad input a user may give, with the sentence it must get: flags (or a setup that
# prepares the folder and returns the flags), and the words of the one "error:" line.
BAD_INPUTS = {
    "unknown task": (("--task", "nope"), "argument --task: invalid choice: 'nope' (choose from"),
    "unknown variant": (("--variant", "Z"), "argument --variant: invalid choice: 'Z'"),
    "alpha 0": (("--variant", "G", "--alpha", "0"), "--alpha must be from 0.01 to 1e6, got 0.0."),
    "alpha inf": (("--variant", "G", "--alpha", "inf"), "--alpha must be from 0.01 to 1e6, got inf."),
    "alpha nan": (("--variant", "C", "--alpha", "nan"), "--alpha must be from 0.01 to 1e6, got nan."),
    # torch's Beta raises below float32's range, and draws 0.5 for most lam below 0.01; above it
    # alpha is inf and lam 1e-38, so nothing is mixed
    "alpha tiny": (("--variant", "G", "--alpha", "1e-300"), "--alpha must be from 0.01 to 1e6, got 1e-300."),
    "alpha small": (("--variant", "mixup", "--alpha", "0.001"), "--alpha must be from 0.01 to 1e6, got 0.001."),
    "alpha huge": (("--variant", "G", "--alpha", "1e39"), "--alpha must be from 0.01 to 1e6, got 1e+39."),
    "lr negative": (("--lr", "-1e-5"), ("argument --lr: expected one argument; a value that starts with "
                                        "'-' is written --lr=VALUE")),
    "lr negative, written with =": (("--lr=-1e-5",), "--lr must be a positive finite number, got -1e-05."),
    "output dir empty": (("--output-dir", ""), "--output-dir must be a name, not empty, got ''."),
    "model empty": (("--model", ""), "--model must be a name, not empty, got ''."),
    "output dir name too long": (("--output-dir", Path("/tmp") / ("a" * 300)),
                                 "cannot write to the output folder /tmp/aaaa"),
    "two runs in one folder": (another_run_in_the_folder,
                               "seed-1; wait for it to end, or choose another --output-dir."),
    "fraction": (("--train-fraction", "1.5"), "--train-fraction must be in (0, 1], got 1.5."),
    "epochs": (("--epochs", "0"), "--epochs must be a positive integer, got 0."),
    "dropout": (("--dropout", "1"), "--dropout must be in [0, 1), got 1.0."),
    "seed overflow": (("--seed", "9" * 23), f"--seed must be an integer from 0 to 2**32 - 1, got {'9' * 23}."),
    "seed negative": (("--seed", "-1"), "--seed must be an integer from 0 to 2**32 - 1, got -1."),
    "seeds repeated": (("--seeds", "1", "1"), "--seeds must be distinct integers from 0 to 2**32 - 1"),
    "seeds not integers": (("--seeds", "1", "x"), "argument --seeds: invalid int value: 'x'"),
    "seed and seeds": (("--seed", "2", "--seeds", "1", "2"), "argument --seeds: not allowed with argument --seed"),
    "n-range": (("--variant", "G", "--n-range", "0", "200"), "--n-range must be LO HI or one integer"),
    "n-range of three": (("--variant", "G", "--n-range", "2", "3", "4"), "--n-range must be LO HI or one integer"),
    "alpha for dropout": (("--variant", "dropout", "--alpha", "0.3"),
                          "--alpha is read only by --variant mixup, dropout-mixup, U, C, W, G; dropout would ignore it."),
    "alpha for ssmix": (("--variant", "ssmix", "--alpha", "0.3"), "ssmix would ignore it."),
    "n-range for C": (("--variant", "C", "--n-range", "3"), "--n-range is read only by --variant W, G; C would ignore it."),
    "width for U": (("--variant", "U", "--window-width", "2"),
                    "--window-width is read only by --variant G; U would ignore it."),
    "span share for G": (("--variant", "G", "--span-share", "0.2"),
                         "--span-share is read only by --variant ssmix; G would ignore it."),
    "partner": (("--variant", "C", "--batch-size", "1"), "needs >= 2"),
    "width": (("--variant", "G", "--window-width", "33"), "--window-width 33 is wider than the model's 32 channels."),
    "empty subsample": (("--train-fraction", "0.0001"), "cannot keep all 6 classes"),
    "max-len": (("--max-len", "7"), "--max-len must be at least 8, got 7."),
    "positions": (("--max-len", "200"), "longer than the model's 128 positions"),
    "device meta": (("--device", "meta"), "--device meta is not one this trainer runs on: cpu, cuda or cuda:K."),
    "device mps": (("--device", "mps"), "--device mps is not one this trainer runs on"),
    "model missing": (("--model", "/no/such/model"), "--model /no/such/model does not exist: it takes a folder"),
    "model of no user": (("--model", "~nosuchuser/m"), "--model ~nosuchuser/m does not exist: it takes a folder"),
    "model name too long": (("--model", "/" + "m" * 300), "m does not exist: it takes a folder"),
    "tokenizer larger than the embeddings": (a_tokenizer_larger_than_the_embeddings,
                                             "the model's tokenizer has 44 tokens, but its embedding table 42 rows"),
    "roberta weights under a bert config": (roberta_weights_under_a_bert_config,
                                            "bert-config-roberta-weights': 37 of its encoder's weights are missing "
                                            "or of another shape, e.g. bert.embeddings.LayerNorm.bias."),
    "weights of another shape": (weights_of_another_shape,
                                 "other-shape': 6 of its encoder's weights are missing or of another shape, "
                                 "e.g. bert.encoder.layer.0.intermediate.dense.bias."),
    "model is a file": (a_file, "model.bin is a file: it takes a folder that save_pretrained wrote"),
    "model folder empty": (an_empty_folder, "empty-model is a folder without config.json: it takes a folder"),
    "model weights cut": (model_copy_with_cut_weights, "cut-model': "),
    "model hub offline": (no_hub, ("cannot load the model 'no-such-model-anywhere': We couldn't connect to "
                                   "'https://huggingface.co' to load the files, and couldn't find them in the "
                                   "cached files.")),
    "checkpoint cut": (damaged_checkpoint(0.4), "checkpoint.pt is damaged ("),
    "checkpoint empty": (damaged_checkpoint(0.0), "checkpoint.pt is damaged ("),
    "finished run": (a_finished_run(), "holds a finished run; pass --overwrite to replace it."),
    "resume and overwrite": (a_finished_run("--resume", "--overwrite"),
                             "argument --overwrite: not allowed with argument --resume"),
    "resume a finished run with other flags": (a_finished_run_of_other_flags,
                                               "seed-1 holds a finished run of other flags (--overwrite "
                                               "replaces it)."),
    "unwritable output": (output_under_a_file, "cannot write to the output folder"),
    # a named task is the published benchmark: an edited copy of one of its files is refused
    # (its malformed lines, bytes and labels get their sentences in the data tests above)
    "edited benchmark, a malformed line": (trec_with_a_malformed_line,
                                           "trec/TREC.train.all is not the published file"),
    "edited benchmark, a wrong byte": (sst1_with_a_cp1252_byte,
                                       "sst1/stsa.fine.dev is not the published file"),
    "model folder without weights": (model_copy_without_weights,
                                     "no-weights': Error no file named model.safetensors"),
    "no data, no network": (no_data_and_no_network, "TREC.train.all"),
    "data dir a file": (a_file_as_data_dir, "afile is a file."),
    "data dir of no user": (("--data-dir", "~nosuchuser/data"), "the data folder ~nosuchuser/data is in the home "
                                                               "of no user here."),
    # the user's own files (--train-file)
    "task and train file": (("--train-file", "a.csv"), "argument --train-file: not allowed with argument --task"),
    "neither task nor file": ((OWN,), "one of the arguments --task --train-file is required"),
    "test file without train file": (("--test-file", "a.csv"), "--test-file is read only with --train-file."),
    "data dir with own file": (own_file("a.csv", CSV, "--data-dir", "/tmp"),
                               "--data-dir is read only with --task."),
    "own file missing": ((OWN, "--train-file", "/no/such.csv"), "/no/such.csv does not exist."),
    "own file name too long": ((OWN, "--train-file", "/" + "a" * 300 + ".csv"), "a.csv does not exist."),
    "own extension": (own_file("a.txt", CSV), "a.txt: the format comes from the extension"),
    "own file empty": (own_file("a.csv", ""), "a.csv is empty."),
    "own header only": (own_file("a.csv", "text,label\n"), "a.csv has a header row but no examples."),
    "own texts all blank": (own_file("a.csv", "text,label\n ,pos\n,neg\n"), "a.csv holds no example with a text."),
    "own column missing": (own_file("a.csv", CSV, "--text-column", "sentence"),
                           "a.csv line 1: has no column 'sentence' (found text, label); name the columns with"),
    "own row short": (own_file("a.csv", CSV + "no label\n"), "a.csv line 6: expected 2 fields, found 1."),
    "own single class": (own_file("a.csv", "text,label\nfine,pos\ngood,pos\n"),
                         "a.csv holds a single class ('pos'); a classifier needs examples of at least two."),
    "own class too small": (own_file("a.csv", CSV + "odd,mid\n"),
                            "a.csv has a class too small for a stratified 10% test split; pass a --test-file."),
    "own test file missing": (own_file("a.csv", CSV, "--test-file", "/no/such.tsv"),
                              "/no/such.tsv does not exist."),
    "own test label unknown": (own_test_file("b.csv", "text,label\nso so,mid\n"),
                               "b.csv line 2: label 'mid' is not one of neg, pos."),
    "own byte": (own_file("a.csv", b"text,label\ncaf\xe9,pos\ndull,neg\n"),
                 "a.csv line 2: byte 0xE9 is not valid utf-8; save the file as UTF-8."),
    # a spreadsheet's byte-order mark is not part of the first column's name: the header is read
    "own file with a BOM": (own_file("a.csv", b"\xef\xbb\xbftext,label\nfine,pos\ngood,pos\n"),
                            "a.csv holds a single class ('pos')"),
    "own json not an object": (own_file("a.jsonl", '{"text": "fine", "label": "pos"}\n["dull", "neg"]\n'),
                               "a.jsonl line 2: is not a JSON object with the text key(s) text and the key label."),
    "own json bad": (own_file("a.jsonl", '{"text": "fine", "label": "pos"}\n{"text": "dull"\n'),
                     "a.jsonl line 2: is not a JSON object"),
}


@needs_data
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_sentence_status_2_and_changes_nothing(case, tiny_bert, tmp_path,
                                                                monkeypatch, capsys):
    flags, message = BAD_INPUTS[case]
    with HELD:
        if callable(flags):
            flags = flags(tmp_path, tiny_bert, monkeypatch)
        before = folder_state(tmp_path)
        capsys.readouterr()  # what a setup's own run said
        if flags and flags[0] is OWN:
            assert run_train(*flags[1:], *OWN_RUN, "--model", tiny_bert, "--output-dir", tmp_path / "out") == 2
        else:
            assert tiny_run(tiny_bert, tmp_path / "out", *flags) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err, err
    said = [line for line in err.splitlines() if not line.startswith(("warning: ", "downloading "))]
    assert len(said) == 1 and said[0].startswith("error: ") and message in said[0], err
    assert not said[0].endswith("..")  # a library's sentence inside ours ends once
    # nothing written, nothing deleted, and no empty folder left for a rerun to trip over
    assert folder_state(tmp_path) == before


@needs_data
@pytest.mark.parametrize("bad_step", [2, 6], ids=["epoch 1", "epoch 2"])
def test_a_nan_loss_stops_at_its_step_and_says_what_is_kept(bad_step, tiny_bert, tmp_path,
                                                           monkeypatch, capsys):
    real_step = train.train_step
    calls = {"n": 0}

    def step_that_diverges(*args, **kwargs):
        calls["n"] += 1
        result = real_step(*args, **kwargs)
        if calls["n"] == bad_step:  # 4 batches per epoch: step 2 is epoch 1, step 6 epoch 2
            result["loss"] = float("nan")
        return result
    monkeypatch.setattr(train, "train_step", step_that_diverges)
    out = tmp_path / "run"
    assert tiny_run(tiny_bert, out, "--variant", "dropout", "--epochs", "3") == 2
    err = capsys.readouterr().err
    assert [line.startswith("error: ") for line in err.splitlines()] == [True]
    if bad_step == 2:
        assert "became nan at epoch 1, batch 2; no epoch had finished: no checkpoint is kept." in err
        assert not out.exists()  # and no empty folder says otherwise
    else:
        assert (f"became nan at epoch 2, batch 2; the last finished epoch's checkpoint is kept in "
                f"{out / 'seed-1'} (--resume).") in err
        checkpoint = torch.load(out / "seed-1/checkpoint.pt", weights_only=False)
        assert checkpoint["epoch"] == 1 and not (out / "seed-1/results.json").exists()


# =============================================================================================
# 9. Processes: gradient accumulation, torchrun (DDP), the README's Trainer snippet
# train.py under torchrun; accumulation and two processes against one big batch, step by
# step; the README's own-loop and Trainer snippets, the Trainer under DDP too. The programs
# torchrun starts are the probe-* functions here, run as `python test_dropmix.py probe-NAME`.
# =============================================================================================

# torchrun with a free port of its own (--standalone), so two launches never collide on one
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def failed_children(stderr: str) -> str:
    """torchrun's stderr, cut for an assertion: the children's own messages come first and
    torchrun's summary last, so keep both ends."""
    return stderr if len(stderr) <= 4000 else stderr[:2000] + "\n[...]\n" + stderr[-2000:]


@needs_data
def test_torchrun_two_processes_on_cpu(tiny_bert, tmp_path):
    out = tmp_path / "ddp"
    finished = run_program([*TORCHRUN, "--nproc_per_node", 2, HERE / "train.py", *TINY_RUN,
                            "--variant", "G", "--model", tiny_bert, "--data-dir", DATA,
                            "--output-dir", out, "--no-save-model"])
    results = results_of(out)
    assert results["timing"]["processes"] == 2
    assert results["final"]["examples"] == results["data"]["test"] == 500
    assert finished.stdout.count("test accuracy") == 1  # only rank 0 reports


def run_program(command: list) -> subprocess.CompletedProcess:
    """A child program (python, or torchrun and its processes), one thread per process; it
    must exit 0, and if not the assertion shows what the children said."""
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert done.returncode == 0, failed_children(done.stderr)
    return done


def run_probe(name: str, *args, processes: int = 1) -> subprocess.CompletedProcess:
    """`python test_dropmix.py probe-NAME ARGS...`: alone, or as `processes` under torchrun."""
    launch = [sys.executable] if processes == 1 else [*TORCHRUN, "--nproc_per_node", processes]
    return run_program([*launch, HERE / "test_dropmix.py", f"probe-{name}", *args])


def probe_gradients(model_dir: str, data_dir: str, batch_size: str, grad_accum: str,
                    out: str) -> None:
    """A probe of the loop itself, alone or under torchrun: train.train_epoch over 70 TREC
    questions (batches that do not divide them evenly), with an optimizer that only records
    each step's gradients (so the weights stay put and every step is compared on the same
    model), then train.predict over 499 test questions (a split two processes do not share
    evenly). Rank 0 saves {"steps", "predictions"} to `out`."""
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler
    procs = train.setup_processes("cpu")
    task = data.load_task("trec", Path(data_dir))
    (config,) = train.configs_from_args(train.build_parser().parse_args(
        ["--task", "trec", "--variant", "base", "--model", model_dir, "--batch-size", batch_size,
         "--grad-accum", grad_accum]))
    torch.manual_seed(0)
    tokenizer, model = train.load_encoder(model_dir, data.TASKS["trec"].labels, config.dropout)
    model.train()
    encoded = data.encode(task["train"][:70], tokenizer, 32)
    sampler = DistributedSampler(encoded, num_replicas=procs.world, rank=procs.rank, shuffle=True,
                                 seed=1)
    loader = DataLoader(encoded, batch_size=config.batch_size, sampler=sampler,
                        collate_fn=data.collate(tokenizer))
    if procs.world > 1:
        model = DistributedDataParallel(model)
    recorder = GradientRecorder(model)
    train.train_epoch(config, model, recorder, NoSchedule(), loader, 0)
    report = data.encode(task["test"][:499], tokenizer, 32)
    predictions = train.predict(model, report, data.collate(tokenizer), procs, 128, False)
    if procs.main:
        torch.save({"steps": recorder.grads, "predictions": predictions}, out)
    if procs.world > 1:
        # DDP holds the group: free it first (the recorder holds it too), so that
        # destroy_process_group joins gloo's threads
        del recorder, model
        torch.distributed.destroy_process_group()


def run_gradient_probe(tmp_path: Path, model: Path, batch_size: int, grad_accum: int,
                       processes: int = 1) -> dict:
    out = tmp_path / f"probe-{batch_size}-{grad_accum}-{processes}.pt"
    run_probe("gradients", model, DATA, batch_size, grad_accum, out, processes=processes)
    return torch.load(out)


def assert_same_steps(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for step_a, step_b in zip(a, b):
        assert step_a.keys() == step_b.keys()
        for name in step_a:
            torch.testing.assert_close(step_a[name], step_b[name], rtol=1e-4, atol=1e-7, msg=name)


@needs_data
def test_gradient_accumulation_and_ddp_equal_one_big_batch(tiny_bert, tmp_path):
    # 70 questions: batches of 16 are 16, 16, 16, 16, 6 (five optimizer steps)
    whole = run_gradient_probe(tmp_path, tiny_bert, 16, 1)
    assert len(whole["steps"]) == 5
    # batches of 8 accumulated two by two: 8+8 four times, then 6 alone
    assert_same_steps(run_gradient_probe(tmp_path, tiny_bert, 8, 2)["steps"], whole["steps"])
    # two processes of 8 each: 35 questions per process, so each ends on a batch of 3
    ddp = run_gradient_probe(tmp_path, tiny_bert, 8, 1, processes=2)
    assert_same_steps(ddp["steps"], whole["steps"])
    # 499 test questions, predicted by every other example on each process, put back in order
    assert len(ddp["predictions"]) == 499 and ddp["predictions"] == whole["predictions"]
    # a wrong scale (each batch of 8 counted as a whole step) is caught
    wrong = [{n: 2 * g for n, g in step.items()} for step in whole["steps"]]
    with pytest.raises(AssertionError, match=r"^bert\.embeddings\.word_embeddings\.weight$"):
        assert_same_steps(wrong, whole["steps"])


# ---------------------------------------------------------------------------------------------
# The README's snippets
# The README's Trainer subclass (<!-- snippet:trainer -->), run as it stands there, against its
# own-loop `dropmix_step` (<!-- snippet:own-loop -->): same batches, same lam and n, no dropout.
# ---------------------------------------------------------------------------------------------

def readme_block(marker: str) -> str:
    """The fenced code block that follows `marker` in README.md."""
    text = (HERE / "README.md").read_text()
    after = text.split(marker, 1)[1]
    return after.split("```", 2)[1].split("\n", 1)[1]


def readme_namespace(marker: str) -> dict:
    namespace: dict = {}
    exec(compile(readme_block(marker), "README.md", "exec"), namespace)  # noqa: S102  (the README's code, as written)
    return namespace


def test_readme_own_loop_snippet_runs_as_written(tiny_classifier):
    namespace = readme_namespace("<!-- snippet:own-loop -->")
    model, tokenizer = tiny_classifier
    model.train()
    enc = tokenizer(["what is the river ?", "who was the first president", "how many",
                     "where is the city"], padding=True, return_tensors="pt")
    batch = {**enc, "labels": torch.tensor([0, 1, 2, 1])}  # no special_tokens_mask: a user's loader
    before = {n: p.clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = namespace["dropmix_step"](model, batch, optimizer, tokenizer.all_special_ids)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())


def test_readme_own_loop_snippet_gives_the_literal_step_gradients(tiny_classifier, monkeypatch):
    # The literal (grad L_clean + grad L_mixed) / 2 of the step test, against the snippet as
    # written: a bug that both snippets share (the mixed loss not halved, the partner's labels
    # rolled the wrong way) fails here, though the Trainer test would pass.
    fixed_draws(monkeypatch.setattr)  # lam = TRAINER_LAM, n = 2, before the snippet imports them
    namespace = readme_namespace("<!-- snippet:own-loop -->")
    model, tokenizer = tiny_classifier
    model.eval()  # no dropout: the snippet and the literal step see the same function
    texts = ["what is the river ?", "who was the first president", "how many", "where is the city"]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    batch = {**enc, "labels": torch.tensor([0, 1, 2, 1])}  # no special_tokens_mask: a user's loader
    recorder = GradientRecorder(model)
    namespace["dropmix_step"](model, batch, recorder, tokenizer.all_special_ids)
    (seen,) = recorder.grads
    expected = literal_step_gradients(model, tiny_batch(tokenizer, texts, [0, 1, 2, 1]),
                                      TRAINER_LAM, 2)
    assert seen.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(seen[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    model.train()


TRAINER_TEXTS = ["what is the river ?", "who was the first president", "how many",
                 "where is the city", "what is the name of the world", "why",
                 "when was the state called", "which country", "how much does the year mean",
                 "what is the origin of the city", "who did", "where is the river of the state",
                 "what is a river", "how many city", "who is the president of the country",
                 "what does the world mean"]
TRAINER_LAM = torch.tensor([0.3, 0.55, 0.2, 0.45])  # per example, fixed: the draw of sample_lam


def no_dropout_classifier(folder: Path):
    """A fresh copy of the tiny classifier with every dropout at 0, so that two copies trained
    on the same batch see the same function."""
    from transformers import AutoModelForSequenceClassification
    return AutoModelForSequenceClassification.from_pretrained(
        folder, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def fixed_draws(set_attribute) -> None:
    """lam and G's window height fixed, before the snippets import them: `set_attribute` is
    monkeypatch.setattr in a test, plain setattr in a probe program."""
    set_attribute(mix, "sample_lam", lambda alpha, size, device="cpu": TRAINER_LAM[:size].to(device))
    window_shape = patches.window_shape
    set_attribute(patches, "window_shape",
                  lambda variant, num_tokens, dim, **kw: window_shape(variant, num_tokens, dim, n=2))


def snippet_trainer(folder: Path, tmp_path: Path, examples: int, grad_accum: int, **extra):
    """(trainer, batches it will be fed, gradients before each optimizer step) for the README's
    DropMixTrainer on `examples` of TRAINER_TEXTS in batches of 4, offline on the CPU. lr 0
    and no clipping, so every optimizer step sees the weights the own loop sees."""
    from transformers import AutoTokenizer, TrainerCallback, TrainingArguments
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dataset = [{"text": text, "label": i % 3} for i, text in enumerate(TRAINER_TEXTS[:examples])]
    fed, grads = [], []

    def collate(rows):  # a user's collator; it records what the Trainer fed, in its order
        enc = tokenizer([row["text"] for row in rows], padding=True, return_tensors="pt")
        batch = {**enc, "labels": torch.tensor([row["label"] for row in rows])}
        fed.append({key: value.clone() for key, value in batch.items()})
        return batch

    class Gradients(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()})

    args = TrainingArguments(**{
        "output_dir": str(tmp_path / "trainer"), "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": grad_accum, "num_train_epochs": 1, "learning_rate": 0.0,
        "weight_decay": 0.0, "max_grad_norm": 0.0, "report_to": "none", "save_strategy": "no",
        "logging_strategy": "no", "disable_tqdm": True, "use_cpu": True,
        "remove_unused_columns": False, "dataloader_num_workers": 0, **extra})
    trainer = readme_namespace("<!-- snippet:trainer -->")["DropMixTrainer"](
        model=no_dropout_classifier(folder), args=args, train_dataset=dataset,
        data_collator=collate, processing_class=tokenizer, callbacks=[Gradients()], variant="G")
    return trainer, fed, grads


@pytest.mark.parametrize("grad_accum, batches", [(1, 1), (2, 2), (2, 3)])
def test_readme_trainer_snippet_gives_the_own_loop_gradients(grad_accum, batches,
                                                             tiny_classifier_folder, tmp_path,
                                                             monkeypatch):
    # (2, 3): the epoch's last optimizer step holds one batch, and averages over that one
    fixed_draws(monkeypatch.setattr)
    trainer, fed, grads = snippet_trainer(tiny_classifier_folder, tmp_path, 4 * batches, grad_accum)
    result = trainer.train()
    assert len(fed) == batches and len(grads) == math.ceil(batches / grad_accum)

    own_step = readme_namespace("<!-- snippet:own-loop -->")["dropmix_step"]
    model = no_dropout_classifier(tiny_classifier_folder)
    model.train()
    special_ids = trainer.processing_class.all_special_ids
    recorder = GradientRecorder(model)
    own_losses = [own_step(model, batch, recorder, special_ids, variant="G") for batch in fed]
    step_losses = []
    for step, trainer_grads in enumerate(grads):
        group = range(step * grad_accum, min((step + 1) * grad_accum, batches))
        step_losses.append(sum(own_losses[i] for i in group) / len(group))
        for name, grad in trainer_grads.items():
            # one optimizer step of the Trainer = the mean of the own loop's over its batches
            expected = sum(recorder.grads[i][name] for i in group) / len(group)
            torch.testing.assert_close(grad, expected, rtol=0, atol=1e-6,
                                       msg=lambda m, step=step, name=name: f"step {step}, {name}: {m}")
    # the loss the Trainer reports is the own loop's, averaged the same way
    assert result.training_loss == pytest.approx(float(sum(step_losses) / len(step_losses)), abs=1e-6)


def test_readme_trainer_snippet_keeps_the_clean_pass_out_of_the_all_reduce(tiny_classifier_folder,
                                                                          tmp_path, monkeypatch):
    # On one process no_sync changes nothing, and under DDP an all-reduced clean backward still
    # ends in the same averaged gradients (one all-reduce too many): so this checks the calls.
    # Every forward runs inside compute_loss_context_manager and every backward outside it,
    # through accelerator.backward; the clean ones inside accelerator.no_sync, the mixed ones
    # in the loop's context: inside its no_sync on the first of two accumulated batches,
    # outside it (the all-reduce) on the last.
    fixed_draws(monkeypatch.setattr)
    trainer, fed, grads = snippet_trainer(tiny_classifier_folder, tmp_path, 8, grad_accum=2)
    accelerator, calls = trainer.accelerator, []
    inside = {"no_sync": 0, "loss_context": 0}

    def counted(name, context):
        @contextlib.contextmanager
        def wrapper(*args, **kwargs):
            inside[name] += 1
            try:
                with context(*args, **kwargs):
                    yield
            finally:
                inside[name] -= 1
        return wrapper

    def record(kind):
        calls.append((kind, inside["no_sync"] > 0, inside["loss_context"] > 0))

    def recorded_backward(loss, _backward=accelerator.backward, **kwargs):
        record("backward")
        return _backward(loss, **kwargs)

    monkeypatch.setattr(accelerator, "no_sync", counted("no_sync", accelerator.no_sync))
    monkeypatch.setattr(trainer, "compute_loss_context_manager",
                        counted("loss_context", trainer.compute_loss_context_manager))
    monkeypatch.setattr(accelerator, "backward", recorded_backward)
    trainer.model.register_forward_pre_hook(lambda module, args: record("forward"))
    trainer.train()
    # (call, inside no_sync, inside compute_loss_context_manager)
    clean = mixed = [("forward", True, True), ("backward", True, False)]
    last_mixed = [("forward", False, True), ("backward", False, False)]
    assert calls == clean + mixed + clean + last_mixed
    assert len(fed) == 2 and len(grads) == 1  # two batches, one optimizer step


def test_readme_trainer_snippet_runs_a_bf16_step(tiny_classifier_folder, tmp_path, monkeypatch):
    # bf16=True on the CPU: accelerate wraps the model's forward in bf16 autocast; both passes
    # of the snippet run under it, and the optimizer step happens
    trainer, fed, grads = snippet_trainer(tiny_classifier_folder, tmp_path, 4, grad_accum=1,
                                          bf16=True, learning_rate=1e-3)
    autocast = []
    trainer.model.bert.register_forward_pre_hook(
        lambda module, args: autocast.append(torch.is_autocast_enabled("cpu")))
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    result = trainer.train()
    assert autocast == [True, True] and len(grads) == 1 and math.isfinite(result.training_loss)
    assert len(fed) == 1  # one batch: its clean and its mixed pass are the two forwards
    assert all(torch.isfinite(g).all() for g in grads[0].values())
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


def probe_trainer_ddp(folder: str, out: str) -> None:
    """The Trainer's own DDP, under torchrun on gloo: the README block with lam and n fixed as
    above, TRAINER_TEXTS's 16 examples, one optimizer step of 2 accumulated batches of 4 per
    process; each process saves to OUT.RANK what it was fed and the gradients it would step on."""
    fixed_draws(setattr)
    trainer, fed, grads = snippet_trainer(Path(folder), Path(out).parent, 16, grad_accum=2)
    trainer.train()
    wrapped = type(trainer.model_wrapped).__name__
    torch.save({"fed": fed, "grads": grads, "wrapped": wrapped}, f"{out}.{os.environ['RANK']}")
    # the trainer holds the DDP model, and DDP the group: free it first, so that
    # destroy_process_group joins gloo's threads
    del trainer
    torch.distributed.destroy_process_group()


def test_readme_trainer_snippet_under_ddp_averages_the_own_loop_gradients(tiny_classifier_folder,
                                                                         tmp_path, monkeypatch):
    # Two processes of 2 x 4 examples: each process's step is the mean of dropmix_step over its
    # own two batches, and DDP averages the two processes. A mixed pass inside no_sync (no
    # all-reduce at all) leaves each process its own gradients, 0.19 away from the mean.
    out = tmp_path / "trainer-ddp"
    run_probe("trainer-ddp", tiny_classifier_folder, out, processes=2)
    ranks = [torch.load(f"{out}.{rank}") for rank in (0, 1)]
    assert [r["wrapped"] for r in ranks] == ["DistributedDataParallel"] * 2
    assert [(len(r["fed"]), len(r["grads"])) for r in ranks] == [(2, 1), (2, 1)]

    fixed_draws(monkeypatch.setattr)
    own_step = readme_namespace("<!-- snippet:own-loop -->")["dropmix_step"]
    model = no_dropout_classifier(tiny_classifier_folder)
    model.train()
    from transformers import AutoTokenizer
    special_ids = AutoTokenizer.from_pretrained(tiny_classifier_folder).all_special_ids
    recorder = GradientRecorder(model)
    for r in ranks:
        for batch in r["fed"]:
            own_step(model, batch, recorder, special_ids, variant="G")
    for name in ranks[0]["grads"][0]:
        expected = sum(grads[name] for grads in recorder.grads) / len(recorder.grads)
        for rank, r in enumerate(ranks):
            torch.testing.assert_close(r["grads"][0][name], expected, rtol=0, atol=1e-6,
                                       msg=lambda m, rank=rank, name=name: f"rank {rank}, {name}: {m}")


# =============================================================================================
# 10. Encoders (section 5.2, any encoder family): train.load_encoder
# BERT, RoBERTa, DistilBERT, ALBERT, ELECTRA and MPNet: the variant's dropout in every layer,
# a DropMix-G step on pairs. MPNet (all-mpnet-base-v2) has no token types, <s> a </s></s> b
# </s> and dropout fields of its own; a tiny random MPNet stands in for the real one.
# =============================================================================================

@pytest.mark.parametrize("family", FAMILIES)
def test_every_encoder_family_gets_the_variants_dropout_and_takes_a_G_step(family, tmp_path,
                                                                            capsys):
    from transformers import AutoModelForSequenceClassification
    folder = write_tiny_encoder(tmp_path / family, family, dropout=0.37)  # odd: a missed field shows
    labels = data.TASKS["rte"].labels
    for variant, expected in (("base", 0.0), ("dropout", 0.1), ("G", 0.1)):
        (config,) = train.configs_from_args(train.build_parser().parse_args(
            ["--task", "rte", "--variant", variant, "--model", str(folder)]))
        torch.manual_seed(0)
        tokenizer, model = train.load_encoder(config.model, labels, config.dropout)
        assert dropout_probabilities(model) == {expected}, variant
        model.save_pretrained(tmp_path / "saved")            # the saved config says it too
        reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved")
        assert dropout_probabilities(reloaded) == {expected}, variant
    # one DropMix-G step on sentence pairs: finite loss, the head and the embeddings learn
    texts = [("what is the city ?", "the river"), ("who was the first president", "a name"),
             ("how many", "the world is called the world"), ("where", "in the country")]
    encoded = data.encode([data.Example(a, b, i % 2) for i, (a, b) in enumerate(texts)],
                          tokenizer, 32)
    batch = data.collate(tokenizer)(encoded)
    model.train()
    step = train.train_step(config, model, batch)
    assert math.isfinite(step["loss"]) and 0 < step["label_weight"] < 1
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0
    assert all(p.grad is not None for n, p in model.named_parameters() if "classifier" in n)


def assert_mask_spares_specials(tokenizer, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The specials ([CLS]/[SEP] or <s>/</s>) and padding, found through the tokenizer and
    made by far the most salient, are never in M, for every window shape, while ordinary
    tokens are mixed. Returns (special, I), (B, N) and (B, N, 32), for further checks."""
    specials = [tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id]
    special = torch.isin(batch["input_ids"], torch.tensor(specials))   # (B, N)
    assert (batch["attention_mask"] == 0).any() and special[:, 0].all()  # padding, a first special
    ordinary = mix.ordinary_tokens(batch)
    assert torch.equal(ordinary, ~special)
    B, N = batch["input_ids"].shape
    D = 32
    torch.manual_seed(0)
    x = torch.randn(B, N, D)
    # the special positions are by far the most salient: a mask allowed there would take them
    I = torch.rand(B, N, D) + 100 * special[..., None]
    lam = torch.ones(B)                                        # the largest budget
    for window in patches.WINDOWS:
        n, d = patches.window_shape(window, N, D, n=2)
        M = mix.region_mask(I, mix.mixing_region(ordinary), n, d, lam,
                            budget_rows=ordinary.sum(1))
        assert M.any() and not M[special].any(), window
        mixed, r = mix.dropmix(x, I, ordinary, n, d, lam)
        assert torch.equal(mixed[special], x[special]) and (r > 0).all(), window
        assert not torch.equal(mixed, x), window
    return special, I


@pytest.mark.parametrize("pairs", [False, True], ids=["single", "pairs"])
def test_mpnet_mask_never_touches_s_sep_or_padding(tiny_mpnet, pairs):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_mpnet)
    texts = [("what is the city ?", "the river"),
             ("who was the first president of the country", "a name"),
             ("how many", "the world is called the world"),
             ("where is the river , the world", "in the country of the state")]
    examples = [data.Example(a, b if pairs else None, i % 2) for i, (a, b) in enumerate(texts)]
    batch = data.collate(tokenizer)(data.encode(examples, tokenizer, 32))
    assert "token_type_ids" not in batch                       # MPNet has no token types
    first = tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    expected = ["<s>", "what", "is", "the", "city", "?", "</s>"]
    expected += ["</s>", "the", "river", "</s>"] if pairs else []
    assert first[:len(expected)] == expected and set(first[len(expected):]) == {"<pad>"}
    special, I = assert_mask_spares_specials(tokenizer, batch)
    # SSMix's spans, segment by segment, leave them alone too
    segments = mix.token_segments(~special, special & batch["attention_mask"].bool())
    assert set(segments[0].tolist()) == ({-1, 0, 1} if pairs else {-1, 0})
    ids, r, _ = mix.ssmix(batch["input_ids"], I, segments, share=0.5)
    assert torch.equal(ids[special], batch["input_ids"][special]) and (r > 0).any()


@pytest.mark.parametrize("pairs", [False, True], ids=["single", "pairs"])
@pytest.mark.parametrize("family", FAMILIES)
def test_no_family_s_mask_touches_its_special_tokens_or_padding(family, pairs, tmp_path):
    # the MPNet test above for every family: each writes its own specials ([CLS]/[SEP] or
    # <s>/</s></s>), and the mask must find them through the tokenizer, never by id
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(write_tiny_encoder(tmp_path / family, family))
    texts = [("what is the city ?", "the river"), ("who was the first president", "a name"),
             ("how many", "the world is called the world"), ("where is the river", "in it")]
    examples = [data.Example(a, b if pairs else None, i % 2) for i, (a, b) in enumerate(texts)]
    assert_mask_spares_specials(tokenizer, data.collate(tokenizer)(
        data.encode(examples, tokenizer, 32)))


@needs_data
@pytest.mark.parametrize("variant", train.VARIANTS)
def test_every_variant_trains_end_to_end_on_real_trec_with_mpnet(variant, tiny_mpnet, tmp_path):
    out = tmp_path / "run"
    assert tiny_run(tiny_mpnet, out, "--variant", variant) == 0
    results = results_of(out)
    assert results["data"]["train"] == 64 and results["final"]["examples"] == 500
    (epoch,) = results["epochs"]
    assert math.isfinite(epoch["train_loss"])
    if train.VARIANTS[variant].mixes:
        assert 0 < epoch["mean_label_weight"] < 1
    saved = json.loads((out / "seed-1" / "model" / "config.json").read_text())
    assert saved["model_type"] == "mpnet"
    expected = 0.0 if variant in ("base", "mixup") else 0.1
    assert saved["hidden_dropout_prob"] == saved["attention_probs_dropout_prob"] == expected


@needs_data
@pytest.mark.parametrize("variant", ["ssmix", "G"])
def test_mpnet_trains_end_to_end_on_sentence_pairs(variant, tiny_mpnet, tmp_path):
    out = tmp_path / "rte"
    assert tiny_run(tiny_mpnet, out, "--variant", variant, "--no-save-model",
                    run=TINY_PAIRS_RUN) == 0
    results = results_of(out)
    assert results["data"]["train"] == 64 and results["final"]["examples"] == 277
    assert results["final"]["split"] == "dev" and results["config"]["variant"] == variant
    (epoch,) = results["epochs"]
    assert math.isfinite(epoch["train_loss"]) and 0 < epoch["mean_label_weight"] < 1


# =============================================================================================
# The probe programs: python test_dropmix.py probe-NAME ARGS... (alone or under torchrun)
# =============================================================================================

PROBES = {"probe-gradients": probe_gradients, "probe-trainer-ddp": probe_trainer_ddp}

if __name__ == "__main__":
    PROBES[sys.argv[1]](*sys.argv[2:])
