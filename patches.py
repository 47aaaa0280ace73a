"""Patch selection of DropMix: which units of X_A are dropped and patched with X_B.

Paper: Kong et al., "DropMix: A Textual Data Augmentation Combining Dropout with Mixup",
EMNLP 2022. This file is sections 4.1 (windows, eq. 3 and eq. 4) and 4.2 (window settings).

    I  (B, N, D)          saliency map of X_A: a value per unit (token row p, channel q)
    F  (B, N-n+1, D-d+1)  window activation: the L2 norm of every n x d window of I
    M  (B, N, D)          0/1 mask, 1 on the units replaced by X_B (eq. 2)

Eq. 4 as this file reads it. List the windows (i, j) in descending F, ties in reading order
(lower row i first, then lower channel j), as a stable sort lists them. M is the union of the
longest prefix of that list whose union holds at most floor(lam N D) units: "=" is read as
"at most", since whole windows rarely land on the budget exactly. Only windows inside the
example's L rows count (i + n <= L); a window taller than the example is cut to its L rows.
`literal_patch_mask` does this with loops; `patch_mask` gives the same M for a whole batch.
"""
import torch


# Section 4.1: the window activation F and the index mapping f (eq. 3)

def window_activation(saliency: torch.Tensor, n: int, d: int) -> torch.Tensor:
    """F[b, i, j] = || I[b, i:i+n, j:j+d] ||_2 for every n x d window of I (B, N, D), stride 1:
    F is (B, N - n + 1, D - d + 1). "An L2 norm is used as an activation function". One
    formula for every window, 1 x 1 too (sqrt(I^2) = |I| while I^2 is a normal float), so
    that a window cut to L rows scores the same here and in `patch_mask`'s zeroed rows."""
    B, N, D = saliency.shape
    if not (1 <= n <= N and 1 <= d <= D):
        raise ValueError(f"window {n} x {d} does not fit a {N} x {D} saliency map")
    energy = saliency.square()                                      # I^2, (B, N, D)
    # the sum over the window's n rows, each window apart, row after row: (B, N-n+1, D)
    energy = energy.unfold(1, n, 1).sum(-1) if n > 1 else energy
    if d > 1:  # then over its d channels: (B, N-n+1, D-d+1)
        energy = energy.sum(2, keepdim=True) if d == D else energy.unfold(2, d, 1).sum(-1)
    return energy.sqrt_()                          # F = sqrt(sum of I^2 over the window)


def window_units(i: int, j: int, n: int, d: int) -> list[tuple[int, int]]:
    """Eq. 3, the units (p, q) of I that window (i, j) of F covers."""
    # f(i, j) = U_{p=i}^{i+n-1} U_{q=j}^{j+d-1} (p, q)
    return [(p, q) for p in range(i, i + n) for q in range(j, j + d)]


def unit_budget(lam: torch.Tensor, rows: torch.Tensor, D: int) -> torch.Tensor:
    """Eq. 4's budget floor(lam N D), (B,) long; rows (B,): the N of each example (mix.py passes
    L_A). A float32 lam times N D (< 2^29) is exact in float64, so is its floor; in float32
    0.7 * 10 * 384 = 2687.99995 rounds to 2688, one unit too many (float64 lam: one rounding)."""
    # |U_{(i,j) in K} f(i, j)| <= lam N D
    return torch.floor(lam.to(torch.float64) * (rows * D).to(torch.float64)).long()


# Section 4.1: the mask M (eq. 4)

def literal_patch_mask(saliency: torch.Tensor, n: int, d: int, lam: float | torch.Tensor,
                       lengths: torch.Tensor | None = None,
                       budget_rows: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 3-4 as written, one example and one window at a time: the reading anchor for
    `patch_mask` (same arguments, same M), slow. Score the windows of the L rows (a window
    taller than L cut to L rows), sort them by F, descending (stable: ties in reading order),
    and add whole windows to M until the next would take the union past the budget."""
    B, N, D = saliency.shape
    lengths = torch.full((B,), N) if lengths is None else lengths.cpu()
    budget = unit_budget(torch.as_tensor(lam, dtype=torch.float64).expand(B).cpu(),
                         lengths if budget_rows is None else budget_rows.cpu(), D)
    M = torch.zeros(B, N, D, dtype=torch.bool)
    for b, L in enumerate(lengths.tolist()):
        if L == 0:
            continue
        h = min(n, L)                                                # cut to the example
        F = window_activation(saliency[b:b + 1, :L].float(), h, d)[0]   # (L-h+1, D-d+1)
        taken = torch.zeros(L, D, dtype=torch.bool)
        for flat in F.flatten().argsort(descending=True, stable=True).tolist():
            i, j = divmod(flat, D - d + 1)
            grown = taken.clone()
            for p, q in window_units(i, j, h, d):                    # eq. 3: f(i, j)
                grown[p, q] = True
            # eq. 4: the union of the windows taken stays within floor(lam N D) units
            if int(grown.sum()) > int(budget[b]):
                break
            taken = grown
        M[b, :L] = taken
    return M.to(saliency.device)


def patch_mask(saliency: torch.Tensor, n: int, d: int, lam: float | torch.Tensor,
               lengths: torch.Tensor | None = None,
               budget_rows: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 4 for a batch: the same M as `literal_patch_mask` (same arguments), (B, N, D) bool.

    Give each window a key that orders it as eq. 4 does, and let best(u) be the largest key
    of the windows that cover unit u. The first k windows cover {u : best(u) >= key_k}, so
    the longest prefix within the budget is M = {u : best(u) > t}, t the (budget + 1)-th
    largest best(u) of the example's units (-1 if the budget covers them all). No sort of
    the windows, no host sync: shapes and branches follow python ints only."""
    B, N, D = saliency.shape
    if n < 1 or not 1 <= d <= D:
        raise ValueError(f"window {n} x {d} is not a window of a {N} x {D} saliency map")
    dev = saliency.device
    # a window taller than the padded batch is cut to its N rows (rows >= L are padding)
    n = min(n, N)
    # L, the example's rows (default N), (B,); rows, p < L, (B, N, 1)
    L = (torch.full((B,), N) if lengths is None else lengths).to(dev, torch.long)
    rows = (torch.arange(N, device=dev) < L[:, None])[:, :, None]
    # the budget floor(lam N D), N = budget_rows (default L), (B,)
    lam = torch.as_tensor(lam, dtype=torch.float64, device=dev).expand(B)
    budget = unit_budget(lam, L if budget_rows is None else budget_rows.to(dev, torch.long), D)
    # I, rows >= L zeroed: a window cut to L < n rows scores its L rows (U cuts none), (B, N, D)
    I = saliency.float() if n == 1 else saliency.float().masked_fill(~rows, 0.0)
    # F[i, j] = || I[i:i+n, j:j+d] ||_2 (section 4.1), (B, N-n+1, D-d+1)
    F = window_activation(I, n, d)
    R, C = F.shape[1:]
    # the example's windows: i + n <= L, or i = 0 cut to L rows if 0 < L < n; none if L = 0
    fits = torch.arange(R, device=dev) < (L - n + 1).clamp(min=1).minimum(L)[:, None]
    # eq. 4's order as an int64 key per window, larger = earlier: F's float32 bits (they rise
    # with F >= 0) times 2^S, plus the reading index i * C + j reversed (earlier wins a tie)
    S = (R * C - 1).bit_length()
    reading = torch.arange(R * C - 1, -1, -1, device=dev).view(R, C)
    key = torch.add(reading, F.view(torch.int32), alpha=1 << S)     # (B, N-n+1, D-d+1)
    # no key (-1) for a window that is not the example's
    key.masked_fill_(~fits[:, :, None], -1)
    # eq. 3 read backwards: u = (p, q) is in f(i, j) for p - n < i <= p, q - d < j <= q, so
    # best(u) is a sliding max of the keys over n rows and d channels, framed in -1. A window
    # as tall as N (C) or as wide as D (W) covers that axis whole: best keeps it of size 1.
    best, pad = key, torch.nn.functional.pad
    if 1 < n < N:
        best = pad(best, (0, 0, n - 1, n - 1), value=-1).unfold(1, n, 1).amax(-1)  # (B, N, C)
        best = best.masked_fill(~rows, -1)      # cut windows reach rows >= L: no unit there
    if 1 < d < D:
        best = pad(best, (d - 1, d - 1), value=-1).unfold(2, d, 1).amax(-1)     # (B, ., D)
    # the units each entry of best stands for: 1, or L down a column (C), or D along a row (W)
    per_entry = (L.clamp(min=1) if n == N else torch.ones_like(L)) * (D if d == D else 1)
    # t = the (budget + 1)-th largest best(u) of the example's units, -1 if there are fewer
    t = kth_largest(best.reshape(B, -1), budget // per_entry, bits=31 + S)   # (B,)
    # eq. 4: M = U_{(i,j) in K} f(i, j) = {u : best(u) > t}, K the windows whose key is > t
    M = (best > t[:, None, None]).expand(B, N, D)
    # only C's best spans rows >= L (elsewhere they hold -1, never > t): M = 0 there
    return M & rows if n == N else M


def kth_largest(keys: torch.Tensor, k: torch.Tensor, bits: int) -> torch.Tensor:
    """Per row b, the (k[b] + 1)-th largest of keys[b]: keys (B, K) int64 in [-1, 2**bits),
    k (B,) >= 0; -1 where k[b] >= K. No sort, no host sync, the same on CPU and GPU.

    A radix select. Read the keys as digits of w bits, top digit first. Count the keys of
    each top-digit value, one histogram per row (scatter_add_): in the cumulative counts, the
    slot where the count passes the answer's place from the bottom (K - 1 - k keys lie below
    it) is the answer's top digit. Count the next digit among the keys whose digits so far
    are the answer's (those below go to the first slot, those above to the last), and so on:
    a few passes over the keys per digit, on a CPU 3-8x less than sorting them."""
    B, K = keys.shape
    levels = -(-bits // 12)           # digits of at most 12 bits: small histograms, in cache
    w = -(-bits // levels)                                   # digit width in bits
    size = (1 << w) + 2                                      # slots: below, 2^w digits, above
    below = (K - 1 - k).clamp(min=-1).to(torch.int32)[:, None]   # keys under the answer (B, 1)
    ones = torch.ones((), dtype=torch.int32, device=keys.device).expand(B, K)
    answer = torch.zeros(B, 1, dtype=torch.long, device=keys.device)    # digits found so far
    slot = torch.empty_like(keys)                            # (B, K), reused by every digit
    for shift in range(w * (levels - 1), -1, -w):            # the digits, top first
        # slot 1 + the key's digit if its higher digits are the answer's; 0 below, size-1 above
        torch.bitwise_right_shift(keys, shift, out=slot).sub_((answer << w) - 1)
        slot.clamp_(0, size - 1)
        counts = torch.zeros(B, size, dtype=torch.int32, device=keys.device)
        counts = counts.scatter_add_(1, slot, ones).cumsum(1, dtype=torch.int32)  # (B, size)
        # the first slot whose cumulative count passes `below` holds the answer's digit
        answer = (answer << w) + torch.searchsorted(counts, below, right=True) - 1
    # a -1 key stays -1 (all ones); k >= K found no slot and fell below -1
    return answer.squeeze(1).clamp(min=-1)


# Section 4.2: window size settings
# Section 5.3: "we set n in [2, 32] for DropMix-W and DropMix-G".
N_RANGE = (2, 32)

# The window of each DropMix variant: (n, d), with "N" for the whole text, "n" for a height
# drawn per batch from N_RANGE, "D" for the whole embedding.
WINDOWS = {"U": (1, 1), "C": ("N", 1), "W": ("n", "D"), "G": ("n", 1)}


def window_shape(variant: str, num_tokens: int, dim: int, *, n: int | None = None,
                 d: int | None = None, n_range: tuple[int, int] = N_RANGE,
                 generator: torch.Generator | None = None) -> tuple[int, int]:
    """Section 4.2: the window n x d of a variant for N = num_tokens rows, D = dim channels:
    U 1 x 1; C N x 1 (cut to L); W n x D (n whole words); G n x d, d = 1 (section 5.6; d = D
    through `d`). n is drawn from n_range per batch unless given (section 5.6: n = 2)."""
    if variant not in WINDOWS:
        raise ValueError(f"unknown DropMix variant {variant!r}; choose one of {', '.join(WINDOWS)}")
    height, width = WINDOWS[variant]
    if height == "n" and not 1 <= n_range[0] <= n_range[1]:
        raise ValueError(f"window height range {n_range} is empty or below 1")
    if height == "n":
        height = n or int(torch.randint(n_range[0], n_range[1] + 1, (1,), generator=generator))
    height = num_tokens if height == "N" else height
    width = d if variant == "G" and d is not None else dim if width == "D" else width
    if not 1 <= width <= dim:
        raise ValueError(f"window width {width} is outside 1..{dim}")
    return height, width
