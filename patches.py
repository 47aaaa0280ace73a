"""Patch selection of DropMix: which units of X_A are dropped and patched with X_B.

Paper: Kong et al., "DropMix: A Textual Data Augmentation Combining Dropout with Mixup",
EMNLP 2022. This file is sections 4.1 (windows, eq. 3 and eq. 4) and 4.2 (window settings).

    I  (B, N, D)   saliency map of the word embeddings X_A, one value per unit (token p, channel q)
    F  (B, N-n+1, D-d+1)   window activation: the L2 norm of every n x d window of I, stride 1
    M  (B, N, D)   0/1 mask: 1 on the units replaced by X_B (eq. 2: X~ = (1 - M) * X_A + M * X_B)

Eq. 4 as this file reads it: windows are taken in descending F, and among windows of equal F
in reading order (lower token row first, then lower channel), as a stable sort would list
them. M is the union of the longest prefix of that order whose union still has at most
floor(lam * N * D) units ("=" read as "at most": a union of whole windows rarely lands on the
budget exactly). `literal_patch_mask` does exactly that with loops; `patch_mask` computes the
same M for a whole batch without sorting the windows.

The only import is torch, so this file can be copied into another project on its own.
"""
from __future__ import annotations

import math

import torch

# Section 5.3: "we set n in [2, 32] for DropMix-W and DropMix-G".
N_RANGE = (2, 32)


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

    For readers and the literal eq. 4; `patch_mask` never enumerates units.
    """
    return [(p, q) for p in range(i, i + n) for q in range(j, j + d)]


# ---------------------------------------------------------------------------------------------
# Section 4.1: the mask M (eq. 4)
# ---------------------------------------------------------------------------------------------

def unit_budget(lam: torch.Tensor, rows: torch.Tensor, D: int) -> torch.Tensor:
    """Eq. 4's lam N D, rounded down: the most units M may hold, (B,) long.

    lam: (B,); rows: (B,) the N of each example (mix.py passes L_A, A's own ordinary tokens).
    float64 keeps floor() exact for products like 0.3 * 10 * 384 that float32 rounds to just
    below an integer.
    """
    return torch.floor(lam.to(torch.float64) * (rows * D).to(torch.float64)).long()


def literal_patch_mask(saliency: torch.Tensor, n: int, d: int, lam: float | torch.Tensor,
                       lengths: torch.Tensor | None = None,
                       budget_rows: torch.Tensor | None = None) -> torch.Tensor:
    """Section 4.1, eq. 3-4 as written, one example and one window at a time: the reading
    anchor for `patch_mask` (same arguments, same M), slow.

    Score every window of the example's L rows (a window taller than the example is cut to
    L rows), sort the windows by F, descending (stable: ties stay in reading order), and add
    whole windows to M until the next one would take the union past the budget.
    """
    B, N, D = saliency.shape
    lengths = torch.full((B,), N) if lengths is None else lengths.cpu()
    budget = unit_budget(torch.as_tensor(lam, dtype=torch.float64).expand(B).cpu(),
                         lengths if budget_rows is None else budget_rows.cpu(), D)
    M = torch.zeros(B, N, D, dtype=torch.bool)
    for b in range(B):
        L = int(lengths[b])
        if L == 0:
            continue
        h = min(n, L)                                            # cut to the example
        F = window_activation(saliency[b:b + 1, :L].float(), h, d)[0]   # (L-h+1, D-d+1)
        taken = torch.zeros(L, D, dtype=torch.bool)
        for flat in F.flatten().argsort(descending=True, stable=True).tolist():
            i, j = divmod(flat, D - d + 1)
            grown = taken.clone()
            for p, q in window_units(i, j, h, d):                # eq. 3: f(i, j)
                grown[p, q] = True
            # eq. 4: the union of the windows taken stays within floor(lam N D) units
            if int(grown.sum()) > int(budget[b]):
                break
            taken = grown
        M[b, :L] = taken
    return M.to(saliency.device)


# Why `patch_mask` needs no sort of the windows. Give every window a key that orders windows
# as eq. 4 takes them (F first, then reading order), so that no two keys are equal. Let
# best(u) be the largest key among the windows covering unit u. The union of the first k
# windows is exactly {u : best(u) >= key_k}, so the unions of all prefixes are the level sets
# of `best`, and the longest prefix whose union has at most `budget` units is {u : best(u) > t},
# where t is the (budget + 1)-th largest value of `best` over the example's units (t = -1,
# below every key, when the budget covers every unit). That is a sliding sum (F), a sliding
# max (best) and one order statistic per example, all batched.
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

def _order_keys(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """int64 keys, one per window, that order the windows as eq. 4 takes them: by F, and among
    equal F the earlier window in reading order first. -1 for a window that does not exist.

    scores: F, (B, ...) float, >= 0; valid: bool, broadcastable to scores. The bits of a
    non-negative float32, read as an integer, rise with the float, so a key is those bits
    with the window's place in reading order, reversed, below them.
    """
    count = math.prod(scores.shape[1:])                          # windows per example
    reading = torch.arange(count, device=scores.device).view(scores.shape[1:])
    bits = (scores.float() + 0.0).view(torch.int32).long()       # + 0.0 turns -0.0 into 0.0
    keys = (bits << count.bit_length()) | (count - 1 - reading)
    return keys.masked_fill(~valid, -1)


def _sliding_max(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """out[.., p, ..] = max of x over the windows that cover position p along `dim`.

    x holds one key per window start (length K - size + 1 along `dim`); padding it with
    size - 1 entries of -1 (no window) on both sides and taking the max of every run of `size`
    gives, for each of the K positions, the best window that covers it.
    """
    if size == 1:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [size - 1, size - 1]
    padded = torch.nn.functional.pad(x, pad, value=-1)
    return padded.unfold(dim, size, 1).amax(-1)


def _kth_largest(values: torch.Tensor, k: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Per row b, the (k[b] + 1)-th largest of values[b, :count[b]] (k is 0-based), or -1
    when k[b] >= count[b]. values: (B, K) int64 keys >= -1; k, count: (B,) long. Entries past
    count[b] (the example's padding) are ignored.

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
    ordered = values.masked_fill(padding, -2).sort(dim=1, descending=True).values
    kth = ordered.gather(1, k.clamp(max=K - 1)[:, None]).squeeze(1)             # (B,)
    return kth.masked_fill(k >= count, -1)


def _kth_largest_by_selection(values: torch.Tensor, k: torch.Tensor,
                              count: torch.Tensor) -> torch.Tensor:
    kth = torch.full(k.shape, -1, dtype=values.dtype, device=values.device)
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
    keys = _order_keys(scores, _valid_starts(lengths, n, N - n + 1))    # (B, N-n+1)
    best = _sliding_max(keys, n, dim=1)                                 # (B, N)
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
    keys = _order_keys(scores, torch.ones_like(scores, dtype=torch.bool))
    best = _sliding_max(keys, d, dim=1)                                 # (B, D)
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
    keys = _order_keys(scores, valid[:, :, None])                       # (B, N-n+1, D-d+1)
    best = _sliding_max(_sliding_max(keys, n, dim=1), d, dim=2)         # (B, N, D)
    # The example's L * D units are the first L * D entries of its flattened map.
    t = _kth_largest(best.flatten(1), budget, lengths * D)              # (B,)
    rows = torch.arange(N, device=saliency.device) < lengths[:, None]    # (B, N)
    return (best > t[:, None, None]) & rows[:, :, None]                 # (B, N, D)


def patch_mask(saliency: torch.Tensor, n: int, d: int, lam: float | torch.Tensor,
               lengths: torch.Tensor | None = None,
               budget_rows: torch.Tensor | None = None) -> torch.Tensor:
    """Section 4.1, eq. 4: the mask M of the most salient n x d windows within a lam budget.

    saliency:    I, (B, N, D), >= 0, of the units that may be mixed: rows 0..L-1 of each
                 example. Windows are scored in float32.
    n, d:        window size; a window taller than an example (n > L) is cut to L rows.
    lam:         float or (B,) tensor in [0, 1].
    lengths:     (B,) number L of valid rows per example (default N). Rows >= L are padding:
                 no window touches them and M is 0 there.
    budget_rows: (B,) the N of eq. 4's lam N D (default L). The budget is floor(lam N D)
                 units; when it covers all L * D valid units, M takes them all.
    Returns M, (B, N, D) bool: the union of the longest prefix of the windows, in descending
    window activation F (ties in reading order), whose union has at most floor(lam N D) units.
    """
    B, N, D = saliency.shape
    if n < 1 or not 1 <= d <= D:
        raise ValueError(f"window {n} x {d} is not a window of a {N} x {D} saliency map")
    device = saliency.device
    lengths = (torch.full((B,), N) if lengths is None else lengths).to(device, torch.long)
    rows_counted = lengths if budget_rows is None else budget_rows.to(device, torch.long)
    lam = torch.as_tensor(lam, dtype=torch.float64, device=device).expand(B)
    # eq. 4: at most lam * N * D units are replaced
    budget = unit_budget(lam, rows_counted, D)                              # (B,)
    rows = torch.arange(N, device=device) < lengths[:, None]               # (B, N)
    saliency = saliency.float().masked_fill(~rows[:, :, None], 0.0)        # (B, N, D)
    n = min(n, N)  # taller than the padded batch: cut to it (rows >= L are zero anyway)
    if d == D:
        return _mask_rows(saliency, n, budget, lengths)
    if bool((lengths <= n).all()):
        return _mask_columns(saliency, d, budget, lengths)
    return _mask_units(saliency, n, d, budget, lengths)


# ---------------------------------------------------------------------------------------------
# Section 4.2: window size settings
# ---------------------------------------------------------------------------------------------

# The window of each DropMix variant: (n, d), with "N" for the whole text, "n" for a height
# drawn per batch from N_RANGE, "D" for the whole embedding.
WINDOWS = {"U": (1, 1), "C": ("N", 1), "W": ("n", "D"), "G": ("n", 1)}


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
    if variant not in WINDOWS:
        raise ValueError(f"unknown DropMix variant {variant!r}; choose one of {', '.join(WINDOWS)}")
    height, width = WINDOWS[variant]
    if height == "n":
        low, high = n_range
        if not 1 <= low <= high:
            raise ValueError(f"window height range {n_range} is empty or below 1")
        if n is None:
            n = int(torch.randint(low, high + 1, (1,), generator=generator))
        height = n
    height = num_tokens if height == "N" else height
    if variant == "G" and d is not None:
        width = d
    width = dim if width == "D" else width
    if not 1 <= width <= dim:
        raise ValueError(f"window width {width} is outside 1..{dim}")
    return height, width
