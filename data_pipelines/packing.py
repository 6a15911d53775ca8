"""Sequence packing for pre-training: several [CLS] A [SEP] B [SEP] pairs per row, each
keeping its own next-sentence label.

Without packing every pair fills one row of `max_seq_length` tokens and the rest is
padding: the pairs that end a document, the `short_seq_prob` pairs and every pair of a
short document. Packing puts up to `max_sequences_per_pack` pairs into one row so that
the encoder computes on real tokens instead of padding.

Plan
----
`plan_packs` assigns every record of a dataset to exactly one pack, before training and
identically in every process (it only needs the records' lengths, read from their
12-byte headers). It is best-fit decreasing, done over the length histogram: lengths are
taken from the longest down; the records of one length (in an order shuffled with the
plan seed, so that pack partners are not neighbours in the file) go into the open packs
with the least room that still fits them, and open new packs when none does. A pack
closes when it is full or holds `max_sequences_per_pack` pairs. The time is linear in the
number of records plus a term quadratic in `max_seq_length`. The packs become the input
pipeline's records: they are shuffled every epoch, sharded over processes and
checkpointed exactly as single examples are (`data_pipelines.pretrain_input`).

Row layout
----------
A packed row holds the usual features plus four that keep the pairs apart:

* ``input_ids, input_mask, segment_ids`` [T]: the pairs one after the other, then
  padding; `segment_ids` is 0/1 within each pair, as unpacked.
* ``position_ids`` [T]: positions restart at 0 at every pair's [CLS].
* ``attention_segment_ids`` [T]: 1 for the first pair, 2 for the second, ..., 0 for
  padding; the model lets a token attend only to tokens of its own pair, so a packed
  pair computes exactly what it computes alone in a row.
* ``masked_lm_positions, masked_lm_ids, masked_lm_weights`` [P]: the pairs' predictions
  with positions shifted to the row; P is `max_predictions_per_pack`.
* ``next_sentence_positions`` [E]: the row position of each pair's [CLS] (the pooler
  and NSP head read there); ``next_sentence_labels`` [E]: each pair's label, -1 for an
  empty slot (the loss skips it). E is `max_sequences_per_pack`.

Prediction budget
-----------------
A pair of `n` tokens has at most ``min(max_pred, max(1, round(n * p)))`` predictions,
which is at most ``n * p + 1``; a pack of at most E pairs and T tokens therefore needs at
most ``min(E * max_pred, floor(T * p) + E)`` prediction slots (`max_predictions_per_pack`).
At T = 128, E = 3 that is 22 slots where an unpacked row has 20; at T = 512 it is 79
(80 unpacked).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from data_pipelines import features as F

DEFAULT_MAX_SEQUENCES_PER_PACK = 3


def max_predictions_per_pack(
    max_seq_length: int, max_predictions_per_seq: int, masked_lm_prob: float, max_sequences: int
) -> int:
    """Prediction slots a pack needs (see "Prediction budget" in the module docstring)."""
    bound = math.floor(max_seq_length * masked_lm_prob + 1e-9) + max_sequences
    return max(1, min(max_sequences * max_predictions_per_seq, bound))


def plan_packs(
    lengths: Sequence[int] | np.ndarray,
    max_seq_length: int,
    max_sequences: int = DEFAULT_MAX_SEQUENCES_PER_PACK,
    seed: int = 0,
) -> np.ndarray:
    """Groups records into packs; returns int32 [num_packs, max_sequences], -1 padded.

    Every record index appears exactly once; the lengths in a row sum to at most
    `max_seq_length`. Deterministic in (lengths, max_seq_length, max_sequences, seed).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if max_sequences < 1:
        raise ValueError(f"max_sequences_per_pack must be >= 1, got {max_sequences}")
    if lengths.size and (lengths.min() < 1 or lengths.max() > max_seq_length):
        bad = int(np.flatnonzero((lengths < 1) | (lengths > max_seq_length))[0])
        raise ValueError(
            f"record {bad} has length {int(lengths[bad])}, outside [1, {max_seq_length}]"
        )
    rng = np.random.default_rng(seed)
    packs: list[list[int]] = []
    # open_by_room[r]: ids of open packs with r free tokens (and a free pair slot).
    open_by_room: list[list[int]] = [[] for _ in range(max_seq_length + 1)]
    order = np.argsort(-lengths, kind="stable")
    bounds = np.flatnonzero(np.diff(lengths[order])) + 1
    for group in np.split(order, bounds) if order.size else []:
        n = int(lengths[group[0]])
        items = rng.permutation(group).tolist()
        while items:
            room = n  # the tightest open pack that fits
            while room <= max_seq_length and not open_by_room[room]:
                room += 1
            if room > max_seq_length:
                # Nothing open fits: new packs, each filled with as many as fit.
                per_pack = min(max_sequences, max_seq_length // n)
                for start in range(0, len(items), per_pack):
                    members = items[start : start + per_pack]
                    left = max_seq_length - n * len(members)
                    if len(members) < max_sequences and left > 0:
                        open_by_room[left].append(len(packs))
                    packs.append(members)
                break
            candidates = open_by_room[room]
            take = min(len(candidates), len(items))
            moved = candidates[len(candidates) - take :]
            del candidates[len(candidates) - take :]
            for pack_id in moved:
                packs[pack_id].append(items.pop())
                left = room - n
                if len(packs[pack_id]) < max_sequences and left > 0:
                    open_by_room[left].append(pack_id)
    out = np.full((len(packs), max_sequences), -1, dtype=np.int32)
    for row, members in enumerate(packs):
        out[row, : len(members)] = members
    return out


def pack_examples(
    examples: Sequence[dict[str, np.ndarray]],
    *,
    max_seq_length: int,
    max_sequences: int,
    max_predictions: int,
    pad_id: int = 0,
) -> dict[str, np.ndarray]:
    """Lays decoded examples (the 7 features each, padded) out in one packed row."""
    if not 1 <= len(examples) <= max_sequences:
        raise ValueError(f"a pack holds 1 to {max_sequences} examples, got {len(examples)}")
    stacked = {k: np.stack([np.asarray(ex[k]) for ex in examples]) for k in examples[0]}
    rows = pack_batch(
        stacked,
        np.zeros(len(examples), np.int64),
        1,
        max_seq_length=max_seq_length,
        max_sequences=max_sequences,
        max_predictions=max_predictions,
        pad_id=pad_id,
    )
    return {k: v[0] for k, v in rows.items()}


def pack_batch(
    examples: dict[str, np.ndarray],
    pack_index: np.ndarray,
    num_packs: int,
    *,
    max_seq_length: int,
    max_sequences: int,
    max_predictions: int,
    pad_id: int = 0,
) -> dict[str, np.ndarray]:
    """Lays a batch of decoded examples out in `num_packs` packed rows at once.

    `examples` holds the 7 features of M examples ([M, T'] / [M, P'] / [M], padded);
    example m goes into row ``pack_index[m]``, after the examples before it with the
    same row. Row r is `pack_examples` of the examples m with ``pack_index[m] == r``,
    in order; every row needs 1 to `max_sequences` of them.
    """
    t, e, p = max_seq_length, max_sequences, max_predictions
    pack_index = np.asarray(pack_index, np.int64)
    if pack_index.size and (pack_index.min() < 0 or pack_index.max() >= num_packs):
        raise ValueError(f"pack_index must be in [0, {num_packs})")
    per_pack = np.bincount(pack_index, minlength=num_packs)
    bad = np.flatnonzero((per_pack < 1) | (per_pack > e))
    if bad.size:
        raise ValueError(f"a pack holds 1 to {e} examples, got {int(per_pack[bad[0]])}")
    order = np.argsort(pack_index, kind="stable")  # by row, in order within a row
    row = pack_index[order]  # [M]
    ex = {name: np.asarray(a)[order] for name, a in examples.items()}
    m = row.size
    first = np.cumsum(per_pack) - per_pack  # each row's first example (sorted)
    slot = np.arange(m) - first[row]  # [M] 0, 1, ... within a row

    def starts(counts: np.ndarray) -> np.ndarray:
        """Each example's start within its row, given per-example counts."""
        before = np.cumsum(counts) - counts
        return before - before[first][row]

    n = ex[F.INPUT_MASK].sum(axis=1)  # [M] tokens
    real = ex[F.MASKED_LM_WEIGHTS] > 0  # [M, P'] real predictions
    npred = real.sum(axis=1)
    offset, pred_offset = starts(n), starts(npred)
    over = np.flatnonzero((offset + n > t) | (pred_offset + npred > p))
    if over.size:
        i = over[0]
        if offset[i] + n[i] > t:
            raise ValueError(f"examples of {offset[i] + n[i]} tokens do not fit a row of {t}")
        raise ValueError(
            f"examples with {pred_offset[i] + npred[i]} masked positions exceed "
            f"max_predictions_per_pack={p}"
        )

    out = {
        F.INPUT_IDS: np.full((num_packs, t), pad_id, np.int32),
        F.INPUT_MASK: np.zeros((num_packs, t), np.int32),
        F.SEGMENT_IDS: np.zeros((num_packs, t), np.int32),
        F.POSITION_IDS: np.zeros((num_packs, t), np.int32),
        F.ATTENTION_SEGMENT_IDS: np.zeros((num_packs, t), np.int32),
        F.MASKED_LM_POSITIONS: np.zeros((num_packs, p), np.int32),
        F.MASKED_LM_IDS: np.zeros((num_packs, p), np.int32),
        F.MASKED_LM_WEIGHTS: np.zeros((num_packs, p), np.float32),
        F.NEXT_SENTENCE_POSITIONS: np.zeros((num_packs, e), np.int32),
        F.NEXT_SENTENCE_LABELS: np.full((num_packs, e), -1, np.int32),
    }
    # Tokens: example m's first n[m] tokens go to its row at [offset, offset + n).
    j = np.arange(ex[F.INPUT_IDS].shape[1])[None, :]
    tok = j < n[:, None]  # [M, T']
    rows = np.broadcast_to(row[:, None], tok.shape)[tok]
    cols = (offset[:, None] + j)[tok]
    out[F.INPUT_IDS][rows, cols] = ex[F.INPUT_IDS][tok]
    out[F.INPUT_MASK][rows, cols] = 1
    out[F.SEGMENT_IDS][rows, cols] = ex[F.SEGMENT_IDS][tok]
    out[F.POSITION_IDS][rows, cols] = np.broadcast_to(j, tok.shape)[tok]
    out[F.ATTENTION_SEGMENT_IDS][rows, cols] = np.broadcast_to(slot[:, None] + 1, tok.shape)[tok]
    # Predictions: the real ones, in order, shifted to the row.
    rows = np.broadcast_to(row[:, None], real.shape)[real]
    cols = (pred_offset[:, None] + np.cumsum(real, axis=1) - 1)[real]
    out[F.MASKED_LM_POSITIONS][rows, cols] = (ex[F.MASKED_LM_POSITIONS] + offset[:, None])[real]
    out[F.MASKED_LM_IDS][rows, cols] = ex[F.MASKED_LM_IDS][real]
    out[F.MASKED_LM_WEIGHTS][rows, cols] = 1.0
    out[F.NEXT_SENTENCE_POSITIONS][row, slot] = offset
    out[F.NEXT_SENTENCE_LABELS][row, slot] = ex[F.NEXT_SENTENCE_LABELS].reshape(m, -1)[:, 0]
    return out


def padding_fraction(lengths: np.ndarray, num_rows: int, max_seq_length: int) -> float:
    """The share of padding tokens when `lengths` fill `num_rows` rows."""
    return 1.0 - float(np.sum(lengths)) / max(1, num_rows * max_seq_length)
