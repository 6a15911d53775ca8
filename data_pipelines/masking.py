"""Masked-LM masking: one pure numpy function for the example writer and the input pipeline.

`mask_batch` is google-research/bert's `create_masked_lm_predictions`, vectorized over a
batch: it picks ``min(max_predictions_per_seq, max(1, round(len * p)))`` positions
(``len`` counts [CLS]/[SEP]; Python's half-to-even rounding), never [CLS], [SEP], [PAD]
or [MASK]; each is replaced by [MASK] with probability 0.8, kept with 0.1 and replaced by
a random token with 0.1. Whole-word masking shuffles words (a piece and its "##"
continuations) instead of pieces and skips a word that would overflow the budget. Masked
positions are sorted; positions and labels are padded with 0 (weights 0.0) to
`max_predictions_per_seq`.

`data_pipelines.pretraining_data` masks each block of examples it writes with
`mask_batch` (static masking); with dynamic masking `data_pipelines.pretrain_input` masks
every example on the fly with its own generator, `example_rng(seed, epoch, index)`
(`mask_example` for one example, `mask_rows` for a batch, bit for bit the same).

Deliberate deviations from the reference (tested)
-------------------------------------------------
* **Random replacement tokens** are drawn uniformly from the vocabulary *minus* the
  special tokens ([PAD], [UNK], [CLS], [SEP], [MASK]); the reference draws from the whole
  vocabulary, occasionally inserting [CLS]/[SEP]/[PAD] into the text.
* **Whole words never cross a special token.** The reference attaches a "##" piece
  right after [SEP] to the last word before it; here it starts its own word.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class MaskingSpec:
    """Tokenizer-derived tables and parameters of masked-LM masking.

    `never_mask_ids` are never chosen as a prediction ([CLS], [SEP], [PAD], [MASK]; [UNK]
    may be masked, as in the reference); `special_ids` are never drawn as a random
    replacement; `continuation_mask[id]` marks "##" pieces (whole-word masking).
    """

    vocab_size: int
    mask_id: int
    never_mask_ids: tuple[int, ...]
    special_ids: tuple[int, ...]
    masked_lm_prob: float = 0.15
    max_predictions_per_seq: int = 20
    do_whole_word_mask: bool = False
    continuation_mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.masked_lm_prob <= 1.0:
            raise ValueError(f"masked_lm_prob must be in [0, 1], got {self.masked_lm_prob}")
        if self.max_predictions_per_seq < 1:
            raise ValueError(
                f"max_predictions_per_seq must be >= 1, got {self.max_predictions_per_seq}"
            )
        never = np.zeros(self.vocab_size, dtype=bool)
        never[list(self.never_mask_ids)] = True
        special = np.zeros(self.vocab_size, dtype=bool)
        special[list(self.special_ids)] = True
        replacement = np.flatnonzero(~special).astype(np.int32)
        if replacement.size == 0:
            raise ValueError("the vocabulary has no non-special token to draw replacements from")
        cont = self.continuation_mask
        if cont is None:
            cont = np.zeros(self.vocab_size, dtype=bool)
        cont = np.asarray(cont, dtype=bool)
        if cont.shape != (self.vocab_size,):
            raise ValueError(f"continuation_mask must have shape [{self.vocab_size}]")
        object.__setattr__(self, "continuation_mask", cont)
        object.__setattr__(self, "_never", never)
        object.__setattr__(self, "_replacement", replacement)

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: Any,
        *,
        masked_lm_prob: float = 0.15,
        max_predictions_per_seq: int = 20,
        do_whole_word_mask: bool = False,
    ) -> MaskingSpec:
        """The spec for a `data_pipelines.tokenizers.Tokenizer`."""
        never = sorted({tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id, tokenizer.mask_id})
        return cls(
            vocab_size=int(tokenizer.vocab_size),
            mask_id=int(tokenizer.mask_id),
            never_mask_ids=tuple(int(i) for i in never),
            special_ids=tuple(sorted(int(i) for i in tokenizer.special_ids())),
            masked_lm_prob=float(masked_lm_prob),
            max_predictions_per_seq=int(max_predictions_per_seq),
            do_whole_word_mask=bool(do_whole_word_mask),
            continuation_mask=np.asarray(tokenizer.continuation_mask(), dtype=bool),
        )

    def to_json(self) -> dict[str, Any]:
        out = {
            "vocab_size": self.vocab_size,
            "mask_id": self.mask_id,
            "never_mask_ids": list(self.never_mask_ids),
            "special_ids": list(self.special_ids),
            "masked_lm_prob": self.masked_lm_prob,
            "max_predictions_per_seq": self.max_predictions_per_seq,
            "do_whole_word_mask": self.do_whole_word_mask,
        }
        if self.do_whole_word_mask:
            out["continuation_ids"] = np.flatnonzero(self.continuation_mask).tolist()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MaskingSpec:
        cont = None
        if data.get("continuation_ids") is not None:
            cont = np.zeros(int(data["vocab_size"]), dtype=bool)
            cont[np.asarray(data["continuation_ids"], dtype=np.int64)] = True
        return cls(
            vocab_size=int(data["vocab_size"]),
            mask_id=int(data["mask_id"]),
            never_mask_ids=tuple(data["never_mask_ids"]),
            special_ids=tuple(data["special_ids"]),
            masked_lm_prob=float(data["masked_lm_prob"]),
            max_predictions_per_seq=int(data["max_predictions_per_seq"]),
            do_whole_word_mask=bool(data["do_whole_word_mask"]),
            continuation_mask=cont,
        )


class MaskedExamples(NamedTuple):
    """Masked-LM inputs and targets; leading batch dims as given."""

    input_ids: np.ndarray  # int32 [..., T], masked
    masked_lm_positions: np.ndarray  # int32 [..., P], ascending, padded with 0
    masked_lm_ids: np.ndarray  # int32 [..., P], original ids, padded with 0
    masked_lm_weights: np.ndarray  # float32 [..., P], 1.0 for real predictions


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for dynamically masking example `index` in `epoch`."""
    return np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, epoch, index])))


def mask_example(
    input_ids: np.ndarray,
    length: int,
    spec: MaskingSpec,
    *,
    rng: np.random.Generator | None = None,
    seed: int | Sequence[int] | None = None,
) -> MaskedExamples:
    """Masks one example ([T] ids of which the first `length` are real); see `mask_batch`.

    Pass a generator (`rng`) or a seed (int or sequence of ints, e.g. (seed, epoch,
    index)); the same inputs give the same output.
    """
    if rng is None:
        if seed is None:
            raise ValueError("mask_example needs rng or seed")
        rng = np.random.default_rng(seed)
    ids = np.asarray(input_ids)[None, :]
    out = mask_batch(ids, np.asarray([length]), spec, rng=rng)
    return MaskedExamples(*(a[0] for a in out))


def mask_batch(
    input_ids: np.ndarray, lengths: np.ndarray, spec: MaskingSpec, *, rng: np.random.Generator
) -> MaskedExamples:
    """google-research/bert's `create_masked_lm_predictions`, vectorized over a batch.

    Args:
      input_ids: int [N, T] unmasked ids; positions >= length are padding.
      lengths: int [N] number of real tokens per row.
      spec: tables and parameters (see `MaskingSpec`).
      rng: consumed in a fixed pattern for a given shape, so results are reproducible.
    """

    def draw(key_sizes, key_width, dtype, width, high):
        n = len(key_sizes)  # every row's keys in one [N, key_width] block
        keys = rng.random((n, key_width), dtype=dtype)
        return keys, rng.random((n, width)), rng.integers(0, high, size=(n, width))

    return _mask(input_ids, lengths, spec, draw)


def mask_rows(
    input_ids: np.ndarray,
    lengths: np.ndarray,
    spec: MaskingSpec,
    rngs: Sequence[np.random.Generator],
) -> MaskedExamples:
    """Row i masked with generator ``rngs[i]``, all rows computed at once.

    The result is exactly ``mask_example(input_ids[i], lengths[i], spec, rng=rngs[i])``
    for every row, taken in row order: rows that share one generator draw from it one
    after the other, as successive `mask_example` calls would. Only the draws are made
    row by row (a few per row); the masking itself is vectorized over the batch.
    """
    if len(rngs) != len(input_ids):
        raise ValueError(f"{len(input_ids)} rows but {len(rngs)} generators")

    def draw(key_sizes, key_width, dtype, width, high):
        n = len(key_sizes)
        keys = np.empty((n, key_width), dtype)
        r = np.empty((n, width))
        picks = np.empty((n, width), np.int64)
        for i, (g, size) in enumerate(zip(rngs, key_sizes.tolist(), strict=True)):
            keys[i, :size] = g.random(size, dtype=dtype)
            r[i] = g.random(width)
            picks[i] = g.integers(0, high, size=width)
        return keys, r, picks

    return _mask(input_ids, lengths, spec, draw)


def _mask(
    input_ids: np.ndarray, lengths: np.ndarray, spec: MaskingSpec, draw: Callable
) -> MaskedExamples:
    """The masking of `mask_batch` with its random numbers from `draw`.

    ``draw(key_sizes, key_width, dtype, width, high)`` returns ``(keys, r, picks)``:
    ``keys`` [N, key_width] of `dtype` in [0, 1), of which row i needs the first
    ``key_sizes[i]``; ``r`` [N, width] float64 in [0, 1) (mask / keep / replace);
    ``picks`` [N, width] integers in [0, high) (replacement tokens). A row draws its keys,
    then r, then picks, so one row masked alone consumes its generator as in `mask_example`.
    """
    ids = np.asarray(input_ids, dtype=np.int32)
    lengths = np.asarray(lengths, dtype=np.int64)
    n, t = ids.shape
    p = spec.max_predictions_per_seq
    pos = np.arange(t)
    cand = (pos[None, :] < lengths[:, None]) & ~spec._never[ids]  # [N, T]
    num_cand = cand.sum(axis=1)
    k = np.rint(lengths * spec.masked_lm_prob).astype(np.int64)
    k = np.minimum(np.minimum(p, np.maximum(1, k)), num_cand)  # [N]

    width = min(p, t)
    high = spec._replacement.size
    if spec.do_whole_word_mask:
        prev = np.zeros_like(cand)
        prev[:, 1:] = cand[:, :-1]
        start = cand & ~(spec.continuation_mask[ids] & prev)  # a word starts here
        words_per_row = start.sum(axis=1)
        w = max(1, int(words_per_row.max(initial=0)))
        keys, r, picks = draw(np.maximum(1, words_per_row), w, np.float64, width, high)
        keys[np.arange(w)[None, :] >= words_per_row[:, None]] = 2.0
        selected = _select_whole_words(cand, start, words_per_row, k, keys)
        rows, cols = np.nonzero(selected)  # row-major: ascending positions per row
        count = selected.sum(axis=1)
        rank = np.arange(rows.size) - np.repeat(np.cumsum(count) - count, count)
        positions = np.zeros((n, width), dtype=np.int64)
        positions[rows, rank] = cols
    else:
        # The k candidates with the smallest random keys: a uniform draw without
        # replacement, like shuffling the candidates and taking the first k.
        keys, r, picks = draw(np.full(n, t), t, np.float32, width, high)
        keys[~cand] = 2.0
        part = np.argpartition(keys, width - 1, axis=1)[:, :width] if width < t else None
        if part is None:
            part = np.broadcast_to(np.arange(t), (n, t))
        order = np.take_along_axis(
            part, np.argsort(np.take_along_axis(keys, part, axis=1), axis=1), axis=1
        )
        take = np.arange(width)[None, :] < k[:, None]
        positions = np.sort(np.where(take, order, t), axis=1)  # ascending, padding last
        count = k
    valid = np.arange(width)[None, :] < count[:, None]
    positions = np.where(valid, positions, 0)
    labels = np.where(valid, np.take_along_axis(ids, positions, axis=1), 0)

    random_ids = spec._replacement[picks]
    new = np.where(r < 0.8, spec.mask_id, np.where(r < 0.9, labels, random_ids))
    masked = ids.copy()
    rows = np.broadcast_to(np.arange(n)[:, None], positions.shape)
    masked[rows[valid], positions[valid]] = new[valid]

    out_pos = np.zeros((n, p), dtype=np.int32)
    out_ids = np.zeros((n, p), dtype=np.int32)
    weights = np.zeros((n, p), dtype=np.float32)
    out_pos[:, :width] = positions
    out_ids[:, :width] = labels
    weights[:, :width] = valid
    return MaskedExamples(masked, out_pos, out_ids, weights)


def _select_whole_words(
    cand: np.ndarray,
    start: np.ndarray,
    words_per_row: np.ndarray,
    k: np.ndarray,
    keys: np.ndarray,
) -> np.ndarray:
    """Whole-word selection: order each row's words by `keys` [N, W] (2.0 past the row's
    words), greedily take those that fit the budget `k`."""
    n, t = cand.shape
    w = keys.shape[1]
    rows, cols = np.nonzero(cand)
    word = (np.cumsum(start, axis=1) - 1)[rows, cols]  # word index (in its row) per candidate
    word_len = np.bincount(rows * w + word, minlength=n * w).reshape(n, w)
    order = np.argsort(keys, axis=1)  # a random order of each row's words
    shuffled_len = np.take_along_axis(word_len, order, axis=1).T.copy()  # [W, N]
    chosen = np.zeros((w, n), dtype=bool)
    count = np.zeros(n, dtype=np.int64)
    for r in range(w):
        length = shuffled_len[r]
        fits = (length > 0) & (count + length <= k)
        chosen[r] = fits
        count += np.where(fits, length, 0)
        if np.all(count >= k):
            break
    chosen_word = np.zeros((n, w), dtype=bool)
    np.put_along_axis(chosen_word, order, chosen.T, axis=1)
    selected = np.zeros((n, t), dtype=bool)
    selected[rows, cols] = chosen_word[rows, word]
    return selected
