"""Patch selection of DropMix: which units of X_A are dropped and patched with X_B.

Paper: Kong et al., "DropMix: A Textual Data Augmentation Combining Dropout with Mixup",
EMNLP 2022. This file is sections 4.1 (windows, eq. 3 and eq. 4) and 4.2 (window settings).

    I  (B, N, D)   saliency map of the word embeddings X_A, one value per unit (token p, channel q)
    F  (B, N-n+1, D-d+1)   window activation: the L2 norm of every n x d window of I, stride 1
    M  (B, N, D)   0/1 mask: 1 on the units replaced by X_B (eq. 2: X~ = (1 - M) * X_A + M * X_B)

Windows are taken in descending F; M is the union of the longest prefix of that order whose
union still has at most floor(lam * L * D) units (eq. 4, with "=" read as "at most": a union of
whole windows rarely lands on the budget exactly).

The only import is torch, so this file can be copied into another project on its own.
Run `python patches.py` for the speed table of `patch_mask` against a literal loop version.
"""
from __future__ import annotations

import math

import torch

# Section 5.3: "we set n in [2, 32] for DropMix-W and DropMix-G".
N_RANGE = (2, 32)
VARIANTS = ("U", "C", "W", "G")


# ---------------------------------------------------------------------------------------------
# Section 4.1: the window activation F and the index mapping f (eq. 3)
# ---------------------------------------------------------------------------------------------

def _box_sum(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Sum of every run of `size` consecutive entries along `dim` (stride 1).

    `unfold` + `sum` adds each window directly: no cumulative sums, so no cancellation error
    when a small window follows large ones, and on a CPU it is 20-40x faster than avg_pool2d
    with a (n, 1) kernel. The sum is separable, so an n x d window is two 1-D passes.
    """
    return x if size == 1 else x.unfold(dim, size, 1).sum(-1)


def _sliding_max(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """out[.., p, ..] = max of x over the windows that cover position p along `dim`.

    x holds one value per window start (length K - size + 1 along `dim`); padding it with
    size - 1 entries of -inf on both sides and taking the max of every run of `size` gives,
    for each of the K positions, the best window that covers it.
    """
    if size == 1:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [size - 1, size - 1]
    padded = torch.nn.functional.pad(x, pad, value=-math.inf)
    return padded.unfold(dim, size, 1).amax(-1)


def window_activation(saliency: torch.Tensor, n: int, d: int) -> torch.Tensor:
    """Section 4.1: slide an n x d window (stride 1) over I and take each window's L2 norm.

    saliency: I, (B, N, D). Returns F, (B, N - n + 1, D - d + 1), with
        F[b, i, j] = || I[b, i:i+n, j:j+d] ||_2.
    """
    B, N, D = saliency.shape
    if not (1 <= n <= N and 1 <= d <= D):
        raise ValueError(f"window {n} x {d} does not fit a {N} x {D} saliency map")
    if n == 1 and d == 1:
        return saliency.abs()  # a 1 x 1 window: the L2 norm of one unit is its magnitude
    energy = saliency.square()                                   # (B, N, D)
    energy = _box_sum(energy, n, dim=1)                          # (B, N-n+1, D)
    energy = energy.sum(2, keepdim=True) if d == D else _box_sum(energy, d, dim=2)
    # F = sqrt(sum of I^2 over the window), the "L2 norm as an activation function"
    return energy.sqrt()                                         # (B, N-n+1, D-d+1)


def window_units(i: int, j: int, n: int, d: int) -> list[tuple[int, int]]:
    """Eq. 3, the index mapping f from a window of F to the units of I it covers:

        f(i, j) = U_{p=i}^{i+n-1} U_{q=j}^{j+d-1} (p, q)

    For readers and tests; `patch_mask` never enumerates units.
    """
    return [(p, q) for p in range(i, i + n) for q in range(j, j + d)]


# ---------------------------------------------------------------------------------------------
# Section 4.1: the mask M (eq. 4)
# ---------------------------------------------------------------------------------------------
#
# Why no sort of the windows is needed. Let best(u) be the score of the best window covering
# unit u. With distinct scores F_1 > F_2 > ..., the union of the top k windows is exactly
# {u : best(u) >= F_k}. So the unions of all prefixes are the level sets of `best`, and the
# longest prefix whose union has at most `budget` units is {u : best(u) > t}, where t is the
# (budget + 1)-th largest value of `best` over the example's units (t = -inf when the budget
# covers every unit). That is a sliding sum (F), a sliding max (best) and one order
# statistic per example, all batched.
#
# Windows taller than an example. Rows >= L hold zeros, so the window that starts at row 0
# and reaches past row L - 1 has the same sum as the window cut to L rows, and covers the
# same valid units. Letting an example with L <= n keep exactly that one window start per
# channel (and nothing else) handles the cut without splitting the batch.
#
# Each window shape gets the cheapest exact path:
#   * n whole rows (W):      every unit of a row has the same best: rank the N rows;
#   * every example no taller than the window (C, and G when n >= every L): every unit of a
#                            column has the same best: rank the D columns;
#   * anything else (U, G):  rank the L * D units.


def _kth_largest(values: torch.Tensor, k: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Per row b, the (k[b] + 1)-th largest of values[b, :count[b]] (k is 0-based), or -inf
    when k[b] >= count[b]. values: (B, K); k, count: (B,) long. Entries past count[b] (the
    example's padding) are ignored.

    This order statistic is most of the cost of U and G. A GPU sorts all rows in one kernel;
    a CPU is 2x faster selecting each row on its own (quickselect) than sorting the batch
    (5 ms against 11 ms for 32 x 12,288 values), and the loop runs over examples, not units.
    """
    if values.device.type == "cpu":
        return _kth_largest_by_selection(values, k, count)
    return _kth_largest_by_sorting(values, k, count)


def _kth_largest_by_sorting(values: torch.Tensor, k: torch.Tensor,
                            count: torch.Tensor) -> torch.Tensor:
    K = values.shape[1]
    padding = torch.arange(K, device=values.device) >= count[:, None]           # (B, K)
    ordered = values.masked_fill(padding, -math.inf).sort(dim=1, descending=True).values
    kth = ordered.gather(1, k.clamp(max=K - 1)[:, None]).squeeze(1)             # (B,)
    return kth.masked_fill(k >= count, -math.inf)


def _kth_largest_by_selection(values: torch.Tensor, k: torch.Tensor,
                              count: torch.Tensor) -> torch.Tensor:
    kth = torch.full(k.shape, -math.inf, dtype=values.dtype, device=values.device)
    for b, (k_b, count_b) in enumerate(zip(k.tolist(), count.tolist())):
        if k_b < count_b:
            # the (k+1)-th largest of `count` values is the (count-k)-th smallest
            kth[b] = values[b, :count_b].kthvalue(count_b - k_b).values
    return kth


def _valid_starts(lengths: torch.Tensor, n: int, num_starts: int) -> torch.Tensor:
    """(B, num_starts) bool: window starts i whose window stays inside the example, i + n <= L;
    an example with L <= n keeps the single start i = 0 (its window, cut to L)."""
    starts = torch.arange(num_starts, device=lengths.device)
    return starts <= (lengths - n).clamp(min=0)[:, None]


def _mask_rows(saliency: torch.Tensor, n: int, budget: torch.Tensor,
               lengths: torch.Tensor) -> torch.Tensor:
    """Windows of n whole rows (d = D): W's windows."""
    B, N, D = saliency.shape
    row_energy = saliency.square().sum(2)                               # (B, N)
    scores = _box_sum(row_energy, n, dim=1).sqrt()                      # F: (B, N-n+1)
    scores = scores.masked_fill(~_valid_starts(lengths, n, N - n + 1), -math.inf)
    best = _sliding_max(scores, n, dim=1)                               # (B, N)
    # Each row holds D units of equal best, so the (budget + 1)-th largest unit is the
    # (floor(budget / D) + 1)-th largest row; rows >= L are padding.
    t = _kth_largest(best, budget // D, lengths)                        # (B,)
    rows = torch.arange(N, device=saliency.device) < lengths[:, None]    # (B, N)
    return ((best > t[:, None]) & rows)[:, :, None].expand(B, N, D)     # (B, N, D)


def _mask_columns(saliency: torch.Tensor, d: int, budget: torch.Tensor,
                  lengths: torch.Tensor) -> torch.Tensor:
    """Windows of all L rows and d < D channels, for a batch whose examples are all no taller
    than the window: C's windows."""
    B, N, D = saliency.shape
    column_energy = saliency.square().sum(1)                            # (B, D)
    scores = _box_sum(column_energy, d, dim=1).sqrt()                   # F: (B, D-d+1)
    best = _sliding_max(scores, d, dim=1)                               # (B, D)
    # Each column holds L units of equal best, so the (budget + 1)-th largest unit is the
    # (floor(budget / L) + 1)-th largest column.
    t = _kth_largest(best, budget // lengths.clamp(min=1), torch.full_like(lengths, D))  # (B,)
    rows = torch.arange(N, device=saliency.device) < lengths[:, None]    # (B, N)
    return (best > t[:, None])[:, None, :] & rows[:, :, None]            # (B, N, D)


def _mask_units(saliency: torch.Tensor, n: int, d: int, budget: torch.Tensor,
                lengths: torch.Tensor) -> torch.Tensor:
    """General n x d windows with d < D: U's and G's windows."""
    B, N, D = saliency.shape
    scores = window_activation(saliency, n, d)                          # F: (B, N-n+1, D-d+1)
    valid = _valid_starts(lengths, n, N - n + 1)                        # (B, N-n+1)
    scores = scores.masked_fill(~valid[:, :, None], -math.inf)
    best = _sliding_max(_sliding_max(scores, n, dim=1), d, dim=2)       # (B, N, D)
    # The example's L * D units are the first L * D entries of its flattened map.
    t = _kth_largest(best.flatten(1), budget, lengths * D)              # (B,)
    rows = torch.arange(N, device=saliency.device) < lengths[:, None]    # (B, N)
    return (best > t[:, None, None]) & rows[:, :, None]                 # (B, N, D)


def patch_mask(saliency: torch.Tensor, n: int, d: int, lam: float | torch.Tensor,
               lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Section 4.1, eq. 4: the mask M of the most salient n x d windows within a lam budget.

    saliency: I, (B, N, D), >= 0, of the units that may be mixed: rows 0..L-1 of each example.
    n, d:     window size; a window taller than an example (n > L) is cut to L rows.
    lam:      float or (B,) tensor in [0, 1]; the budget is floor(lam * L * D) units.
    lengths:  (B,) number L of valid rows per example (default N). Rows >= L are padding:
              no window touches them and M is 0 there.
    Returns M, (B, N, D) bool: the union of the longest prefix of the windows, in descending
    window activation F, whose union has at most floor(lam * L * D) units.
    """
    B, N, D = saliency.shape
    if n < 1 or not 1 <= d <= D:
        raise ValueError(f"window {n} x {d} is not a window of a {N} x {D} saliency map")
    device = saliency.device
    lengths = (torch.full((B,), N) if lengths is None else lengths).to(device, torch.long)
    lam = torch.as_tensor(lam, device=device, dtype=torch.float64).expand(B)
    # Eq. 4: at most lam * L * D units are replaced. float64 keeps floor() exact for
    # products like 0.3 * 10 * 384 that float32 rounds to just below an integer.
    budget = torch.floor(lam * (lengths * D).to(torch.float64)).long()      # (B,)
    rows = torch.arange(N, device=device) < lengths[:, None]               # (B, N)
    saliency = saliency.masked_fill(~rows[:, :, None], 0.0)                # (B, N, D)
    n = min(n, N)  # taller than the padded batch: cut to it (rows >= L are zero anyway)
    if d == D:
        return _mask_rows(saliency, n, budget, lengths)
    if bool((lengths <= n).all()):
        return _mask_columns(saliency, d, budget, lengths)
    return _mask_units(saliency, n, d, budget, lengths)


# ---------------------------------------------------------------------------------------------
# Section 4.2: window size settings
# ---------------------------------------------------------------------------------------------

def window_shape(variant: str, num_tokens: int, dim: int, *, n: int | None = None,
                 d: int | None = None, n_range: tuple[int, int] = N_RANGE,
                 generator: torch.Generator | None = None) -> tuple[int, int]:
    """Section 4.2: the window n x d of each DropMix variant, for a batch of N = num_tokens
    rows and D = dim channels.

        U (unit)     1 x 1
        C (channel)  L x 1   one channel over all of the example's tokens (n = N, cut to L)
        W (word)     n x D   n whole words, n drawn per batch from n_range
        G (general)  n x d   n drawn per batch from n_range, d = 1 (fine-grained patches,
                             section 5.6); the paper's d in {1, D} stays reachable through `d`

    `n` fixes W's or G's height instead of drawing it (as section 5.6 does with n = 2).
    """
    if variant == "U":
        return 1, 1
    if variant == "C":
        return num_tokens, 1
    if variant not in ("W", "G"):
        raise ValueError(f"unknown DropMix variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    low, high = n_range
    if not 1 <= low <= high:
        raise ValueError(f"window height range {n_range} is empty or below 1")
    if n is None:
        n = int(torch.randint(low, high + 1, (1,), generator=generator))
    if variant == "W":
        return n, dim
    d = 1 if d is None else d
    if not 1 <= d <= dim:
        raise ValueError(f"window width {d} is outside 1..{dim}")
    return n, d


# ---------------------------------------------------------------------------------------------
# Benchmark: python patches.py
# ---------------------------------------------------------------------------------------------

def _literal_patch_mask(saliency: torch.Tensor, n: int, d: int, lam: torch.Tensor,
                        lengths: torch.Tensor) -> torch.Tensor:
    """Eq. 3-4 as written, for the timing comparison: score every window with a loop, sort,
    and add whole windows until the next would pass the budget."""
    B, N, D = saliency.shape
    M = torch.zeros(B, N, D, dtype=torch.bool)
    for b in range(B):
        L = int(lengths[b])
        h = min(n, L)
        scores = window_activation(saliency[b:b + 1, :L], h, d)[0]
        budget = math.floor(float(lam[b]) * L * D)
        taken = torch.zeros(L, D, dtype=torch.bool)
        for flat in scores.flatten().argsort(descending=True).tolist():
            i, j = divmod(flat, D - d + 1)
            grown = taken.clone()
            for p, q in window_units(i, j, h, d):
                grown[p, q] = True
            if int(grown.sum()) > budget:
                break
            taken = grown
        M[b, :L] = taken
    return M


def _benchmark(repeats: int = 20) -> None:
    import time

    def seconds(fn, repeats: int = repeats) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) / repeats

    torch.manual_seed(0)
    print(f"patch_mask on {torch.get_num_threads()} CPU threads, torch {torch.__version__}; "
          "ms per batch, mean over G's n in 2..32 for W and G")
    print("| shape (B, N, D) | U | C | W | G | G / C | literal loop (one example, U) | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for B, N, D in ((32, 32, 384), (32, 128, 768)):
        saliency = torch.rand(B, N, D)
        lengths = torch.randint(2, N + 1, (B,))
        lam = torch.distributions.Beta(0.25, 0.25).sample((B,))
        times = {}
        for variant in VARIANTS:
            heights = range(2, 33, 3) if variant in ("W", "G") else [None]
            shapes = [window_shape(variant, N, D, n=h) for h in heights]
            times[variant] = sum(seconds(lambda: patch_mask(saliency, n, d, lam, lengths))
                                 for n, d in shapes) / len(shapes)
        # the literal version on one example of the batch, against patch_mask on the same one
        one = (saliency[:1], lam[:1], lengths[:1])
        literal = seconds(lambda: _literal_patch_mask(one[0], 1, 1, one[1], one[2]), 2) if N <= 32 else None
        fast_one = seconds(lambda: patch_mask(one[0], 1, 1, one[1], one[2]))
        ms = {v: f"{1000 * t:.2f}" for v, t in times.items()}
        literal_text = f"{1000 * literal:.0f} ms | {literal / fast_one:.0f}x" if literal else "– | –"
        print(f"| {B}, {N}, {D} | {ms['U']} | {ms['C']} | {ms['W']} | {ms['G']} "
              f"| {times['G'] / times['C']:.2f} | {literal_text} |")


if __name__ == "__main__":
    _benchmark()
