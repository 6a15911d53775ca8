"""Length bucketing for downstream fine-tuning and prediction (GLUE, SQuAD, NER).

Most downstream examples are far shorter than `max_seq_length`: padding every row to 128
tokens makes the encoder compute mostly on padding. Bucketing pads each batch only to the
smallest *bucket length* that fits its longest member, so the model sees a few fixed
shapes (one compilation each) instead of one shape full of padding.

Every example goes to the smallest bucket length >= its length. A batch always has
exactly `batch_size` rows (the global batch size; the caller shards it over the mesh):
``Batch.indices`` lists its ``n <= batch_size`` examples and rows ``n..batch_size-1`` are
padding rows, which the caller fills with a copy of row 0 and weight 0.

Training (`train_batches`): one generator, ``np.random.default_rng([seed, epoch])``,
shuffles the examples within each bucket; each bucket is cut into full batches; the
leftovers of all buckets (fewer than `batch_size` each) are pooled in ascending bucket
order and cut into batches padded to the bucket of their longest member, so an epoch has
at most one partial batch. The same generator then shuffles the order of the batches. An epoch has
``ceil(N / batch_size)`` batches whatever the buckets, so the step count of a schedule
does not depend on bucketing.

Prediction (`eval_batches`): every example once, in a stable sort by length, cut into
batches; `scatter` puts the per-batch outputs back in input order.

No bucketing is ``buckets=(max_seq_length,)``: one shape, every batch padded to
`max_seq_length`. `buckets` is always given; there is no implicit maximum.

Choosing the default ``multiple``: padding fraction (`padding_fraction`) of one training
epoch and distinct shapes, for ``bucket_lengths(128, multiple)`` at batch 32, on synthetic
lengths drawn to SST-2's train figures (N = 67,349; mean 13.4, median 10, p90 27, p99 44,
max 66) and MRPC's (N = 3,668; mean 53, median 53, p90 70, p99 88, max 103)::

    buckets              SST-2 padding  shapes  vs (128,)   MRPC padding  shapes  vs (128,)
    (128,)  unbucketed       89.5 %        1      1.0x         58.7 %        1      1.0x
    multiple 64              79.1 %        2      2.0x         31.1 %        2      1.7x
    multiple 32              61.0 %        3      3.7x         22.4 %        4      1.9x
    multiple 16              36.8 %        5      6.0x         13.6 %        6      2.1x

("vs (128,)": how many times fewer token slots are computed than unbucketed, the ratio
of the real shares 1 - padding.) `eval_batches` gives the same figures: thanks to the
pooled leftovers, the batch lengths of a training epoch are exactly those of a full sort
by length; only which examples share a batch, and the order of the batches, is random.

The default `multiple` is 32: ~3.7x fewer slots on SST-2 and ~1.9x on MRPC for at most
four shapes at length 128 (32, 64, 96, 128), each one compilation of the train step and
one of the eval step. 16 computes 1.6x fewer slots again on SST-2 but allows twice the
shapes (8 at 128, 24 at SQuAD's 384) and, at 16 x 32 rows, runs matmuls too small to keep
an accelerator busy; 64 leaves most of the padding of short sentences.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipelines.features import ATTENTION_SEGMENT_IDS, NEXT_SENTENCE_POSITIONS, POSITION_IDS

DEFAULT_MULTIPLE = 32


@dataclasses.dataclass(frozen=True)
class Batch:
    """One batch of a split.

    Attributes:
      indices: int64 [n], n <= batch_size: the example indices (into the split) of rows
        0..n-1; rows n..batch_size-1 are padding rows. Packed: the batch's examples.
      length: the padded sequence length of every row of this batch (a bucket length).
      packing: None for one example per row; for a packed batch (`pack`) the place of
        each example, (rows, slots, starts), int64 [n] each: its row, its slot (0..E-1)
        among the examples of that row, and the position of its first token in the row.
      num_rows: packed: R, the rows of the batch (the used ones, then empty rows).
    """

    indices: np.ndarray
    length: int
    packing: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    num_rows: int = 0

    @property
    def shape(self) -> int | tuple[int, int]:
        """What the step is compiled for: the length, or (rows, length) when packed."""
        return self.length if self.packing is None else (self.num_rows, self.length)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Batch):
            return NotImplemented
        same_packing = (self.packing is None) == (other.packing is None) and (
            self.packing is None
            or all(np.array_equal(a, b) for a, b in zip(self.packing, other.packing, strict=True))
        )
        return (
            self.length == other.length
            and self.num_rows == other.num_rows
            and np.array_equal(self.indices, other.indices)
            and same_packing
        )

    __hash__ = None  # type: ignore[assignment]


def bucket_lengths(max_seq_length: int, multiple: int = DEFAULT_MULTIPLE) -> tuple[int, ...]:
    """Ascending bucket lengths: the multiples of `multiple` below `max_seq_length`, then
    `max_seq_length` itself; e.g. ``bucket_lengths(128) == (32, 64, 96, 128)``,
    ``bucket_lengths(100) == (32, 64, 96, 100)``.

    Raises:
      ValueError: `max_seq_length` or `multiple` below 1.
    """
    if max_seq_length < 1 or multiple < 1:
        raise ValueError(
            f"max_seq_length and multiple must be >= 1, got {max_seq_length} and {multiple}"
        )
    return (*range(multiple, max_seq_length, multiple), int(max_seq_length))


def _check_buckets(buckets: Sequence[int] | None) -> np.ndarray:
    if buckets is None:
        raise ValueError("buckets is required: pass (max_seq_length,) for no bucketing")
    b = np.asarray(buckets)
    if b.ndim != 1 or b.size == 0 or not np.issubdtype(b.dtype, np.integer):
        raise ValueError(f"buckets must be a non-empty sequence of ints, got {buckets!r}")
    if b[0] < 1 or np.any(np.diff(b) <= 0):
        raise ValueError(f"buckets must be positive and strictly ascending, got {buckets!r}")
    return b.astype(np.int64)


def _check_lengths(lengths: Any, buckets: np.ndarray) -> np.ndarray:
    x = np.asarray(lengths)
    if x.ndim != 1 or (x.size and not np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"lengths must be a 1-D int array, got shape {x.shape} {x.dtype}")
    x = x.astype(np.int64)
    bad = (x < 1) | (x > buckets[-1])
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"example {i} has length {int(x[i])}, outside [1, {int(buckets[-1])}] "
            f"(the longest bucket)"
        )
    return x


def _cut(members: np.ndarray, batch_size: int, length: int) -> list[Batch]:
    return [Batch(members[i : i + batch_size], length) for i in range(0, len(members), batch_size)]


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def train_batches(
    lengths: np.ndarray | Sequence[int],
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    buckets: Sequence[int],
) -> list[Batch]:
    """One epoch of training batches; every example exactly once.

    Args:
      lengths: int [N], the real token count of each example ([CLS]/[SEP] included).
      batch_size: the global batch size; every batch has exactly this many rows.
      seed, epoch: non-negative ints; the shuffles come from
        ``np.random.default_rng([seed, epoch])``. Same arguments, same batches.
      buckets: strictly ascending bucket lengths, e.g. `bucket_lengths(128)`;
        ``(max_seq_length,)`` turns bucketing off.

    Returns:
      ``ceil(N / batch_size)`` batches in shuffled order; at most one has fewer than
      `batch_size` examples. Empty when N == 0.

    Raises:
      ValueError: a length outside [1, max(buckets)] (naming the first such index and its
        length), bad buckets (including None), or batch_size < 1.
    """
    b = _check_buckets(buckets)
    x = _check_lengths(lengths, b)
    _check_batch_size(batch_size)
    rng = np.random.default_rng([seed, epoch])
    bucket_of = np.searchsorted(b, x, side="left")  # [N] smallest bucket >= length
    perm = rng.permutation(len(x))
    order = perm[np.argsort(bucket_of[perm], kind="stable")]  # by bucket, shuffled within
    ends = np.cumsum(np.bincount(bucket_of, minlength=len(b)))
    batches, leftovers, start = [], [], 0
    for k, end in enumerate(ends.tolist()):
        full = start + (end - start) // batch_size * batch_size
        batches += _cut(order[start:full], batch_size, int(b[k]))
        leftovers.append(order[full:end])
        start = end
    pool = np.concatenate(leftovers)  # ascending bucket, as a sort by length would give
    for i in range(0, len(pool), batch_size):
        members = pool[i : i + batch_size]
        batches.append(Batch(members, int(b[bucket_of[members[-1]]])))
    return [batches[i] for i in rng.permutation(len(batches))]


def eval_batches(
    lengths: np.ndarray | Sequence[int], batch_size: int, *, buckets: Sequence[int]
) -> list[Batch]:
    """Every example once, for evaluation and prediction.

    The examples are sorted by length (stable: ties keep input order) and cut into batches
    of `batch_size`; each batch is padded to the bucket of its longest member, and only the
    last batch may be partial. Put the outputs back in input order with `scatter`.

    Args:
      lengths: int [N] real token counts. batch_size: rows per batch.
      buckets: strictly ascending bucket lengths; ``(max_seq_length,)`` for one shape.

    Returns:
      ``ceil(N / batch_size)`` batches, in ascending length. Empty when N == 0.

    Raises:
      ValueError: as `train_batches`.
    """
    b = _check_buckets(buckets)
    x = _check_lengths(lengths, b)
    _check_batch_size(batch_size)
    order = np.argsort(x, kind="stable")
    bucket_of = np.searchsorted(b, x, side="left")
    out = []
    for i in range(0, len(order), batch_size):
        members = order[i : i + batch_size]
        out.append(Batch(members, int(b[bucket_of[members[-1]]])))
    return out


def padding_fraction(
    lengths: np.ndarray | Sequence[int], batches: Sequence[Batch], batch_size: int
) -> float:
    """Share of the computed token slots that are padding.

    The computed slots are ``batch_size * batch.length`` per batch (padding rows included;
    ``num_rows * length`` for a packed batch);
    the real tokens are the members' lengths. Returns a float in [0, 1]; 0.0 for no batches.

    Raises:
      ValueError: a batch with more than `batch_size` examples, or a member longer than
        its batch's length.
    """
    x = np.asarray(lengths, dtype=np.int64)
    slots = real = 0
    for batch in batches:
        members = x[batch.indices]
        rows = batch_size if batch.packing is None else batch.num_rows
        too_many = batch.packing is None and len(members) > batch_size
        if too_many or (len(members) and members.max() > batch.length):
            raise ValueError(
                f"batch of {len(members)} examples does not fit {rows} rows "
                f"of length {batch.length}"
            )
        slots += rows * batch.length
        real += int(members.sum())
    return 0.0 if slots == 0 else 1.0 - real / slots


def scatter(
    values_per_batch: Sequence[Any], batches: Sequence[Batch], num_examples: int
) -> np.ndarray:
    """Outputs computed batch by batch, back in input order.

    Args:
      values_per_batch: one array per batch, [batch_size, ...] (padding rows included,
        any trailing shape, the same for all); only the first ``len(batch.indices)`` rows
        of each are kept. A packed batch's values are [num_rows, E, ...]: example j's is
        at (row, slot) of its `packing`.
      batches: the batches the values were computed on (e.g. from `eval_batches`).
      num_examples: N, the size of the split.

    Returns:
      [N, ...] with row i the output of example i, in the dtype of the values.

    Raises:
      ValueError: a count mismatch, a value with fewer rows than its batch has members, or
        batches that do not cover every example in [0, N) exactly once.
    """
    if len(values_per_batch) != len(batches):
        raise ValueError(f"{len(values_per_batch)} values for {len(batches)} batches")
    if not batches:
        if num_examples:
            raise ValueError(f"no batches for {num_examples} examples")
        return np.zeros((0,), np.float32)
    values = [
        np.asarray(v) if b.packing is None else np.asarray(v)[b.packing[0], b.packing[1]]
        for v, b in zip(values_per_batch, batches, strict=True)
    ]
    index = np.concatenate([batch.indices for batch in batches])
    counts = np.bincount(index, minlength=num_examples) if len(index) else np.zeros(0)
    if len(counts) != num_examples or np.any(counts != 1):
        raise ValueError(f"batches do not cover examples 0..{num_examples - 1} exactly once")
    out = np.empty((num_examples, *values[0].shape[1:]), values[0].dtype)
    for v, batch in zip(values, batches, strict=True):
        n = len(batch.indices)
        if v.shape[0] < n or v.shape[1:] != out.shape[1:]:
            raise ValueError(
                f"values of shape {v.shape} for a batch of {n} examples "
                f"(expected [>={n}, *{out.shape[1:]}])"
            )
        out[batch.indices] = v[:n]
    return out


def describe(
    lengths: np.ndarray | Sequence[int], batches: Sequence[Batch], batch_size: int
) -> dict[str, Any]:
    """Figures for logging a split's batches.

    Returns:
      A dict of plain Python values: ``num_batches``; ``num_shapes``, the number of
      distinct batch shapes used (compilations of a step function); ``shapes``, those
      `Batch.shape` ascending (lengths, or (rows, length) when packed); ``padding_fraction`` (see `padding_fraction`);
      ``partial_batches``, batches with fewer than `batch_size` examples;
      ``examples_per_bucket``, {batch length: examples computed at it}, ascending keys.
    """
    per_length: dict[Any, int] = {}
    for batch in batches:
        per_length[batch.shape] = per_length.get(batch.shape, 0) + len(batch.indices)
    shapes = tuple(sorted(per_length))
    return {
        "num_batches": len(batches),
        "num_shapes": len(shapes),
        "shapes": shapes,
        "padding_fraction": padding_fraction(lengths, batches, batch_size),
        "partial_batches": sum(len(batch.indices) < batch_size for batch in batches),
        "examples_per_bucket": {k: per_length[k] for k in shapes},
    }


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Batches in one epoch of `train_batches` (or in `eval_batches`): ceil(N / batch_size)."""
    return math.ceil(num_examples / batch_size)


# --- Packing ------------------------------------------------------------------------------------
# Bucketing still pads every example to its bucket: SST-2's sentences (13 tokens on
# average) sit in rows of 32, more than half padding. Packing puts several examples into
# one row of `length` tokens, each keeping its own positions (restarting at 0), its own
# [CLS] (where the pooler reads) and an attention that stays within the example
# (`attention_segment_ids`), as pre-training's packed pairs do (data_pipelines/packing.py):
# a packed example computes what it computes alone in a row. A training batch still holds
# exactly `batch_size` examples, so the recipe (examples per step) is unchanged; only the
# number of rows they need varies, and it is rounded up to one of a few row counts chosen
# for the whole run (`choose_row_counts`), which are the compiled shapes.


def pack(lengths: np.ndarray | Sequence[int], length: int, max_slots: int):
    """Best-fit decreasing: examples into rows of `length` tokens, at most `max_slots` each.

    The examples go longest first (ties in index order), each into the open row with the
    least room that still fits it (ties: the lowest row), or into a new row.

    Args:
      lengths: int [n], each in [1, length].
      length: the row length T. max_slots: E >= 1, the most examples a row holds.

    Returns:
      (rows, slots, starts, num_rows): int64 [n] each (see `Batch.packing`) and the rows
      used. Deterministic.

    Raises:
      ValueError: a length outside [1, length], or max_slots < 1.
    """
    import bisect

    x = _check_lengths(lengths, np.asarray([length]))
    if max_slots < 1:
        raise ValueError(f"max_slots must be >= 1, got {max_slots}")
    n = len(x)
    rows, slots, starts = (np.zeros(n, np.int64) for _ in range(3))
    fill: list[int] = []
    count: list[int] = []
    open_rows: list[tuple[int, int]] = []  # (room, row), sorted: rows that can take more
    for i in np.argsort(-x, kind="stable").tolist():
        need = int(x[i])
        j = bisect.bisect_left(open_rows, (need, -1))
        if j < len(open_rows):
            r = open_rows.pop(j)[1]
        else:
            r = len(fill)
            fill.append(0)
            count.append(0)
        rows[i], slots[i], starts[i] = r, count[r], fill[r]
        fill[r] += need
        count[r] += 1
        if count[r] < max_slots and fill[r] < length:
            bisect.insort(open_rows, (length - fill[r], r))
    return rows, slots, starts, len(fill)


def packed_train_batches(
    lengths: np.ndarray | Sequence[int],
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    length: int,
    max_slots: int,
) -> list[Batch]:
    """One epoch of packed training batches; every example exactly once.

    ``np.random.default_rng([seed, epoch])`` shuffles the examples, which are cut into
    ``ceil(N / batch_size)`` batches of `batch_size` (the last may be short), and each
    batch is packed (`pack`) into rows of `length`. `num_rows` is the rows each batch
    uses; `round_rows` gives it one of the run's compiled row counts.

    Raises:
      ValueError: as `train_batches` and `pack`.
    """
    x = _check_lengths(lengths, np.asarray([length]))
    _check_batch_size(batch_size)
    perm = np.random.default_rng([seed, epoch]).permutation(len(x))
    out = []
    for i in range(0, len(x), batch_size):
        members = perm[i : i + batch_size]
        *packing, used = pack(x[members], length, max_slots)
        out.append(Batch(members, int(length), tuple(packing), used))
    return out


def choose_row_counts(needed: Sequence[int], *, multiple: int, max_shapes: int) -> tuple[int, ...]:
    """The row counts a run's packed batches are padded to (each count is one compiled
    shape): at most `max_shapes` multiples of `multiple`, the largest fitting every batch,
    chosen to compute the fewest rows in total when each batch takes the smallest count
    that fits it (exact, by dynamic programming over the distinct rounded needs).

    Raises:
      ValueError: no batches, or multiple / max_shapes below 1.
    """
    if multiple < 1 or max_shapes < 1:
        raise ValueError(f"multiple and max_shapes must be >= 1, got {multiple}, {max_shapes}")
    if not len(needed):
        raise ValueError("no batches to choose row counts for")
    rounded = -(-np.asarray(needed, np.int64) // multiple) * multiple
    values, counts = np.unique(rounded, return_counts=True)
    v, c = values.tolist(), counts.tolist()
    # cost[j][s]: fewest rows for the batches of values[:j+1] with s shapes, the last at v[j].
    inf = float("inf")
    cost = [[inf] * (max_shapes + 1) for _ in v]
    back = [[-1] * (max_shapes + 1) for _ in v]
    for j in range(len(v)):
        cost[j][1] = v[j] * sum(c[: j + 1])
        for s in range(2, max_shapes + 1):
            for i in range(j):
                value = cost[i][s - 1] + v[j] * sum(c[i + 1 : j + 1])
                if value < cost[j][s]:
                    cost[j][s], back[j][s] = value, i
    last = len(v) - 1
    s = min(range(1, max_shapes + 1), key=lambda k: (cost[last][k], k))
    chosen, j = [], last
    while j >= 0 and s >= 1:
        chosen.append(v[j])
        j, s = back[j][s], s - 1
    return tuple(sorted(chosen))


def round_rows(batches: Sequence[Batch], row_counts: Sequence[int]) -> list[Batch]:
    """`batches` with `num_rows` raised to the smallest of `row_counts` that fits.

    Raises:
      ValueError: a batch needing more rows than the largest count.
    """
    counts = sorted(row_counts)
    out = []
    for b in batches:
        k = int(np.searchsorted(counts, b.num_rows, side="left"))
        if k == len(counts):
            raise ValueError(f"a batch needs {b.num_rows} rows, more than {counts[-1]}")
        out.append(dataclasses.replace(b, num_rows=int(counts[k])))
    return out


def packed_eval_batches(
    lengths: np.ndarray | Sequence[int], *, rows_per_batch: int, length: int, max_slots: int
) -> list[Batch]:
    """Every example once, packed for evaluation and prediction: the whole split is packed
    (`pack`) and its rows are cut into batches of `rows_per_batch` (one compiled shape;
    the last batch's unused rows are empty). Put the outputs back with `scatter`.

    Raises:
      ValueError: as `pack`, or rows_per_batch < 1.
    """
    if rows_per_batch < 1:
        raise ValueError(f"rows_per_batch must be >= 1, got {rows_per_batch}")
    x = _check_lengths(lengths, np.asarray([length]))
    rows, slots, starts, used = pack(x, length, max_slots)
    group = rows // rows_per_batch
    out = []
    for g in range(-(-used // rows_per_batch)):
        members = np.flatnonzero(group == g)
        packing = (rows[members] - g * rows_per_batch, slots[members], starts[members])
        out.append(Batch(members, int(length), packing, rows_per_batch))
    return out


def take_packed(
    arrays: dict[str, np.ndarray],
    batch: Batch,
    keys: Sequence[str],
    *,
    lengths: np.ndarray | Sequence[int],
    max_slots: int,
    token_keys: Sequence[str],
    weight_key: str,
) -> dict[str, np.ndarray]:
    """The host batch of a packed `batch`.

    `lengths`: int [N], every example's real token count (the one `batch` was packed with).
    Per-token arrays (`token_keys`, [N, T0] with T0 >= batch.length) are copied into rows
    [R, length], each example's first `lengths` tokens at its start; every other array of
    `keys` ([N, ...], one value per example) becomes [R, E, ...] at (row, slot) (E =
    `max_slots`), zeros in empty slots. Added: ``position_ids`` and
    ``attention_segment_ids`` [R, length] (positions from 0 and slot + 1 per example; 0 on
    padding), ``next_sentence_positions`` [R, E] (each example's [CLS] position, where the
    pooler reads; 0 in empty slots) and `weight_key` float32 [R, E] (1 for the examples, 0
    for empty slots).
    """
    assert batch.packing is not None
    rows, slots, starts = batch.packing
    R, T, E = batch.num_rows, batch.length, max_slots
    lengths = np.asarray(lengths)[batch.indices]  # [n]
    out: dict[str, np.ndarray] = {}
    for k in keys:
        value = np.asarray(arrays[k])[batch.indices]
        if k in token_keys:
            row = np.zeros((R, T, *value.shape[2:]), value.dtype)
            for j in range(len(rows)):
                row[rows[j], starts[j] : starts[j] + lengths[j]] = value[j, : lengths[j]]
            out[k] = row
        else:
            slot = np.zeros((R, E, *value.shape[1:]), value.dtype)
            slot[rows, slots] = value
            out[k] = slot
    positions = np.zeros((R, T), np.int32)
    segments = np.zeros((R, T), np.int32)
    for j in range(len(rows)):
        span = slice(starts[j], starts[j] + lengths[j])
        positions[rows[j], span] = np.arange(lengths[j])
        segments[rows[j], span] = slots[j] + 1
    cls = np.zeros((R, E), np.int32)
    cls[rows, slots] = starts
    weight = np.zeros((R, E), np.float32)
    weight[rows, slots] = 1.0
    out.update(
        {
            POSITION_IDS: positions,
            ATTENTION_SEGMENT_IDS: segments,
            NEXT_SENTENCE_POSITIONS: cls,
            weight_key: weight,
        }
    )
    return out
