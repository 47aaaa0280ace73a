"""Patch selection of DropMix: which units of X_A are dropped and patched with X_B.

Paper: Kong et al., "DropMix: A Textual Data Augmentation Combining Dropout with Mixup",
EMNLP 2022. This file is sections 4.1 (windows, eq. 3 and eq. 4) and 4.2 (window settings).

    I  (B, N, D)   saliency map of the word embeddings X_A, one value per unit (token p, channel q)
    F  (B, N-n+1, D-d+1)   window activation: the L2 norm of every n x d window of I, stride 1
    M  (B, N, D)   0/1 mask: 1 on the units replaced by X_B (eq. 2: X~ = (1 - M) * X_A + M * X_B)

Eq. 4 as this file reads it: windows are taken in descending F, ties in reading order (lower
token row first, then lower channel), as a stable sort lists them; M is the union of the
longest prefix of that order whose union has at most floor(lam * N * D) units ("=" read as
"at most": whole windows rarely land on the budget). `literal_patch_mask` does that with
loops; `patch_mask` gives the same M for a whole batch: no sort of the windows, no loop over
the examples, no host sync (shapes and branches follow python ints, never values). Imports
torch alone, so it can be copied into another project on its own.
"""
from __future__ import annotations

import torch

# Section 5.3: "we set n in [2, 32] for DropMix-W and DropMix-G".
N_RANGE = (2, 32)


# ---------------------------------------------------------------------------------------------
# Section 4.1: the window activation F and the index mapping f (eq. 3)
# ---------------------------------------------------------------------------------------------

def _box_sum(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Sum of every run of `size` consecutive entries along `dim` (stride 1). unfold + sum adds
    each window directly: no cumulative sums (no cancellation after large entries), and on a
    CPU 20-40x faster than avg_pool2d. Separable: an n x d window is two 1-D passes."""
    return x if size == 1 else x.unfold(dim, size, 1).sum(-1)


def window_activation(saliency: torch.Tensor, n: int, d: int) -> torch.Tensor:
    """Section 4.1: slide an n x d window (stride 1) over I, (B, N, D), and take each window's
    L2 norm: F, (B, N - n + 1, D - d + 1), F[b, i, j] = || I[b, i:i+n, j:j+d] ||_2."""
    B, N, D = saliency.shape
    if not (1 <= n <= N and 1 <= d <= D):
        raise ValueError(f"window {n} x {d} does not fit a {N} x {D} saliency map")
    if n == 1 and d == 1:
        return saliency.abs()  # a 1 x 1 window: the L2 norm of one unit is its magnitude
    energy = saliency.square()                                   # (B, N, D)
    energy = _box_sum(energy, n, dim=1)                          # (B, N-n+1, D)
    energy = energy.sum(2, keepdim=True) if d == D else _box_sum(energy, d, dim=2)
    # F = sqrt(sum of I^2 over the window), the "L2 norm as an activation function"
    return energy.sqrt_()                         # (B, N-n+1, D-d+1), in place: energy is new


def window_units(i: int, j: int, n: int, d: int) -> list[tuple[int, int]]:
    """Eq. 3, the index mapping f from a window of F to the units of I it covers, literally;
    `_covering_max` beside it is the batched form `patch_mask` uses."""
    # f(i, j) = U_{p=i}^{i+n-1} U_{q=j}^{j+d-1} (p, q)
    return [(p, q) for p in range(i, i + n) for q in range(j, j + d)]


def _covering_max(framed: torch.Tensor, n: int, d: int, out=None) -> torch.Tensor:
    """Eq. 3 read backwards, batched: per unit (p, q), the largest key of the windows (i, j)
    whose f(i, j) holds it (p - n < i <= p, q - d < j <= q). framed: a key per window start,
    (B, N-n+1, D-d+1), inside n - 1 rows and d - 1 columns of -1 (no window). (B, N, D)."""
    best = torch.amax(framed.unfold(1, n, 1), -1, out=None if d > 1 else out) if n > 1 else framed
    return torch.amax(best.unfold(2, d, 1), -1, out=out) if d > 1 else best


# ---------------------------------------------------------------------------------------------
# Section 4.1: the mask M (eq. 4)
# ---------------------------------------------------------------------------------------------
#
# Why `patch_mask` needs no sort of the windows. Key every window as eq. 4 orders them (F, then
# reading order; no two equal), and let best(u) be the largest key of the windows covering u.
# The union of the first k windows is {u : best(u) >= key_k}, so the longest prefix within
# the budget is {u : best(u) > t}, t the (budget + 1)-th largest best of the example's units
# (-1, below every key, if the budget covers them all): a sliding sum (F), a sliding max
# (best), an order statistic per example. A window taller than its example (L <= n) keeps
# the one start i = 0 per channel: scored with rows >= L zeroed, it is the window cut to L.
# W ranks rows, C columns (their units share one best per line), U and G units, by counting.

def unit_budget(lam: torch.Tensor, rows: torch.Tensor, D: int) -> torch.Tensor:
    """Section 4.1, eq. 4's lam N D rounded down: the most units M may hold, (B,) long. lam:
    (B,); rows: (B,) the N of each example (mix.py passes L_A, A's own ordinary tokens).
    float64 keeps floor() exact where float32 rounds 0.3 * 10 * 384 just below 1152."""
    # |U_{(i,j) in K} f(i, j)| <= lam N D
    return torch.floor(lam.to(torch.float64) * (rows * D).to(torch.float64)).long()


def _kth_largest_by_sorting(values: torch.Tensor, k: torch.Tensor, **_) -> torch.Tensor:
    """Per row b, the (k[b] + 1)-th largest of values[b], (B, K) int keys >= -1 (-1: no key),
    or -1 when k[b] >= K (k: (B,), 0-based). One sort: the GPU's path; C's and W's few keys."""
    K = values.shape[1]
    ordered = values.sort(dim=1, descending=True).values                       # (B, K)
    return ordered.gather(1, k.clamp(max=K - 1)[:, None]).squeeze(1).masked_fill(k >= K, -1)


def _kth_largest_by_counting(values: torch.Tensor, k: torch.Tensor, bits: int = 31,
                             prefix: int = 0, slot: torch.Tensor | None = None) -> torch.Tensor:
    """`_kth_largest_by_sorting` by a radix select, for keys in [-1, (prefix + 1) * 2**bits)
    whose answer starts with the digits `prefix` above its low `bits` bits: per digit of at
    most 17 bits, one histogram for all rows (index_add_ at a per-row offset), then a search
    of each row's cumulative counts. Why: a CPU's batched sort of 32 x 98,304 keys costs ~10x
    two digits; kthvalue takes no rank per row (a loop synced the host). slot: scratch like
    values (new memory costs a page fault per 4 KiB, much of a loaded CPU's time)."""
    (B, K), dev = values.shape, values.device
    below = (K - 1 - k).clamp(min=-1).to(torch.int32)[:, None]   # keys under the answer (B, 1)
    # digits of at most 17 bits, top first; narrower where a row has fewer keys than slots
    levels = -(-bits // max(8, min(17, K.bit_length())))
    ends, size = [bits * i // levels for i in range(levels + 1)], (1 << -(-bits // levels)) + 2
    hist = torch.empty(B * size, dtype=torch.int32, device=dev)
    slot = torch.empty_like(values) if slot is None else slot                   # (B, K)
    offset = torch.arange(B, dtype=values.dtype, device=dev)[:, None] * size + 1  # (B, 1)
    ones = torch.ones((), dtype=torch.int32, device=dev).expand(B * K)
    answer, found = torch.full((B, 1), prefix, dtype=values.dtype, device=dev), None
    for top, end in zip(ends, ends[1:]):              # over the digits (python ints), not rows
        answer <<= end - top
        # a key's digit under the digits found so far: -1 below them (or no key), 2**w above;
        # clamped before the row offset, so no sum can overflow
        if bits > end:
            torch.bitwise_right_shift(values, bits - end, out=slot).sub_(answer)
        else:
            torch.sub(values, answer, out=slot)
        slot.clamp_(-1, 1 << (end - top)).add_(offset)                       # (B, K)
        at_or_below = hist.zero_().index_add_(0, slot.view(-1), ones).view(B, size).cumsum(
            1, dtype=torch.int32)                                            # (B, size)
        j = torch.searchsorted(at_or_below, below, right=True)              # (B, 1)
        found = j > 0 if found is None else found   # slot 0 of the top digit: no key there
        answer += (j - 1).clamp(min=0).to(values.dtype)
    return answer.masked_fill(~found, -1).squeeze(1)


def _kth_largest(values: torch.Tensor, k: torch.Tensor, **digits) -> torch.Tensor:
    """U's and G's order statistic: counting on a CPU; a GPU sorts the rows in one kernel (its
    histograms would pile atomics onto the few slots most keys share)."""
    cpu = values.device.type == "cpu"
    return (_kth_largest_by_counting if cpu else _kth_largest_by_sorting)(values, k, **digits)


def _valid_starts(lengths: torch.Tensor, n: int, num_starts: int) -> torch.Tensor:
    """(B, num_starts) bool: starts i with i + n <= L, or the one start 0 if L <= n (cut)."""
    return torch.arange(num_starts, device=lengths.device) <= (lengths - n).clamp(min=0)[:, None]


def _mask_lines(saliency: torch.Tensor, n: int, d: int, budget: torch.Tensor,
                lengths: torch.Tensor) -> torch.Tensor:
    """W's windows of whole rows (d = D) and C's of whole columns (n = N >= every L): the units
    of a line share one best, so t is the (floor(budget / units per line) + 1)-th line."""
    B, N, D = saliency.shape
    W, size = d == D, n if d == D else d                     # W ranks rows, C columns
    rows = torch.arange(N, device=saliency.device) < lengths[:, None]      # (B, N)
    I = saliency.masked_fill(~rows[:, :, None], 0.0)                        # (B, N, D)
    # F = sqrt(sum of I^2 over the window), one window start per line
    F = _box_sum(I.square().sum(2 if W else 1), size, dim=1).sqrt()          # (B, K)
    K = F.shape[1]
    valid = _valid_starts(lengths, n, K) if W else torch.ones_like(F, dtype=torch.bool)
    # int64 key: F's bits (+ 0.0 turns -0.0 into 0.0) over the reading order reversed
    rev = torch.arange(K - 1, -1, -1, device=F.device)                      # (K,)
    keys = ((F + 0.0).view(torch.int32).long() << K.bit_length() | rev).masked_fill(~valid, -1)
    framed = torch.nn.functional.pad(keys, (size - 1, size - 1), value=-1)[:, :, None]
    best = _covering_max(framed, size, 1)[:, :, 0]                          # (B, lines)
    best = best.masked_fill(~rows, -1) if W else best                       # rows >= L: none
    t = _kth_largest_by_sorting(best, budget // (D if W else lengths.clamp(min=1)))
    line = best > t[:, None]                                                # (B, lines)
    return line[:, :, None].expand(B, N, D) if W else line[:, None, :] & rows[:, :, None]


def _mask_units(saliency: torch.Tensor, n: int, d: int, budget: torch.Tensor,
                lengths: torch.Tensor) -> torch.Tensor:
    """U's and G's windows (n < N, d < D), unit by unit. best(u)'s 48-bit key (F's bits, then
    reading order) is ranked in two rounds of 32-bit keys (half the traffic of 64-bit ones):
    hi(u), the best F covering u, whose threshold t_hi sorts windows into above, tied and
    below; then each window's class over its reading order. saliency: I, float32, as given."""
    (B, N, _), dev = saliency.shape, saliency.device
    F = window_activation(saliency, n, d)                               # (B, N-n+1, D-d+1)
    R, C = F.shape[1:]
    rows = torch.arange(N, device=dev) < lengths[:, None]               # (B, N)
    # a window taller than its example (L < n) is cut to L rows: its F again, rows >= L zeroed
    head = window_activation(saliency[:, :n].masked_fill(~rows[:, :n, None], 0.0), n, d)
    F[:, :1] = torch.where((lengths < n)[:, None, None], head, F[:, :1])   # (B, 1, D-d+1)
    # F >= +0 (a norm): its float32 bits, as int32, rise with it; -1 is no window. Keys sit in a
    # frame of -1 for _covering_max; min() with a per-row cap masks in place (masked_fill: 4x).
    cap = lambda keep: torch.where(keep, 2**31 - 1, -1).to(torch.int32)[:, :, None]
    framed = F.view(torch.int32) if n == d == 1 else torch.full(
        (B, R + 2 * n - 2, C + 2 * d - 2), -1, dtype=torch.int32, device=dev)
    bits = framed[:, n - 1:n - 1 + R, d - 1:d - 1 + C]                  # (B, N-n+1, D-d+1)
    torch.minimum(F.view(torch.int32), cap(_valid_starts(lengths, n, R)), out=bits)
    hi = _covering_max(framed, n, d)                                    # (B, N, D)
    torch.minimum(hi, cap(rows), out=hi)                                # rows >= L rank nowhere
    spare = torch.empty_like(hi).view(B, -1)             # both rounds' scratch, one allocation
    t_hi = _kth_largest(hi.view(B, -1), budget, slot=spare)[:, None, None]   # (B, 1, 1)
    # each window's class, 2 above t_hi, 1 tied, 0 below, over its reading order reversed:
    # eq. 4 takes tied windows first come, first served. (U's hi is its bits; hi is done.)
    S = (R * C - 1).bit_length()
    reading = torch.arange(R * C - 1, -1, -1, dtype=torch.int32, device=dev).view(R, C)
    bits.sub_(t_hi).clamp_(-1, 1).add_(1).bitwise_left_shift_(S).bitwise_or_(reading)
    best = _covering_max(framed, n, d, out=hi)                          # (B, N, D), hi's memory
    torch.minimum(best, cap(rows), out=best)
    t = _kth_largest(best.view(B, -1), budget, bits=S, prefix=1, slot=spare)   # (B,), a tie
    # eq. 4: M = U_{(i,j) in K} f(i, j) = {u : best(u) > t}, K the windows keyed above t
    return best > t[:, None, None]                                      # (B, N, D)


def patch_mask(saliency: torch.Tensor, n: int, d: int, lam: float | torch.Tensor,
               lengths: torch.Tensor | None = None,
               budget_rows: torch.Tensor | None = None) -> torch.Tensor:
    """Section 4.1, eq. 4: the mask M of the most salient n x d windows within a lam budget.

    saliency:    I, (B, N, D), >= 0, of the units that may be mixed: rows 0..L-1 of each
                 example; windows are scored in float32.
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
    budget = unit_budget(lam, rows_counted, D)                              # (B,)
    n = min(n, N)  # taller than the padded batch: cut to it (rows >= L are padding anyway)
    if d < D and n < N:  # the path is chosen on python ints, never on the values
        return _mask_units(saliency.float(), n, d, budget, lengths)
    return _mask_lines(saliency.float(), n, d, budget, lengths)


def literal_patch_mask(saliency: torch.Tensor, n: int, d: int, lam: float | torch.Tensor,
                       lengths: torch.Tensor | None = None,
                       budget_rows: torch.Tensor | None = None) -> torch.Tensor:
    """Section 4.1, eq. 3-4 as written, one example and one window at a time: the reading anchor
    for `patch_mask` (same arguments, same M), slow. Score every window of the L rows (one
    taller than L is cut to L rows), sort them by F, descending (stable: ties keep reading
    order), and add whole windows to M until the next would take the union past the budget."""
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
    rows and D = dim channels:
        U (unit)     1 x 1
        C (channel)  L x 1   one channel over all of the example's tokens (n = N, cut to L)
        W (word)     n x D   n whole words, n drawn per batch from n_range
        G (general)  n x d   n drawn per batch from n_range, d = 1 (fine-grained patches,
                             section 5.6); the paper's d in {1, D} stays reachable through `d`
    `n` fixes W's or G's height instead of drawing it (as section 5.6 does with n = 2)."""
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
