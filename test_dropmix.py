"""Tests of the DropMix reference: the method against brute-force versions of its equations,
the loaders on the real files, and end-to-end runs on a tiny BERT built here.

    python -m pytest -q test_dropmix.py

Real-data tests read ../shared/data (or $DROPMIX_DATA) and are skipped, with the reason, where
it is absent. Nothing is downloaded.
"""
from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import random
import re
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import data
import mix
import patches
import saliency
import train

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("DROPMIX_DATA") or HERE.parent / "shared" / "data")
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"benchmark data not found at {DATA}")


# =============================================================================================
# patches.py: eq. 3, eq. 4 and section 4.2 against literal implementations
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


def literal_patch_mask(I: torch.Tensor, n: int, d: int, lam, lengths) -> torch.Tensor:
    """Eq. 3-4 as written: rank the windows of the example's L rows (a window taller than the
    example cut to L), then add whole windows, best first, until the next one would take the
    union past floor(lam * L * D) units."""
    B, N, D = I.shape
    M = torch.zeros(B, N, D, dtype=torch.bool)
    for b in range(B):
        L = int(lengths[b])
        h = min(n, L)
        scores = literal_window_activation(I[b:b + 1, :L], h, d)[0]
        windows = sorted(((float(scores[i, j]), i, j) for i in range(L - h + 1)
                          for j in range(D - d + 1)), reverse=True)
        budget = math.floor(float(lam[b]) * L * D)
        union: set = set()
        for _, i, j in windows:
            grown = union | set(patches.window_units(i, j, h, d))
            if len(grown) > budget:
                break
            union = grown
        for p, q in union:
            M[b, p, q] = True
    return M


def random_mask_case(rng: random.Random):
    B, N, D = rng.randint(1, 4), rng.randint(1, 9), rng.randint(1, 8)
    n = rng.choice([1, 2, 3, rng.randint(1, N), N, N + 3])
    d = rng.choice([1, 2, D, rng.randint(1, D)])
    d = min(d, D)
    lengths = torch.tensor([rng.randint(1, N) for _ in range(B)])
    lengths[rng.randrange(B)] = N
    lam = torch.tensor([rng.choice([0.0, 1e-3, 0.02, rng.random(), 0.98, 0.999, 1.0])
                        for _ in range(B)], dtype=torch.float64)
    I = torch.rand(B, N, D, dtype=torch.float64, generator=torch.Generator().manual_seed(rng.randrange(10**9)))
    return I, n, d, lam, lengths


def test_patch_mask_equals_literal_eq4_on_random_cases():
    rng = random.Random(0)
    for _ in range(200):
        I, n, d, lam, lengths = random_mask_case(rng)
        expected = literal_patch_mask(I, n, d, lam, lengths)
        got = patches.patch_mask(I, n, d, lam, lengths)
        assert torch.equal(got, expected), (I.shape, n, d, lam, lengths)


def test_patch_mask_float32_and_scalar_lam():
    rng = random.Random(1)
    for _ in range(50):
        I, n, d, lam, lengths = random_mask_case(rng)
        I32 = I.float()
        expected = literal_patch_mask(I32.double(), n, d, lam[:1].expand(len(lam)), lengths)
        assert torch.equal(patches.patch_mask(I32, n, d, float(lam[0]), lengths), expected)


def test_kth_largest_sorting_and_selection_agree():
    g = torch.Generator().manual_seed(0)
    values = torch.rand(7, 50, generator=g)
    values[values < 0.3] = -math.inf
    k = torch.randint(0, 55, (7,), generator=g)
    by_sort = patches._kth_largest_by_sorting(values, k)
    by_select = patches._kth_largest_by_selection(values, k)
    assert torch.equal(by_sort, by_select)
    for b in range(7):
        finite = sorted(values[b][values[b] > -math.inf].tolist(), reverse=True)
        expected = finite[k[b]] if k[b] < len(finite) else -math.inf
        assert by_sort[b].item() == expected


def test_window_activation_equals_looped_norms():
    g = torch.Generator().manual_seed(2)
    I = torch.rand(2, 6, 5, dtype=torch.float64, generator=g)
    for n, d in [(1, 1), (2, 1), (3, 2), (6, 5), (1, 5), (4, 3)]:
        got = patches.window_activation(I, n, d)
        assert got.shape == (2, 6 - n + 1, 5 - d + 1)
        torch.testing.assert_close(got, literal_window_activation(I, n, d))


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
    with pytest.raises(ValueError):
        patches.window_shape("X", 40, 384)
    with pytest.raises(ValueError):
        patches.window_shape("G", 40, 384, d=385)


def mask_through_dropmix(variant, lengths_a, D=6, lam=0.5, n=None, seed=0):
    """dropmix on a single-sentence batch of the given lengths ([CLS] ... [SEP] pad)."""
    B, N = len(lengths_a), max(lengths_a) + 2
    g = torch.Generator().manual_seed(seed)
    special = torch.ones(B, N, dtype=torch.bool)
    attention = torch.zeros(B, N, dtype=torch.long)
    for b, length in enumerate(lengths_a):
        special[b, 1:length + 1] = False
        attention[b, :length + 2] = 1
    batch = {"attention_mask": attention, "special_tokens_mask": special.long()}
    region = mix.mixing_region(mix.ordinary_tokens(batch))
    I = torch.rand(B, N, D, generator=g)
    x = torch.randn(B, N, D, generator=g)
    n_, d_ = patches.window_shape(variant, N, D, n=n)
    lam_t = torch.full((B,), lam)
    mixed, r = mix.dropmix(x, I, region, n_, d_, lam_t)
    M = mixed != x  # randn: a replaced unit differs from the original
    return M, r, region, lam_t


@pytest.mark.parametrize("variant", ["U", "C", "W", "G"])
def test_dropmix_settings_stay_in_V_and_within_budget(variant):
    for seed in range(20):
        rng = random.Random(seed)
        lengths = [rng.randint(1, 9) for _ in range(5)]
        lam = rng.random()
        M, r, region, lam_t = mask_through_dropmix(variant, lengths, lam=lam, seed=seed,
                                                   n=2 if variant in "WG" else None)
        assert not M[~region].any()  # nothing outside V: [CLS], [SEP], padding, partner's pad
        L, D = region.sum(1), M.shape[2]
        S = M.sum((1, 2))
        assert (S <= torch.floor(lam * L * D)).all()
        torch.testing.assert_close(r, S / (L * D).clamp(min=1))
        for b in range(M.shape[0]):
            Mb = M[b][region[b]]  # (L, D)
            if variant == "C":    # whole channels of the valid rows
                assert (Mb.all(0) | ~Mb.any(0)).all()
            if variant == "W":    # whole rows
                assert (Mb.all(1) | ~Mb.any(1)).all()


def test_unit_variant_takes_single_most_salient_units():
    I = torch.tensor([[[0.1, 0.9], [0.5, 0.2], [0.8, 0.3]]])  # (1, 3, 2)
    M = patches.patch_mask(I, 1, 1, 0.5, torch.tensor([3]))   # budget floor(0.5 * 6) = 3
    assert M.tolist() == [[[False, True], [True, False], [True, False]]]


def test_mixing_identities():
    M, r, region, _ = mask_through_dropmix("G", [4, 6, 5], lam=0.0, n=2)
    assert not M.any() and (r == 0).all()          # M = 0 gives X_A
    g = torch.Generator().manual_seed(3)
    B, N, D = 3, 8, 4
    x = torch.randn(B, N, D, generator=g)
    region = torch.zeros(B, N, dtype=torch.bool)
    region[:, 1:5] = True
    mixed, r = mix.dropmix(x, torch.rand(B, N, D, generator=g), region, 2, 1, torch.ones(B))
    assert torch.equal(mixed[region], mix.partner(x)[region])  # M = 1 on V gives X_B on V
    assert torch.equal(mixed[~region], x[~region])
    assert torch.equal(r, torch.ones(B))


def test_mixed_cross_entropy_is_soft_label_cross_entropy():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(6, 5, generator=g)
    y_a, y_b = torch.randint(0, 5, (6,), generator=g), torch.randint(0, 5, (6,), generator=g)
    r = torch.rand(6, generator=g)
    soft = (1 - r)[:, None] * F.one_hot(y_a, 5) + r[:, None] * F.one_hot(y_b, 5)
    expected = -(soft * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(mix.mixed_cross_entropy(logits, y_a, y_b, r), expected)


def test_mixup_eq1_and_attention_union():
    x = torch.arange(24.0).view(3, 2, 4)
    attention = torch.tensor([[1, 0], [1, 1], [1, 0]])
    lam = torch.tensor([0.25, 0.5, 1.0])
    mixed, union = mix.mixup(x, attention, lam)
    torch.testing.assert_close(mixed[1], 0.5 * x[1] + 0.5 * x[0])
    torch.testing.assert_close(mixed[2], x[1])
    assert union.tolist() == [[1, 0], [1, 1], [1, 1]]


def test_mixing_region_of_sentence_pairs_is_not_contiguous():
    # A: [CLS] a a [SEP] b [SEP] ; B: [CLS] a [SEP] b b [SEP]
    special = torch.tensor([[1, 0, 0, 1, 0, 1], [1, 0, 1, 0, 0, 1]])
    batch = {"attention_mask": torch.ones(2, 6, dtype=torch.long), "special_tokens_mask": special}
    region = mix.mixing_region(mix.ordinary_tokens(batch))
    assert region[0].tolist() == [False, True, False, False, True, False]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, 3, generator=g)
    mixed, r = mix.dropmix(x, torch.rand(2, 6, 3, generator=g), region, 1, 1, torch.ones(2))
    assert torch.equal(mixed[region], mix.partner(x)[region])
    assert torch.equal(mixed[~region], x[~region])


# =============================================================================================
# SSMix (mix.ssmix) against a brute-force span search
# =============================================================================================

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
# A tiny BERT, built here: saliency.py and the end-to-end runs
# =============================================================================================

TINY_WORDS = """what how who where when which why is are was the a of in to and for name does
did many much city country called first world year origin mean river state president""".split()


def write_tiny_bert(folder: Path, num_labels: int | None = None) -> Path:
    """A 2-layer, 32-wide BERT with random weights and a small vocabulary, saved like a
    pretrained checkpoint (no classifier head unless num_labels is given)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast, BertForSequenceClassification
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "?", ",", "'", "."] + TINY_WORDS
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 ignores BertTokenizerFast(vocab_file=...): load the folder instead
    tokenizer = BertTokenizerFast.from_pretrained(str(folder))
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config.__class__(**{**config.to_dict(), "num_labels": num_labels})) \
        if num_labels else BertModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    folder = write_tiny_bert(tmp_path_factory.mktemp("tiny-classifier"), num_labels=3)
    return AutoModelForSequenceClassification.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def tiny_batch(tokenizer, texts, labels):
    enc = tokenizer(texts, padding=True, return_tensors="pt", return_special_tokens_mask=True)
    return {**enc, "labels": torch.tensor(labels)}


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
    model.train()


def test_model_inputs_drops_labels_and_special_mask():
    batch = {"input_ids": 1, "attention_mask": 2, "token_type_ids": 3, "labels": 4,
             "special_tokens_mask": 5}
    assert saliency.model_inputs(batch) == {"attention_mask": 2, "token_type_ids": 3}


def run_train(*argv: str) -> int:
    return train.main([str(a) for a in argv])


TINY_RUN = ("--task", "trec", "--train-fraction", "0.0118", "--epochs", "1",
            "--batch-size", "16", "--no-progress", "--device", "cpu")


@needs_data
@pytest.mark.parametrize("variant", train.VARIANTS)
def test_every_variant_trains_end_to_end_on_real_trec(variant, tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train(*TINY_RUN, "--variant", variant, "--model", tiny_bert,
                     "--data-dir", DATA, "--output-dir", out) == 0
    results = json.loads((out / "seed-1" / "results.json").read_text())
    assert results["data"]["train"] == 64 and results["data"]["test"] == 500
    (epoch,) = results["epochs"]
    assert math.isfinite(epoch["train_loss"])
    assert results["final"]["split"] == "test" and 0 <= results["final"]["accuracy"] <= 1
    if variant in train.MIXING_VARIANTS:
        assert 0 < epoch["mean_label_weight"] < 1
    assert results["config"]["dropout"] == (0.0 if variant in ("base", "mixup") else 0.1)
    from transformers import pipeline
    classify = pipeline("text-classification", model=str(out / "seed-1" / "model"), device="cpu")
    assert classify("what is the name of the river ?")[0]["label"] in data.TASKS["trec"].label_names
    assert not (out / "seed-1" / "checkpoint.pt").exists()


@needs_data
def test_several_seeds_give_a_mean_and_std(tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train(*TINY_RUN, "--variant", "dropout", "--model", tiny_bert, "--seeds", "1,2",
                     "--data-dir", DATA, "--output-dir", out, "--no-save-model") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [1, 2] and len(summary["accuracy"]) == 2
    assert "+-" in capsys.readouterr().out


def test_missing_data_without_network_is_one_message_and_status_2(tiny_bert, tmp_path,
                                                                     monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    status = run_train(*TINY_RUN, "--model", tiny_bert, "--data-dir", tmp_path / "empty",
                       "--output-dir", tmp_path / "out")
    err = capsys.readouterr().err
    assert status == 2
    assert "TREC.train.all" in err and str(tmp_path / "empty") in err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "TREC.train.all" in errors[0]
