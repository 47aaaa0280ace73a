"""Mixing two examples: Dropout on X, Mixup, DropMix, the SSMix baseline, and the mixed loss.

Paper: Kong et al., "DropMix", EMNLP 2022.
    section 3.1  Dropout on the word embeddings        `input_dropout`
    section 3.2  Mixup, eq. 1                           `mixup`, `sample_lam`
    section 4    DropMix, eq. 2 and the label, eq. 5   `dropmix`
    section 4.3  the loss, eq. 6                        `mixed_cross_entropy`
    section 5.2  the SSMix baseline (Yoon et al. 2021)  `ssmix`

Conventions (B = batch, N = tokens, D = embedding channels):
    X_A  (B, N, D)  word embeddings of the batch
    X_B  (B, N, D)  its partner: the batch rolled by one, X_B[b] = X_A[b - 1]. The loader
                    shuffles, so this is a random pairing, and no example meets itself (B >= 2).
    lam  (B,)       one Beta(alpha, alpha) draw per example
    r    (B,)       the share of example b that comes from its partner: its label weight.
                    Every variant measures it on A: Mixup's lam weighs all of X_A; SSMix's is
                    B's tokens over A's ordinary tokens; DropMix's is S / (L_A D), L_A being
                    A's own number of ordinary tokens.

Imports torch, and patches.py (the mask of eq. 4) where DropMix needs it, so that this file
also copies alone for Mixup, SSMix and the loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def partner(t: torch.Tensor) -> torch.Tensor:
    """The partner of every example: the batch rolled by one along dim 0 (X_B[b] = X_A[b-1])."""
    return t.roll(1, dims=0)


def sample_lam(alpha: float, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """lam ~ Beta(alpha, alpha), one per example, (size,). Uses torch's global generator."""
    concentration = torch.tensor(float(alpha))
    return torch.distributions.Beta(concentration, concentration).sample((size,)).to(device)


# ---------------------------------------------------------------------------------------------
# Section 3.1 Dropout and section 3.2 Mixup (the baselines of section 5.2)
# ---------------------------------------------------------------------------------------------

def input_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Section 3.1: X~ = M * X with M_ij ~ Bernoulli(1 - p) kept units, label unchanged.

    Written as torch's inverted dropout (kept units scaled by 1 / (1 - p)), the form BERT's own
    dropout layers use, so the expected input stays the same.
    """
    return F.dropout(x, p=p, training=True)


def mixup(x: torch.Tensor, attention_mask: torch.Tensor,
          lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Section 3.2, eq. 1: X~ = (1 - lam) X_A + lam X_B; the label weight of Y_B is lam, the
    share of every unit of X_A (all of A's positions) that B's values make up.

    x: (B, N, D), attention_mask: (B, N), lam: (B,). Both sentences are read, so the mixed
    input attends to the union of the two attention masks. Returns (X~, its attention mask).
    """
    lam_ = lam.to(x.dtype)[:, None, None]                                # (B, 1, 1)
    # eq. 1: X~ = (1 - lam) * X_A + lam * X_B
    mixed = (1 - lam_) * x + lam_ * partner(x)                          # (B, N, D)
    return mixed, torch.maximum(attention_mask, partner(attention_mask))  # (B, N)


# ---------------------------------------------------------------------------------------------
# Section 4: DropMix
# ---------------------------------------------------------------------------------------------

def ordinary_tokens(batch: dict[str, torch.Tensor],
                    special_ids: list[int] | None = None) -> torch.Tensor:
    """(B, N) bool: positions that hold an ordinary token (not [CLS], [SEP] or padding).

    Uses the tokenizer's special_tokens_mask when the batch has it (data.py asks for it), else
    `special_ids`, e.g. tokenizer.all_special_ids, so that no token id is hard-coded.
    """
    real = batch["attention_mask"].bool()
    if "special_tokens_mask" in batch:
        return real & ~batch["special_tokens_mask"].bool()
    if special_ids is None:
        raise ValueError("the batch has no special_tokens_mask: pass special_ids, "
                         "e.g. tokenizer.all_special_ids")
    specials = torch.tensor(special_ids, device=batch["input_ids"].device)
    return real & ~torch.isin(batch["input_ids"], specials)


def mixing_region(ordinary: torch.Tensor) -> torch.Tensor:
    """V, (B, N) bool: the positions that hold ordinary tokens in both X_A and its partner X_B.

    Only there may a unit of X_A be replaced by the unit of X_B at the same position; [CLS],
    [SEP] and padding are never mixed. In a sentence pair the [SEP] of A and of B sit at
    different positions, so V need not be contiguous.
    """
    return ordinary & partner(ordinary)


def region_mask(saliency: torch.Tensor, region: torch.Tensor, n: int, d: int,
                lam: float | torch.Tensor, budget_rows: torch.Tensor | None = None) -> torch.Tensor:
    """Section 4.1, eq. 4, inside the region V: M, (B, N, D) bool, 0 outside V.

    V need not be contiguous, so its rows are first moved to the front of each example (in
    order): patch_mask then sees an ordinary (|V|, D) map per example, and its mask is
    scattered back to the V positions. saliency: I_A (B, N, D); region: V (B, N); lam float
    or (B,); budget_rows: (B,) the N of the budget floor(lam N D), default |V| (dropmix passes
    L_A). When V holds fewer units than the budget, M takes what V allows.
    """
    from patches import patch_mask  # section 4.1's mask: patches.py beside this file
    B, N, D = saliency.shape
    key = (~region).long() * N + torch.arange(N, device=saliency.device)  # (B, N)
    order = key.argsort(dim=1)[:, :, None].expand(B, N, D)               # (B, N, D)
    rows_of_V = region.sum(1)                                            # (B,)
    compact = patch_mask(saliency.gather(1, order), n, d, lam, rows_of_V,
                         budget_rows)                                    # (B, N, D), rows < |V|
    return torch.zeros_like(compact).scatter_(1, order, compact)         # (B, N, D)


def dropmix(x: torch.Tensor, saliency: torch.Tensor, ordinary: torch.Tensor, n: int, d: int,
            lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Section 4, eq. 2 and eq. 5: drop the most salient n x d patches of X_A within a lam
    budget and put X_B's units in their place.

    x:        X_A, (B, N, D); X_B = partner(X_A).
    saliency: I_A = |dL/dX_A|, (B, N, D).
    ordinary: (B, N) bool, the positions of A's ordinary tokens (`ordinary_tokens`). The units
              replaced lie in V = `mixing_region(ordinary)`; outside V, M = 0.
    n, d:     the window (patches.window_shape); lam: (B,) the Beta draws.
    Returns X~ (B, N, D) and the label weight r = S / (L_A * D), (B,): the share of A's own
    units that now hold B's values.
    """
    D = x.shape[2]
    region = mixing_region(ordinary)                                     # V: (B, N)
    # L_A, A's own number of ordinary tokens: the N of lam N D (section 4) and of S / (N D)
    # (eq. 5). The mixed input keeps all of A's L_A tokens (A's attention mask), so the budget
    # and the label weight count A's units, while M may only take units of V, where B holds a
    # token too. Where |V| < L_A (a shorter partner) the budget may exceed what V holds.
    L_A = ordinary.sum(1)                                                # (B,)
    M = region_mask(saliency, region, n, d, lam, budget_rows=L_A)        # (B, N, D)
    # eq. 2: X~ = (1 - M) * X_A + M * X_B   (M is 0/1, so this is a selection)
    mixed = torch.where(M, partner(x), x)                                # (B, N, D)
    # eq. 5: the label weight of Y_B is S / (L_A D), S = sum of M
    S = M.sum((1, 2))                                                    # (B,)
    r = S / (L_A * D).clamp(min=1)                                       # (B,), 0 when L_A = 0
    return mixed, r.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Section 4.3: the loss
# ---------------------------------------------------------------------------------------------

def mixed_cross_entropy(logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor,
                        r: torch.Tensor) -> torch.Tensor:
    """Section 4.3, eq. 6 with the eq. 5 weight: mean over the batch of
        (1 - r) CE(logits, Y_A) + r CE(logits, Y_B),
    i.e. cross-entropy against the soft label (1 - r) Y_A + r Y_B. logits (B, C); r (B,)."""
    logits = logits.float()
    ce_a = F.cross_entropy(logits, y_a, reduction="none")                # (B,)
    ce_b = F.cross_entropy(logits, y_b, reduction="none")                # (B,)
    r = r.float()
    return ((1 - r) * ce_a + r * ce_b).mean()


# ---------------------------------------------------------------------------------------------
# Section 5.2: the SSMix baseline (Yoon et al., Findings of ACL 2021), on token ids
# ---------------------------------------------------------------------------------------------
#
# SSMix mixes at the level of words, not units: it cuts the span of X_A that matters least to
# the classifier and pastes, in its place, the span of X_B that matters most. "Matters" is the
# saliency of a token, the L2 norm of its row of I (so the map clean_step already made serves
# here too), averaged over the span. The span is a fixed share of A's ordinary tokens, and
# the label of B gets the share of A's tokens that were replaced. In a sentence pair each
# segment is mixed with the partner's same segment, so [SEP] and token types stay put.

def token_segments(ordinary: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
    """(B, N) long: 0 for the ordinary tokens of the first segment, 1 for the second, -1 for
    special tokens and padding. A segment is what lies between two runs of special tokens
    ([CLS] a [SEP] b [SEP] for BERT, <s> a </s></s> b </s> for RoBERTa)."""
    run_start = special & ~torch.nn.functional.pad(special, (1, 0))[:, :-1]  # (B, N)
    segment = run_start.long().cumsum(1) - 1                                 # (B, N)
    return segment.masked_fill(~ordinary, -1)


def ssmix(input_ids: torch.Tensor, saliency: torch.Tensor, segments: torch.Tensor,
          share: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Saliency-based span mixup on token ids.

    input_ids: (B, N) of X_A; the partner is partner(input_ids).
    saliency:  I_A, (B, N, D), from clean_step; the partner's is partner(I_A).
    segments:  (B, N) from `token_segments`.
    share:     the span is max(1, int(share * L_A)) tokens of each segment (L_A its length).
    Returns the mixed ids (B, N), the label weight r (B,) = replaced / all ordinary tokens of
    A (a share of A, like DropMix's S / (L_A D)), and a (B,) bool of the examples left
    unmixed because a partner segment was shorter than the span.
    """
    B, N = input_ids.shape
    token_saliency = saliency.float().norm(dim=2).double()              # (B, N)
    mixed = input_ids.clone()
    replaced = torch.zeros(B, dtype=torch.long, device=input_ids.device)
    too_short = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    positions = torch.arange(N, device=input_ids.device)
    for k in range(int(segments.max()) + 1 if segments.numel() else 0):  # 1 or 2 segments
        in_a = segments == k                                             # (B, N)
        in_b = partner(in_a)
        length_a, length_b = in_a.sum(1), in_b.sum(1)                    # (B,)
        span = (share * length_a.double()).long().clamp(min=1)           # (B,)
        mixable = (length_a > 0) & (length_b >= span)
        too_short |= (length_a > 0) & ~mixable
        start_a = _span_start(token_saliency, in_a, span, lowest=True)   # (B,)
        start_b = _span_start(partner(token_saliency), in_b, span, lowest=False)
        # Position j of A's span takes the token at j - start_a + start_b of B.
        in_span = (positions >= start_a[:, None]) & (positions < (start_a + span)[:, None])
        in_span &= mixable[:, None]                                      # (B, N)
        source = (positions - start_a[:, None] + start_b[:, None]).clamp(0, N - 1)
        mixed = torch.where(in_span, partner(input_ids).gather(1, source), mixed)
        replaced += in_span.sum(1)
    r = replaced.double() / (segments >= 0).sum(1).clamp(min=1)   # over all of A's ordinary tokens
    return mixed, r.float(), too_short


def _span_start(token_saliency: torch.Tensor, inside: torch.Tensor, span: torch.Tensor,
                lowest: bool) -> torch.Tensor:
    """(B,) start of the span of `span[b]` consecutive tokens within `inside[b]` (a contiguous
    run) with the lowest (or highest) total saliency; 0 where no such span fits. The mean over
    a span of fixed length orders spans like its sum, which a cumulative sum gives for every
    start at once."""
    B, N = inside.shape
    cumulative = F.pad((token_saliency * inside).cumsum(1), (1, 0))      # (B, N + 1)
    starts = torch.arange(N, device=inside.device)
    ends = (starts[None, :] + span[:, None]).clamp(max=N)                # (B, N)
    span_sum = cumulative.gather(1, ends) - cumulative[:, :N]            # (B, N)
    first = inside.long().argmax(1)                                      # (B,)
    last_start = first + inside.sum(1) - span                            # (B,)
    fits = (starts >= first[:, None]) & (starts <= last_start[:, None])  # (B, N)
    worst = float("inf") if lowest else float("-inf")
    span_sum = span_sum.masked_fill(~fits, worst)
    start = span_sum.argmin(1) if lowest else span_sum.argmax(1)
    return start.masked_fill(~fits.any(1), 0)
