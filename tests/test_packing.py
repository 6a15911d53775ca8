"""Sequence packing: the plan, the row layout, the packed input pipeline, and a packed row
computing exactly what its pairs compute alone (MLM and per-pair NSP)."""

from __future__ import annotations

import collections

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _data_helpers import make_documents, tiny_model_config, write_corpus

from bertjax import losses
from bertjax.model import BertForPreTraining
from data_pipelines import features as F
from data_pipelines import packing
from data_pipelines import pretrain_input as pinput
from data_pipelines import pretraining_data as pdata
from data_pipelines.records import decode_records, load_dataset_info, read_examples

T, P, E = 128, 20, 3


def _check_plan(plan, lengths, t, e):
    members = plan[plan >= 0]
    assert sorted(members.tolist()) == list(range(len(lengths)))  # each record exactly once
    for row in plan:
        real = row[row >= 0]
        assert 1 <= len(real) <= e
        assert lengths[real].sum() <= t
        assert np.all(row[len(real) :] == -1)  # members first, then padding


@pytest.mark.parametrize("t,e", [(128, 3), (512, 3), (128, 1), (64, 8)])
def test_plan_covers_every_record_once_and_fits(t, e):
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(5, t + 1, 500), np.full(40, t), np.full(60, 7)])
    plan = packing.plan_packs(lengths, t, e, seed=1)
    _check_plan(plan, lengths, t, e)
    if e == 1:
        assert len(plan) == len(lengths)
    np.testing.assert_array_equal(plan, packing.plan_packs(lengths, t, e, seed=1))


def _best_fit_decreasing(lengths, t, e):
    """The textbook item-by-item algorithm: each item into the fullest pack it fits."""
    packs = []  # [free tokens, pairs]
    for n in sorted(lengths, reverse=True):
        fits = [p for p in packs if p[1] < e and p[0] >= n]
        if fits:
            best = min(fits, key=lambda p: p[0])
            best[0] -= n
            best[1] += 1
        else:
            packs.append([t - n, 1])
    return len(packs)


def test_plan_matches_best_fit_decreasing_and_the_lower_bound():
    # Mostly short pairs (ends of documents, short documents) and some full ones.
    rng = np.random.default_rng(2)
    t, e = 128, 3
    lengths = np.concatenate([rng.integers(10, 70, 1200), rng.integers(100, 129, 400)])
    plan = packing.plan_packs(lengths, t, e, seed=0)
    assert len(plan) == _best_fit_decreasing(lengths.tolist(), t, e)
    lower = max(np.ceil(lengths.sum() / t), np.ceil(len(lengths) / e), np.sum(lengths > t // 2))
    assert len(plan) <= 1.05 * lower
    before = packing.padding_fraction(lengths, len(lengths), t)
    after = packing.padding_fraction(lengths, len(plan), t)
    assert before > 0.5 and after < 0.1


def test_plan_rejects_bad_lengths_and_counts():
    with pytest.raises(ValueError, match="record 1 has length 40"):
        packing.plan_packs([3, 40], 32)
    with pytest.raises(ValueError, match="max_sequences_per_pack"):
        packing.plan_packs([3], 32, 0)
    assert packing.plan_packs([], 32).shape == (0, 3)


def test_prediction_budget():
    assert packing.max_predictions_per_pack(128, 20, 0.15, 3) == 22
    assert packing.max_predictions_per_pack(512, 80, 0.15, 3) == 79
    assert packing.max_predictions_per_pack(128, 20, 0.15, 1) == 20
    # The bound holds for any pack the planner may form.
    rng = np.random.default_rng(0)
    for _ in range(2000):
        n = rng.integers(1, 4)
        lens = rng.multinomial(128 - rng.integers(0, 40), np.ones(n) / n) + 0
        lens = lens[lens > 0]
        preds = [min(20, max(1, round(x * 0.15))) for x in lens]
        assert sum(preds) <= packing.max_predictions_per_pack(128, 20, 0.15, 3)


def _example(ids, seg_a, positions, nsp):
    t = 16
    n = len(ids)
    ex = {
        F.INPUT_IDS: np.zeros(t, np.int32),
        F.INPUT_MASK: np.zeros(t, np.int32),
        F.SEGMENT_IDS: np.zeros(t, np.int32),
        F.MASKED_LM_POSITIONS: np.zeros(3, np.int32),
        F.MASKED_LM_IDS: np.zeros(3, np.int32),
        F.MASKED_LM_WEIGHTS: np.zeros(3, np.float32),
        F.NEXT_SENTENCE_LABELS: np.asarray(nsp, np.int32),
    }
    ex[F.INPUT_IDS][:n] = ids
    ex[F.INPUT_MASK][:n] = 1
    ex[F.SEGMENT_IDS][seg_a:n] = 1
    ex[F.MASKED_LM_POSITIONS][: len(positions)] = positions
    ex[F.MASKED_LM_IDS][: len(positions)] = [100 + p for p in positions]
    ex[F.MASKED_LM_WEIGHTS][: len(positions)] = 1
    return ex


def test_pack_examples_layout():
    a = _example([2, 10, 11, 3, 12, 3], 4, [1, 4], 0)
    b = _example([2, 20, 3, 21, 22, 3], 3, [3], 1)
    row = packing.pack_examples([a, b], max_seq_length=16, max_sequences=3, max_predictions=5)
    np.testing.assert_array_equal(row[F.INPUT_IDS][:12], [2, 10, 11, 3, 12, 3, 2, 20, 3, 21, 22, 3])
    np.testing.assert_array_equal(row[F.INPUT_MASK], [1] * 12 + [0] * 4)
    np.testing.assert_array_equal(row[F.SEGMENT_IDS][:12], [0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(row[F.POSITION_IDS][:12], [0, 1, 2, 3, 4, 5] * 2)
    np.testing.assert_array_equal(row[F.ATTENTION_SEGMENT_IDS], [1] * 6 + [2] * 6 + [0] * 4)
    np.testing.assert_array_equal(row[F.MASKED_LM_POSITIONS], [1, 4, 9, 0, 0])
    np.testing.assert_array_equal(row[F.MASKED_LM_IDS], [101, 104, 103, 0, 0])
    np.testing.assert_array_equal(row[F.MASKED_LM_WEIGHTS], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(row[F.NEXT_SENTENCE_POSITIONS], [0, 6, 0])
    np.testing.assert_array_equal(row[F.NEXT_SENTENCE_LABELS], [0, 1, -1])
    with pytest.raises(ValueError, match="do not fit"):
        packing.pack_examples([a, b, a], max_seq_length=16, max_sequences=3, max_predictions=9)
    with pytest.raises(ValueError, match="max_predictions_per_pack=2"):
        packing.pack_examples([a, b], max_seq_length=16, max_sequences=3, max_predictions=2)


def test_pack_batch_rows_are_pack_examples_of_their_examples():
    rng = np.random.default_rng(1)
    pairs = [_pair(rng, int(n), 3, 64) for n in rng.integers(4, 7, 7)]
    rows = [[0, 3], [1], [2, 5, 6], [4]]  # examples per row (in order), interleaved
    index = np.empty(7, np.int64)
    for r, members in enumerate(rows):
        index[members] = r
    stacked = {k: np.stack([ex[k] for ex in pairs]) for k in pairs[0]}
    kwargs = dict(max_seq_length=16, max_sequences=3, max_predictions=6)
    got = packing.pack_batch(stacked, index, len(rows), **kwargs)
    for r, members in enumerate(rows):
        want = packing.pack_examples([pairs[i] for i in members], **kwargs)
        for k, v in want.items():
            assert got[k].dtype == v.dtype
            np.testing.assert_array_equal(got[k][r], v, err_msg=f"{k} row {r}")
    with pytest.raises(ValueError, match="a pack holds 1 to 3 examples, got 0"):
        packing.pack_batch(stacked, index, len(rows) + 1, **kwargs)
    with pytest.raises(ValueError, match="do not fit a row of 8"):
        packing.pack_batch(stacked, index, len(rows), **dict(kwargs, max_seq_length=8))


# --- the model: a packed row == its pairs alone -------------------------------------------------


def _pair(rng, n, seg_a, vocab):
    ids = rng.integers(5, vocab, n)
    ids[0], ids[seg_a - 1], ids[n - 1] = 2, 3, 3
    positions = np.sort(rng.choice(np.arange(1, n - 1), 2, replace=False))
    return _example(ids, seg_a, positions, int(rng.integers(0, 2)))


def test_packed_row_computes_what_each_pair_computes_alone():
    config = tiny_model_config(max_position_embeddings=32)
    model = BertForPreTraining(config)
    rng = np.random.default_rng(0)
    pairs = [_pair(rng, 6, 3, 64), _pair(rng, 5, 2, 64), _pair(rng, 4, 2, 64)]
    row = packing.pack_examples(pairs, max_seq_length=16, max_sequences=3, max_predictions=6)
    packed = {k: jnp.asarray(v)[None] for k, v in row.items()}
    params = nn.meta.unbox(model.init(jax.random.key(0), packed, train=False)["params"])
    out = model.apply({"params": params}, packed, train=False)
    assert out["nsp_logits"].shape == (1, 3, 2)
    mlm_alone, nsp_alone = [], []
    for ex in pairs:
        single = {k: jnp.asarray(v)[None] for k, v in ex.items() if k != F.NEXT_SENTENCE_LABELS}
        o = model.apply({"params": params}, single, train=False)
        mlm_alone.append(o["mlm_logits"][0, :2])
        nsp_alone.append(o["nsp_logits"][0])
    np.testing.assert_allclose(out["mlm_logits"][0], jnp.concatenate(mlm_alone), atol=1e-5)
    np.testing.assert_allclose(out["nsp_logits"][0], jnp.stack(nsp_alone), atol=1e-5)

    # The loss over the packed row is the loss over the pairs (NSP averaged per pair).
    batch = {k: jnp.asarray(v)[None] for k, v in row.items()}
    loss, metrics = losses.pretraining_loss(out["mlm_logits"], out["nsp_logits"], batch)
    labels = jnp.asarray([int(ex[F.NEXT_SENTENCE_LABELS]) for ex in pairs])
    nsp = losses.next_sentence_loss(jnp.stack(nsp_alone), labels)["loss"]
    np.testing.assert_allclose(metrics["nsp_loss"], nsp, rtol=1e-5)
    assert metrics["nsp_weight_sum"] == 3

    # An empty slot (label -1) does not count.
    two = packing.pack_examples(pairs[:2], max_seq_length=16, max_sequences=3, max_predictions=6)
    batch2 = {k: jnp.asarray(v)[None] for k, v in two.items()}
    out2 = model.apply({"params": params}, batch2, train=False)
    _, m2 = losses.pretraining_loss(out2["mlm_logits"], out2["nsp_logits"], batch2)
    assert m2["nsp_weight_sum"] == 2
    nsp2 = losses.next_sentence_loss(jnp.stack(nsp_alone[:2]), labels[:2])["loss"]
    np.testing.assert_allclose(m2["nsp_loss"], nsp2, rtol=1e-5)


# --- the packed input pipeline ------------------------------------------------------------------


def _dataset(tmp_path_factory, tok, name, **kwargs):
    d = tmp_path_factory.mktemp(name)
    files = [write_corpus(d / "corpus.txt", make_documents(80, seed=11, max_sents=5))]
    pdata.create_pretraining_data(
        files,
        tok,
        d / "data",
        max_seq_length=T,
        max_predictions_per_seq=P,
        dupe_factor=2,
        short_seq_prob=0.3,
        num_output_shards=3,
        num_workers=1,
        progress=False,
        **kwargs,
    )
    return str(d / "data")


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory, tok):
    return _dataset(tmp_path_factory, tok, "static")


@pytest.fixture(scope="module")
def dynamic_dir(tmp_path_factory, tok):
    return _dataset(tmp_path_factory, tok, "dynamic", dynamic_masking=True)


def _iterator(data_dir, **kwargs):
    kwargs.setdefault("global_batch_size", 4)
    kwargs.setdefault("seed", 3)
    kwargs.setdefault("process_index", 0)
    kwargs.setdefault("process_count", 1)
    kwargs.setdefault("packing", True)
    return pinput.make_pretrain_iterator(data_dir, **kwargs)


def _unpack(batch):
    """The pairs of packed rows, each as (input_ids, segment_ids, masked (pos, id), nsp)."""
    pairs = []
    for r in range(len(batch[F.INPUT_IDS])):
        seg = batch[F.ATTENTION_SEGMENT_IDS][r]
        positions = batch[F.MASKED_LM_POSITIONS][r][batch[F.MASKED_LM_WEIGHTS][r] > 0]
        labels = batch[F.MASKED_LM_IDS][r][batch[F.MASKED_LM_WEIGHTS][r] > 0]
        for j, nsp in enumerate(batch[F.NEXT_SENTENCE_LABELS][r]):
            if nsp < 0:
                assert not np.any(seg == j + 1)
                continue
            where = np.flatnonzero(seg == j + 1)
            start = where[0]
            assert batch[F.NEXT_SENTENCE_POSITIONS][r][j] == start
            np.testing.assert_array_equal(batch[F.POSITION_IDS][r][where], np.arange(len(where)))
            mine = (positions >= start) & (positions <= where[-1])
            pairs.append(
                (
                    tuple(batch[F.INPUT_IDS][r][where]),
                    tuple(batch[F.SEGMENT_IDS][r][where]),
                    tuple(zip(positions[mine] - start, labels[mine], strict=True)),
                    int(nsp),
                )
            )
    return pairs


def test_one_packed_epoch_holds_every_example_once(static_dir):
    records = decode_records(
        list(read_examples(static_dir)), max_seq_length=T, max_predictions_per_seq=P
    )
    expected = collections.Counter()
    for i in range(len(records[F.INPUT_IDS])):
        n = records[F.INPUT_MASK][i].sum()
        w = records[F.MASKED_LM_WEIGHTS][i] > 0
        expected[
            (
                tuple(records[F.INPUT_IDS][i][:n]),
                tuple(records[F.SEGMENT_IDS][i][:n]),
                tuple(
                    zip(
                        records[F.MASKED_LM_POSITIONS][i][w],
                        records[F.MASKED_LM_IDS][i][w],
                        strict=True,
                    )
                ),
                int(records[F.NEXT_SENTENCE_LABELS][i]),
            )
        ] += 1
    plan = pinput.pack_plan(static_dir, E, seed=3)
    assert len(plan) < 0.6 * len(records[F.INPUT_IDS])  # packing removes rows
    it = _iterator(static_dir, num_epochs=1, drop_remainder=False)
    got = collections.Counter()
    rows = 0
    for batch in it:
        assert batch[F.INPUT_IDS].shape[1] == T
        assert batch[F.NEXT_SENTENCE_LABELS].shape[1] == E
        got.update(_unpack(batch))
        rows += len(batch[F.INPUT_IDS])
    assert rows == len(plan)
    assert got == expected


def test_packed_dynamic_masking_is_reproducible_and_resumes_exactly(dynamic_dir, tmp_path):
    a = _iterator(dynamic_dir)
    first = [next(a) for _ in range(3)]
    state = a.get_state()
    after = [next(a) for _ in range(3)]
    b = _iterator(dynamic_dir)
    again = [next(b) for _ in range(3)]
    for x, y in zip(first, again, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    c = _iterator(dynamic_dir)
    c.set_state(state)
    for x, y in zip(after, [next(c) for _ in range(3)], strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    # Every pair is masked; the row budget holds.
    _, budget = pinput.packed_shapes(load_dataset_info(dynamic_dir), E)
    assert first[0][F.MASKED_LM_POSITIONS].shape[1] == budget
    for batch in first:
        for r, labels in enumerate(batch[F.NEXT_SENTENCE_LABELS]):
            seg = batch[F.ATTENTION_SEGMENT_IDS][r]
            masked_seg = seg[batch[F.MASKED_LM_POSITIONS][r][batch[F.MASKED_LM_WEIGHTS][r] > 0]]
            assert set(masked_seg.tolist()) == {j + 1 for j, y in enumerate(labels) if y >= 0}


def _row_bytes(batch):
    keys = sorted(batch)
    return sorted(
        b"".join(batch[k][i].tobytes() for k in keys) for i in range(len(batch[F.INPUT_IDS]))
    )


def test_packed_global_batches_do_not_depend_on_the_process_count(static_dir):
    one = _iterator(static_dir, global_batch_size=4)
    halves = [
        _iterator(static_dir, global_batch_size=4, process_index=i, process_count=2) for i in (0, 1)
    ]
    for _ in range(3):
        whole = next(one)
        parts = [next(h) for h in halves]
        assert _row_bytes(whole) == sorted(_row_bytes(parts[0]) + _row_bytes(parts[1]))
