"""grain's index shuffle, vectorised: the example order of every epoch of the image loader.

`index_shuffle_order(N, seed)` equals ``grain.MapDataset.range(N).shuffle(seed)``'s order
(grain's Simon-cipher index shuffle with cycle walking) for all N indices at once in numpy, so a
loader can compute an epoch's order in one pass instead of one call per example, and keep grain's
exact order (and so its saved iterator states). `epoch_order` is the order of epoch e.
"""

from __future__ import annotations

import functools
import math

import numpy as np


def grain_seed(seed: int) -> int:
    """A 32-bit grain seed from `seed`; epoch e shuffles with ``(s + e) mod 2**32``, so nearby user
    seeds do not share epochs."""
    return int(np.random.SeedSequence(seed).generate_state(1)[0])


_SHUFFLE_ROUNDS = 4  # the Feistel rounds of `grain.MapDataset.shuffle`'s index shuffle
_MIN_BLOCK_BITS = 16  # grain's smallest cipher block


def _seed_seq_words(seed: int, count: int) -> list[int]:
    """`count` 32-bit words of C++'s ``std::seed_seq{seed}.generate`` (the algorithm the C++
    standard fixes, [rand.util.seedseq]): the round keys grain's index shuffle derives from a
    seed."""
    mask = 0xFFFFFFFF
    n = count
    words = [0x8B8B8B8B] * n
    t = 11 if n >= 623 else 7 if n >= 68 else 5 if n >= 39 else 3 if n >= 7 else (n - 1) // 2
    p = (n - t) // 2
    q = p + t
    m = max(2, n)  # max(len(seeds) + 1, n) with one seed
    for k in range(m):
        x = words[k % n] ^ words[(k + p) % n] ^ words[(k - 1) % n]
        r1 = (1664525 * (x ^ (x >> 27))) & mask
        r2 = (r1 + (1 if k == 0 else k % n + seed if k == 1 else k % n)) & mask
        words[(k + p) % n] = (words[(k + p) % n] + r1) & mask
        words[(k + q) % n] = (words[(k + q) % n] + r2) & mask
        words[k % n] = r2
    for k in range(m, m + n):
        x = (words[k % n] + words[(k + p) % n] + words[(k - 1) % n]) & mask
        r3 = (1566083941 * (x ^ (x >> 27))) & mask
        r4 = (r3 - k % n) & mask
        words[(k + p) % n] ^= r3
        words[(k + q) % n] ^= r4
        words[k % n] = r4
    return words


def _simon_encrypt(blocks: np.ndarray, keys: list[int], word_bits: int) -> np.ndarray:
    """The Simon block cipher of grain's index shuffle on 2 * `word_bits`-bit blocks [n] uint64,
    two rounds per pair of `keys` (keys truncated to a word, as C++'s ``std::bitset`` does)."""
    word = np.uint64((1 << word_bits) - 1)
    left, right = (blocks >> np.uint64(word_bits)) & word, blocks & word

    def rotl(v: np.ndarray, r: int) -> np.ndarray:
        return ((v << np.uint64(r)) | (v >> np.uint64(word_bits - r))) & word

    def f(v: np.ndarray) -> np.ndarray:
        return (rotl(v, 1) & rotl(v, 8)) ^ rotl(v, 2)

    for k1, k2 in zip(keys[::2], keys[1::2], strict=True):
        left ^= f(right) ^ (np.uint64(k1) & word)
        right ^= f(left) ^ (np.uint64(k2) & word)
    return (left << np.uint64(word_bits)) | right


def index_shuffle_order(num_examples: int, seed: int) -> np.ndarray:
    """``[grain.experimental.index_shuffle(i, max_index=N-1, seed=seed, rounds=4) for i < N]``,
    [N] int64: one epoch of ``grain.MapDataset.range(N).shuffle(seed)``, computed for all i at
    once.

    grain shuffles an index by encrypting it with a small block cipher (Simon, keys from
    ``std::seed_seq``) on the smallest even number of bits (>= 16) holding N - 1, re-encrypting
    until the result is <= N - 1 ("cycle walking"). One call per index costs tens of
    microseconds for small N, whose block is mostly outside [0, N), which made index sampling
    the loader's largest cost; here the cipher is applied to the whole block domain once and
    the walks are lookups in that table.

    Examples:
      >>> import grain
      >>> order = index_shuffle_order(10, seed=3)
      >>> sorted(order.tolist()) == list(range(10))  # a permutation
      True
      >>> order.tolist() == [grain.experimental.index_shuffle(i, max_index=9, seed=3, rounds=4)
      ...                    for i in range(10)]  # grain's own, one index at a time
      True
    """
    max_index = num_examples - 1
    if max_index == 0:
        return np.zeros(1, np.int64)
    bits = math.ceil(math.log2(max_index))
    bits = max(bits + bits % 2, _MIN_BLOCK_BITS)
    keys = _seed_seq_words(seed, _SHUFFLE_ROUNDS)
    step = _simon_encrypt(np.arange(1 << bits, dtype=np.uint64), keys, bits // 2)
    out = step[np.arange(num_examples, dtype=np.uint64) & np.uint64((1 << bits) - 1)]
    walking = np.flatnonzero(out > max_index)
    while walking.size:
        out[walking] = step[out[walking]]
        walking = walking[out[walking] > max_index]
    return out.astype(np.int64)


@functools.lru_cache(maxsize=4)
def epoch_order(num_examples: int, seed: int | None, epoch: int) -> np.ndarray:
    """Epoch `epoch`'s visiting order of the example ids [N] int64: storage order when `seed` is
    None, else grain's index shuffle with seed ``(seed + epoch) mod 2**32``, exactly the order of
    ``grain.MapDataset.range(N).shuffle(seed=seed)`` in that epoch.

    Computed once per epoch (and cached for the few epochs a read-ahead spans) instead of once
    per example through grain's `MapDataset` chain, whose per-element cost dominated the loader.
    """
    if seed is None:
        return np.arange(num_examples, dtype=np.int64)
    return index_shuffle_order(num_examples, (seed + epoch) % 2**32)
