"""Length bucketing: coverage, bucket fit, determinism, sorting, scatter and padding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from data_pipelines import bucketing as bk

B32 = bk.bucket_lengths(128)  # (32, 64, 96, 128)


def _cases():
    rng = np.random.default_rng(0)
    return {
        "uniform": (rng.integers(1, 129, 1000), 32, B32),
        "fewer_than_batch": (np.array([7, 100, 33]), 8, B32),
        "multiple_of_batch": (rng.integers(1, 129, 256), 32, B32),
        "all_same_length": (np.full(100, 40), 16, B32),
        "at_boundaries": (np.repeat([32, 33, 64, 65, 96, 97, 128], 11), 8, B32),
        "length_one": (np.array([1, 1, 2, 128, 1]), 2, B32),
        "one_bucket": (rng.integers(1, 129, 77), 10, (128,)),
        "odd_buckets": (rng.integers(1, 101, 300), 7, bk.bucket_lengths(100, 48)),
        "empty": (np.zeros(0, np.int64), 4, B32),
    }


CASES = _cases()


def _smallest_bucket(length, buckets):
    return min(b for b in buckets if b >= length)


def _check_cover(batches, lengths, batch_size, buckets):
    n = len(lengths)
    assert len(batches) == math.ceil(n / batch_size)
    index = np.concatenate([b.indices for b in batches]) if batches else np.zeros(0, int)
    assert sorted(index.tolist()) == list(range(n))  # every example exactly once
    assert sum(len(b.indices) < batch_size for b in batches) <= 1  # at most one partial
    for b in batches:
        assert b.indices.dtype == np.int64 and 1 <= len(b.indices) <= batch_size
        assert b.length in buckets
        assert b.length == _smallest_bucket(lengths[b.indices].max(), buckets)


def test_bucket_lengths():
    assert bk.bucket_lengths(128) == (32, 64, 96, 128)
    assert bk.bucket_lengths(128, 16) == (16, 32, 48, 64, 80, 96, 112, 128)
    assert bk.bucket_lengths(128, 64) == (64, 128)
    assert bk.bucket_lengths(100) == (32, 64, 96, 100)
    assert bk.bucket_lengths(30) == (30,)
    assert bk.bucket_lengths(384) == tuple(range(32, 385, 32))
    with pytest.raises(ValueError):
        bk.bucket_lengths(0)
    with pytest.raises(ValueError):
        bk.bucket_lengths(128, 0)


@pytest.mark.parametrize("name", CASES)
def test_train_covers_every_example_once_and_fits(name):
    lengths, batch_size, buckets = CASES[name]
    for epoch in range(3):
        batches = bk.train_batches(lengths, batch_size, seed=5, epoch=epoch, buckets=buckets)
        _check_cover(batches, lengths, batch_size, buckets)


@pytest.mark.parametrize("name", CASES)
def test_eval_covers_sorted_and_matches_a_full_sort(name):
    lengths, batch_size, buckets = CASES[name]
    batches = bk.eval_batches(lengths, batch_size, buckets=buckets)
    _check_cover(batches, lengths, batch_size, buckets)
    index = np.concatenate([b.indices for b in batches]) if batches else np.zeros(0, int)
    key = lengths[index]
    assert np.all(np.diff(key) >= 0)  # ascending length
    assert np.all(np.diff(index)[np.diff(key) == 0] > 0)  # ties keep input order
    assert all(len(b.indices) == batch_size for b in batches[:-1])  # only the last partial
    # Batch lengths: the bucket of each chunk's longest member of the sorted lengths.
    s = np.sort(lengths)
    expected = [
        _smallest_bucket(s[i : i + batch_size].max(), buckets) for i in range(0, len(s), batch_size)
    ]
    assert [b.length for b in batches] == expected
    # Training computes exactly the same shapes (pooled leftovers); only membership differs.
    train = bk.train_batches(lengths, batch_size, seed=0, epoch=0, buckets=buckets)
    assert sorted(b.length for b in train) == sorted(expected)


def test_full_batches_keep_their_bucket_and_leftovers_are_pooled():
    # Batch 2; buckets 32: {10, 20, 5}, 64: {40, 50, 60}, 128: {100}. Each bucket gives one
    # full batch of its own length; the three leftovers pool into [<=32, <=64] (padded to
    # 64) and [100] (128, the partial batch).
    lengths = np.array([10, 20, 40, 50, 60, 100, 5])
    for epoch in range(4):
        batches = bk.train_batches(lengths, 2, seed=1, epoch=epoch, buckets=(32, 64, 128))
        by_length = sorted((b.length, sorted(lengths[b.indices].tolist())) for b in batches)
        assert [length for length, _ in by_length] == [32, 64, 64, 128]
        assert by_length[3][1] == [100]
        full32, pooled_or_full64 = by_length[0][1], [by_length[1][1], by_length[2][1]]
        assert set(full32) <= {5, 10, 20} and len(full32) == 2
        mixed = [m for m in pooled_or_full64 if min(m) <= 32]  # the pooled one
        assert len(mixed) == 1 and max(mixed[0]) > 32
        assert bk.padding_fraction(lengths, batches, 2) == pytest.approx(1 - 285 / 576)


def test_train_is_deterministic_per_seed_and_epoch():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 129, 2000)
    a = bk.train_batches(lengths, 32, seed=7, epoch=2, buckets=B32)
    b = bk.train_batches(list(lengths), 32, seed=7, epoch=2, buckets=list(B32))
    assert a == b
    other_epoch = bk.train_batches(lengths, 32, seed=7, epoch=3, buckets=B32)
    other_seed = bk.train_batches(lengths, 32, seed=8, epoch=2, buckets=B32)
    for other in (other_epoch, other_seed):
        assert [x.length for x in other] != [x.length for x in a]  # batch order differs
        first = {tuple(sorted(x.indices.tolist())) for x in a}
        assert first != {tuple(sorted(x.indices.tolist())) for x in other}  # membership too


def test_train_shuffles_within_a_bucket():
    lengths = np.full(320, 20)
    batches = bk.train_batches(lengths, 32, seed=0, epoch=0, buckets=B32)
    assert all(b.length == 32 and len(b.indices) == 32 for b in batches)
    flat = np.concatenate([b.indices for b in batches])
    assert not np.array_equal(flat, np.arange(320))
    # Neighbours in the input are spread: no batch is a contiguous run of indices.
    assert all(np.ptp(b.indices) > 31 for b in batches)


def test_no_bucketing_is_one_shape():
    rng = np.random.default_rng(4)
    lengths = rng.integers(1, 129, 100)
    batches = bk.train_batches(lengths, 32, seed=0, epoch=0, buckets=(128,))
    assert [len(b.indices) for b in batches].count(4) == 1
    assert {b.length for b in batches} == {128}
    assert bk.padding_fraction(lengths, batches, 32) == pytest.approx(
        1 - lengths.sum() / (4 * 32 * 128)
    )


def test_scatter_restores_input_order():
    rng = np.random.default_rng(5)
    lengths = rng.integers(1, 129, 203)
    for batches in (
        bk.eval_batches(lengths, 16, buckets=B32),
        bk.train_batches(lengths, 16, seed=0, epoch=0, buckets=B32),
    ):
        values = []
        for b in batches:
            v = np.full((16, 3), -1.0, np.float32)  # padding rows: junk that must not leak
            v[: len(b.indices)] = np.stack([b.indices, lengths[b.indices], 2 * b.indices], 1)
            values.append(v)
        out = bk.scatter(values, batches, len(lengths))
        assert out.shape == (203, 3) and out.dtype == np.float32
        np.testing.assert_array_equal(out[:, 0], np.arange(203))
        np.testing.assert_array_equal(out[:, 1], lengths)
        np.testing.assert_array_equal(out[:, 2], 2 * np.arange(203))
    # 1-D per-example values (e.g. predicted labels).
    batches = bk.eval_batches(lengths, 16, buckets=B32)
    labels = [np.pad(b.indices % 3, (0, 16 - len(b.indices)), constant_values=9) for b in batches]
    np.testing.assert_array_equal(bk.scatter(labels, batches, 203), np.arange(203) % 3)


def test_scatter_rejects_mismatches():
    batches = bk.eval_batches(np.array([3, 9, 5]), 2, buckets=B32)
    values = [np.zeros((2, 4)), np.zeros((2, 4))]
    with pytest.raises(ValueError, match="values for"):
        bk.scatter(values[:1], batches, 3)
    with pytest.raises(ValueError, match="exactly once"):
        bk.scatter(values, batches, 4)
    with pytest.raises(ValueError, match="exactly once"):
        bk.scatter(values, [batches[0], batches[0]], 3)
    with pytest.raises(ValueError, match="shape"):
        bk.scatter([np.zeros((1, 4)), np.zeros((2, 4))], batches, 3)
    assert bk.scatter([], [], 0).shape == (0,)


def test_padding_fraction_by_hand():
    # Batch 4, buckets (32, 64, 128). Sorted 3 5 30 33 | 64 70: the first batch's longest
    # member (33) needs 64, the second (70) needs 128 and has two padding rows.
    lengths = np.array([70, 3, 33, 64, 30, 5])
    batches = bk.eval_batches(lengths, 4, buckets=(32, 64, 128))
    assert [b.length for b in batches] == [64, 128]
    assert [b.indices.tolist() for b in batches] == [[1, 5, 4, 2], [3, 0]]
    # Slots 4 * 64 + 4 * 128 = 768; real tokens 205.
    assert bk.padding_fraction(lengths, batches, 4) == pytest.approx(563 / 768)
    d = bk.describe(lengths, batches, 4)
    assert d == {
        "num_batches": 2,
        "num_shapes": 2,
        "shapes": (64, 128),
        "padding_fraction": pytest.approx(563 / 768),
        "partial_batches": 1,
        "examples_per_bucket": {64: 4, 128: 2},
    }
    hand = [bk.Batch(np.array([1]), 32), bk.Batch(np.array([0, 2]), 128)]
    assert bk.padding_fraction(lengths, hand, 2) == pytest.approx(1 - 106 / (2 * 32 + 2 * 128))
    assert bk.padding_fraction(lengths, [], 4) == 0.0
    with pytest.raises(ValueError):  # 70 does not fit a length-64 batch
        bk.padding_fraction(lengths, [bk.Batch(np.array([0]), 64)], 4)
    with pytest.raises(ValueError):  # three members for two rows
        bk.padding_fraction(lengths, [bk.Batch(np.array([1, 2, 4]), 128)], 2)


def test_bucketing_cuts_padding_on_a_skewed_distribution():
    # Short single sentences: lognormal with mean ~13 tokens, at least [CLS] x [SEP].
    rng = np.random.default_rng(6)
    lengths = np.clip(np.round(rng.lognormal(np.log(10), 0.72, 20000)), 3, 66).astype(int)
    assert 12 < lengths.mean() < 14 and lengths.max() == 66
    flat = bk.train_batches(lengths, 32, seed=0, epoch=0, buckets=(128,))
    bucketed = bk.train_batches(lengths, 32, seed=0, epoch=0, buckets=B32)
    p_flat = bk.padding_fraction(lengths, flat, 32)
    p_bucketed = bk.padding_fraction(lengths, bucketed, 32)
    assert p_flat == pytest.approx(1 - lengths.sum() / (625 * 32 * 128))
    assert p_flat > 0.88 and p_bucketed < 0.65
    # The computed slots shrink more than 3x.
    assert (1 - p_bucketed) / (1 - p_flat) > 3
    d = bk.describe(lengths, bucketed, 32)
    assert d["num_shapes"] == 3 and d["shapes"] == (32, 64, 96)
    assert sum(d["examples_per_bucket"].values()) == 20000


def test_bad_inputs_raise():
    good = (32, 64, 128)
    for fn in (
        lambda x, b: bk.train_batches(x, 4, seed=0, epoch=0, buckets=b),
        lambda x, b: bk.eval_batches(x, 4, buckets=b),
    ):
        with pytest.raises(ValueError, match=r"example 3 has length 129"):
            fn(np.array([5, 128, 7, 129, 300]), good)
        with pytest.raises(ValueError, match=r"example 1 has length 0"):
            fn(np.array([5, 0, 7]), good)
        with pytest.raises(ValueError, match=r"example 0 has length 65"):
            fn(np.array([65]), (32, 64))
        with pytest.raises(ValueError, match="required"):
            fn(np.array([5]), None)
        with pytest.raises(ValueError, match="ascending"):
            fn(np.array([5]), (64, 32))
        with pytest.raises(ValueError, match="1-D"):
            fn(np.array([[5]]), good)
    with pytest.raises(ValueError, match="batch_size"):
        bk.eval_batches(np.array([5]), 0, buckets=good)


def test_large_split_covers_every_example():
    lengths = np.random.default_rng(7).integers(1, 129, 400_000)
    train = bk.train_batches(lengths, 32, seed=0, epoch=0, buckets=B32)
    evals = bk.eval_batches(lengths, 32, buckets=B32)
    assert len(train) == 12500 and bk.steps_per_epoch(400_000, 32) == 12500
    for batches in (train, evals):
        seen = np.sort(np.concatenate([b.indices for b in batches]))
        np.testing.assert_array_equal(seen, np.arange(400_000))


# --- Packing ------------------------------------------------------------------------------------


def _check_rows(lengths, batch, length, max_slots):
    """Each example lies inside its row, examples of a row do not overlap, slots are
    0..k-1 in each row and no row holds more than max_slots."""
    rows, slots, starts = batch.packing
    x = np.asarray(lengths)[batch.indices]
    assert np.all(rows < batch.num_rows) and np.all(starts + x <= length)
    for r in np.unique(rows):
        mine = np.flatnonzero(rows == r)
        assert sorted(slots[mine].tolist()) == list(range(len(mine))) and len(mine) <= max_slots
        spans = sorted(zip(starts[mine].tolist(), (starts[mine] + x[mine]).tolist(), strict=True))
        assert all(a[1] <= b[0] for a, b in zip(spans[:-1], spans[1:], strict=True))


@pytest.mark.parametrize("name", ["uniform", "fewer_than_batch", "all_same_length", "length_one"])
def test_packed_train_batches_cover_every_example_once_and_fit(name):
    lengths, batch_size, _ = CASES[name]
    for epoch in (1, 2):
        batches = bk.packed_train_batches(
            lengths, batch_size, seed=3, epoch=epoch, length=128, max_slots=8
        )
        assert len(batches) == math.ceil(len(lengths) / batch_size)
        index = np.concatenate([b.indices for b in batches])
        assert sorted(index.tolist()) == list(range(len(lengths)))
        assert all(len(b.indices) == batch_size for b in batches[:-1])
        for b in batches:
            _check_rows(lengths, b, 128, 8)
            x = np.asarray(lengths)[b.indices]
            # Never more rows than one example per row, never fewer than the tokens need.
            assert math.ceil(x.sum() / 128) <= b.num_rows <= len(x)


def test_packed_train_batches_are_deterministic_per_seed_and_epoch():
    lengths = CASES["uniform"][0]
    a = bk.packed_train_batches(lengths, 32, seed=7, epoch=2, length=128, max_slots=32)
    b = bk.packed_train_batches(list(lengths), 32, seed=7, epoch=2, length=128, max_slots=32)
    assert a == b
    assert a != bk.packed_train_batches(lengths, 32, seed=7, epoch=3, length=128, max_slots=32)
    assert a != bk.packed_train_batches(lengths, 32, seed=8, epoch=2, length=128, max_slots=32)


def test_pack_is_best_fit_decreasing():
    # Longest first: 60 and 50 fill row 0 to 110 (room 18); 40 opens row 1; 30 and 20 go
    # to row 1 (row 0's room 18 is too small); 18 fits row 0 exactly, the best fit over
    # row 1's 38; 10 goes to row 1.
    rows, slots, starts, used = bk.pack([60, 50, 40, 30, 20, 18, 10], 128, max_slots=8)
    assert used == 2
    assert rows.tolist() == [0, 0, 1, 1, 1, 0, 1]
    assert slots.tolist() == [0, 1, 0, 1, 2, 2, 3]
    assert starts.tolist() == [0, 60, 0, 40, 70, 110, 90]
    # The slot cap opens new rows although tokens would fit.
    assert bk.pack([1] * 10, 128, max_slots=4)[3] == 3
    with pytest.raises(ValueError, match="length 129"):
        bk.pack([5, 129], 128, max_slots=4)


def test_choose_row_counts_minimises_the_rows_computed():
    rng = np.random.default_rng(1)
    import itertools

    for _ in range(30):
        needed = rng.integers(1, 20, rng.integers(1, 40)).tolist()
        for multiple in (1, 2, 4):
            for max_shapes in (1, 2, 3):
                got = bk.choose_row_counts(needed, multiple=multiple, max_shapes=max_shapes)
                rounded = sorted({-(-n // multiple) * multiple for n in needed})

                def cost(counts, needed=needed):
                    return sum(min(c for c in counts if c >= n) for n in needed)

                best = min(
                    cost(c)
                    for k in range(1, max_shapes + 1)
                    for c in itertools.combinations(rounded, k)
                    if max(c) == rounded[-1]
                )
                assert len(got) <= max_shapes and got[-1] == rounded[-1]
                assert all(c % multiple == 0 for c in got) and cost(got) == best
    with pytest.raises(ValueError, match="no batches"):
        bk.choose_row_counts([], multiple=1, max_shapes=2)


def test_round_rows_and_packed_eval_batches_scatter_back_in_input_order():
    rng = np.random.default_rng(2)
    lengths = rng.integers(1, 60, 203)
    batches = bk.packed_train_batches(lengths, 16, seed=0, epoch=1, length=64, max_slots=16)
    counts = bk.choose_row_counts([b.num_rows for b in batches], multiple=2, max_shapes=2)
    rounded = bk.round_rows(batches, counts)
    assert {b.num_rows for b in rounded} <= set(counts)
    assert all(r.num_rows >= b.num_rows for r, b in zip(rounded, batches, strict=True))
    with pytest.raises(ValueError, match="more than"):
        bk.round_rows(batches, [1])

    ev = bk.packed_eval_batches(lengths, rows_per_batch=4, length=64, max_slots=16)
    assert {b.num_rows for b in ev} == {4}
    for b in ev:
        _check_rows(lengths, b, 64, 16)
    # Values [R, E] holding each example's index at its (row, slot) come back in order.
    values = []
    for b in ev:
        v = np.full((4, 16), -1)
        v[b.packing[0], b.packing[1]] = b.indices
        values.append(v)
    np.testing.assert_array_equal(bk.scatter(values, ev, len(lengths)), np.arange(len(lengths)))
    real = int(lengths.sum())
    assert bk.padding_fraction(lengths, ev, 16) == pytest.approx(1 - real / (len(ev) * 4 * 64))
