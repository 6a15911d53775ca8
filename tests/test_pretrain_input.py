"""Tests for data_pipelines.pretrain_input: batches, sharding, epochs, resume, masking."""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from _data_helpers import make_documents, wide_masked_rows, write_corpus

from data_pipelines import features as F
from data_pipelines import packing
from data_pipelines import pretrain_input as pinput
from data_pipelines import pretraining_data as pdata
from data_pipelines.masking import example_rng, mask_example
from data_pipelines.records import (
    decode_record,
    decode_records,
    encode_records,
    load_dataset_info,
    read_examples,
    split_records,
)

T, P = 32, 5


def _make(tmp_path_factory, tok, name, **kwargs):
    d = tmp_path_factory.mktemp(name)
    files = [write_corpus(d / "corpus.txt", make_documents(80, seed=11))]
    out = d / "data"
    pdata.create_pretraining_data(
        files,
        tok,
        out,
        max_seq_length=T,
        max_predictions_per_seq=P,
        dupe_factor=2,
        num_output_shards=3,
        num_workers=1,
        progress=False,
        **kwargs,
    )
    return str(out)


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory, tok):
    return _make(tmp_path_factory, tok, "static")


@pytest.fixture(scope="module")
def dynamic_dir(tmp_path_factory, tok):
    return _make(tmp_path_factory, tok, "dynamic", dynamic_masking=True)


def _records(data_dir):
    """All examples, decoded, in record-key order."""
    return decode_records(
        list(read_examples(data_dir)), max_seq_length=T, max_predictions_per_seq=P
    )


def _rows(batch):
    """One hashable fingerprint per example of a batch."""
    n = len(batch[F.NEXT_SENTENCE_LABELS])
    return [b"".join(batch[k][i].tobytes() for k in F.PRETRAINING_FEATURES) for i in range(n)]


def _iterator(data_dir, **kwargs):
    kwargs.setdefault("global_batch_size", 8)
    kwargs.setdefault("seed", 3)
    kwargs.setdefault("process_index", 0)
    kwargs.setdefault("process_count", 1)
    return pinput.make_pretrain_iterator(data_dir, **kwargs)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batches_have_the_seven_features(static_dir):
    batch = next(_iterator(static_dir))
    assert set(batch) == set(F.PRETRAINING_FEATURES)
    for k in (F.INPUT_IDS, F.INPUT_MASK, F.SEGMENT_IDS):
        assert batch[k].shape == (8, T) and batch[k].dtype == np.int32
    for k in (F.MASKED_LM_POSITIONS, F.MASKED_LM_IDS):
        assert batch[k].shape == (8, P) and batch[k].dtype == np.int32
    assert batch[F.MASKED_LM_WEIGHTS].shape == (8, P)
    assert batch[F.MASKED_LM_WEIGHTS].dtype == np.float32
    assert batch[F.NEXT_SENTENCE_LABELS].shape == (8,)
    # Every example of the batch is one of the stored examples.
    assert set(_rows(batch)) <= set(_rows(_records(static_dir)))


def test_one_epoch_without_shuffle_reads_records_in_order(static_dir):
    records = _records(static_dir)
    n = len(records[F.INPUT_IDS])
    it = _iterator(static_dir, shuffle=False, num_epochs=1, global_batch_size=n)
    (batch,) = list(it)
    _assert_same_batches([batch], [records])


def test_epochs_are_different_permutations(static_dir):
    records = _rows(_records(static_dir))
    n = len(records)
    it = _iterator(static_dir, num_epochs=2, global_batch_size=1, drop_remainder=False)
    rows = [r for batch in it for r in _rows(batch)]
    assert len(rows) == 2 * n
    first, second = rows[:n], rows[n:]
    assert collections.Counter(first) == collections.Counter(records)
    assert collections.Counter(second) == collections.Counter(records)
    assert first != records and second != first


def test_processes_read_contiguous_blocks_of_the_global_batch(static_dir):
    records = _rows(_records(static_dir))
    n, count, g = len(records), 3, 33
    b, rest = g // count, n % g
    assert b < rest < 2 * b  # the partial last batch: a full block, a part, nothing

    def read(index, **kwargs):
        it = _iterator(
            static_dir,
            process_index=index,
            process_count=count,
            global_batch_size=g,
            num_epochs=1,
            shuffle=False,
            **kwargs,
        )
        return [_rows(batch) for batch in it]

    # Process p reads rows [11p, 11p + 11) of each global batch of 33 consecutive
    # records; the last n % 33 records, less than a global batch, are dropped.
    for p in range(count):
        batches = read(p)
        assert len(batches) == n // g
        for t, rows in enumerate(batches):
            assert rows == records[t * g + b * p : t * g + b * (p + 1)]
    # Without drop_remainder each process also gets its block of the partial batch.
    tails = [read(p, drop_remainder=False)[n // g :] for p in range(count)]
    assert tails[0] == [records[n - rest : n - rest + b]]
    assert tails[1] == [records[n - rest + b : n]]
    assert tails[2] == []
    # With one process everything is read.
    assert collections.Counter(
        r for b in _iterator(static_dir, num_epochs=1, global_batch_size=1) for r in _rows(b)
    ) == collections.Counter(records)


def test_the_global_order_is_a_seeded_permutation_per_epoch(static_dir):
    """Global batch s is stream positions [s*G, (s+1)*G); position x is example
    perm_e[x % N] of epoch e = x // N, perm_e seeded by (seed, e)."""
    records = _rows(_records(static_dir))
    n = len(records)
    order = pinput.GlobalOrder(n, seed=3, shuffle=True)
    stream = [order(x) for x in range(3 * n)]
    assert [e for e, _ in stream] == [x // n for x in range(3 * n)]
    perms = [[i for _, i in stream[e * n : (e + 1) * n]] for e in range(3)]
    for perm in perms:
        assert sorted(perm) == list(range(n))
    assert len({tuple(p) for p in [*perms, list(range(n))]}) == 4  # new order every epoch
    assert [i for _, i in map(pinput.GlobalOrder(n, seed=4, shuffle=True), range(n))] != perms[0]
    assert [order(x) for x in range(n)] == stream[:n]  # a pure function of the position
    unshuffled = pinput.GlobalOrder(n, seed=3, shuffle=False)
    assert [unshuffled(x) for x in range(n, 2 * n)] == [(1, i) for i in range(n)]
    # The iterator's batches are that stream, cut every G positions (across epochs).
    g = 48
    it = _iterator(static_dir, global_batch_size=g, seed=3)
    want = [records[i] for _, i in stream]
    for s in range(3 * n // g):
        assert _rows(next(it)) == want[s * g : (s + 1) * g]


def _global_batches(data_dir, count, steps, *, state=None, **kwargs):
    """The first `steps` global batches (after `state`, one per process) of `count`
    processes, each the concatenation of the processes' batches in process order."""
    its = [
        _iterator(data_dir, process_index=p, process_count=count, **kwargs) for p in range(count)
    ]
    if state is not None:
        for it, s in zip(its, state, strict=True):
            it.set_state(s)
    out = []
    for _ in range(steps):
        parts = [next(it) for it in its]
        out.append({k: np.concatenate([b[k] for b in parts]) for k in parts[0]})
    states = [it.get_state() for it in its]
    for it in its:
        it.close()
    return out, states


@pytest.mark.parametrize("which", ["static", "dynamic"])
def test_global_batches_do_not_depend_on_the_process_count(static_dir, dynamic_dir, which):
    """Same examples in the same rows (and, dynamic, the same masks) for 1, 2 and 4
    processes, across an epoch boundary and across a save/restore of the iterators."""
    data_dir = static_dir if which == "static" else dynamic_dir
    n = len(_rows(_records(data_dir)))
    g = 32
    first, second = n // g - 2, 5  # the second run crosses the epoch boundary
    one, state = _global_batches(data_dir, 1, first, global_batch_size=g)
    one_after, _ = _global_batches(data_dir, 1, second, state=state, global_batch_size=g)
    assert _rows(one_after[2]) != _rows(one[0])
    for count in (2, 4):
        many, states = _global_batches(data_dir, count, first, global_batch_size=g)
        _assert_same_batches(many, one)
        after, _ = _global_batches(data_dir, count, second, state=states, global_batch_size=g)
        _assert_same_batches(after, one_after)
    if which == "dynamic":  # worker processes prepare the same batches, and resume
        workers, states = _global_batches(data_dir, 1, 3, global_batch_size=g, worker_count=2)
        _assert_same_batches(workers, one[:3])
        after, _ = _global_batches(
            data_dir, 1, 3, state=states, global_batch_size=g, worker_count=2
        )
        _assert_same_batches(after, one[3:6])


def test_per_process_batch_and_bad_arguments(static_dir, tmp_path):
    batch = next(_iterator(static_dir, global_batch_size=8, process_index=1, process_count=2))
    assert batch[F.INPUT_IDS].shape == (4, T)
    with pytest.raises(ValueError, match="multiple of process_count=3"):
        _iterator(static_dir, global_batch_size=8, process_index=0, process_count=3)
    with pytest.raises(ValueError, match="process_index 2"):
        _iterator(static_dir, process_index=2, process_count=2)
    # An unfinished directory (no dataset_info.json) is refused.
    partial = tmp_path / "partial"
    shutil.copytree(static_dir, partial)
    os.remove(partial / "dataset_info.json")
    with pytest.raises(FileNotFoundError, match="not a finished pre-training dataset"):
        _iterator(str(partial))
    # TFRecord datasets are for other code bases.
    tfr = tmp_path / "tfr"
    shutil.copytree(static_dir, tfr)
    info = json.loads((tfr / "dataset_info.json").read_text())
    info["format"] = "tfrecord"
    (tfr / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="reads ArrayRecord datasets only"):
        _iterator(str(tfr))


@pytest.mark.parametrize("which", ["static", "dynamic"])
def test_restored_iterator_continues_identically(static_dir, dynamic_dir, which, tmp_path):
    data_dir = static_dir if which == "static" else dynamic_dir
    n = len(_rows(_records(data_dir)))
    it = _iterator(data_dir, global_batch_size=16)
    _take(it, n // 16 - 1)  # the continuation crosses an epoch boundary
    state = it.get_state()
    pinput.save_iterator_state(it, tmp_path / "iter.json")
    expected = _take(it, 5)
    resumed = _iterator(data_dir, global_batch_size=16)
    resumed.set_state(state)
    _assert_same_batches(_take(resumed, 5), expected)
    from_file = _iterator(data_dir, global_batch_size=16)
    pinput.restore_iterator_state(from_file, tmp_path / "iter.json")
    _assert_same_batches(_take(from_file, 5), expected)
    # A fresh iterator starts over: different batches.
    assert _rows(next(_iterator(data_dir, global_batch_size=16))) != _rows(expected[0])


def test_iterator_checkpoints_with_orbax(static_dir, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    it = _iterator(static_dir)
    _take(it, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(1, args=ocp.args.Composite(data=pinput.iterator_save_args(it)))
        mngr.wait_until_finished()
    expected = _take(it, 4)
    resumed = _iterator(static_dir)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(1, args=ocp.args.Composite(data=pinput.iterator_restore_args(resumed)))
    _assert_same_batches(_take(resumed, 4), expected)


def test_dynamic_masking_differs_per_epoch_and_is_reproducible(dynamic_dir):
    records = _records(dynamic_dir)
    assert (records[F.MASKED_LM_WEIGHTS] == 0).all()  # stored unmasked
    n = len(records[F.INPUT_IDS])
    spec = load_dataset_info(dynamic_dir).masking

    def epochs(seed):
        it = _iterator(dynamic_dir, shuffle=False, num_epochs=2, global_batch_size=n, seed=seed)
        return list(it)

    e0, e1 = epochs(5)
    again = epochs(5)
    _assert_same_batches([e0, e1], again)
    # Same examples, different masks in the two epochs and with another seed.
    for batch in (e0, e1):
        np.testing.assert_array_equal(batch[F.SEGMENT_IDS], records[F.SEGMENT_IDS])
        lengths = batch[F.INPUT_MASK].sum(1)
        expected = np.minimum(P, np.maximum(1, np.rint(lengths * 0.15)))
        np.testing.assert_array_equal(batch[F.MASKED_LM_WEIGHTS].sum(1), expected)
    assert (e0[F.MASKED_LM_POSITIONS] != e1[F.MASKED_LM_POSITIONS]).any(axis=1).mean() > 0.5
    other = epochs(6)[0]
    assert (e0[F.MASKED_LM_POSITIONS] != other[F.MASKED_LM_POSITIONS]).any(axis=1).mean() > 0.5
    # Each mask is mask_example(record, rng=example_rng(seed, epoch, index)).
    for epoch, batch in enumerate((e0, e1)):
        for i in (0, 7, n - 1):
            length = int(records[F.INPUT_MASK][i].sum())
            m = mask_example(records[F.INPUT_IDS][i], length, spec, rng=example_rng(5, epoch, i))
            np.testing.assert_array_equal(batch[F.INPUT_IDS][i], m.input_ids)
            np.testing.assert_array_equal(batch[F.MASKED_LM_POSITIONS][i], m.masked_lm_positions)
            np.testing.assert_array_equal(batch[F.MASKED_LM_IDS][i], m.masked_lm_ids)
    # The mask of an example does not depend on how the data is sharded over processes.
    second_half = next(
        _iterator(
            dynamic_dir,
            shuffle=False,
            num_epochs=1,
            global_batch_size=2 * (n // 2),
            process_index=1,
            process_count=2,
            seed=5,
        )
    )
    # Process 1 of 2 reads the second half of the global batch.
    np.testing.assert_array_equal(second_half[F.INPUT_IDS], e0[F.INPUT_IDS][n // 2 : 2 * (n // 2)])


def test_dynamic_whole_word_masking_in_the_pipeline(tmp_path_factory, tok):
    data_dir = _make(
        tmp_path_factory, tok, "dyn_wwm", dynamic_masking=True, do_whole_word_mask=True
    )
    info = load_dataset_info(data_dir)
    cont = tok.continuation_mask()
    assert info.masking.to_json()["continuation_ids"] == np.flatnonzero(cont).tolist()
    batch = next(_iterator(data_dir, global_batch_size=64))
    specials = {tok.cls_id, tok.sep_id, tok.pad_id}
    whole = 0
    for i in range(64):
        k = int(batch[F.MASKED_LM_WEIGHTS][i].sum())
        positions = batch[F.MASKED_LM_POSITIONS][i, :k]
        masked = set(positions.tolist())
        ids = batch[F.INPUT_IDS][i].copy()
        ids[positions] = batch[F.MASKED_LM_IDS][i, :k]
        word: list[int] = []
        for pos, t in enumerate([*ids.tolist(), tok.pad_id]):
            if t in specials or not cont[t] or not word:
                if word:
                    hit = sum(p in masked for p in word)
                    assert hit in (0, len(word))
                    whole += hit == len(word) > 1
                word = [] if t in specials else [pos]
            else:
                word.append(pos)
    assert whole > 5


def test_decode_batch_is_decode_record_stacked(static_dir, dynamic_dir):
    records = [*read_examples(static_dir)][:40] + [*read_examples(dynamic_dir)][:40]
    # Wide (int32) ids, static masking, one record without predictions.
    ids, masked = wide_masked_rows(T)
    blob, sizes = encode_records(
        ids, np.full(3, 6), np.full(3, 3), np.array([1, 0, 1]), masked, wide=True
    )
    records += split_records(blob, sizes)
    pad = 7
    got = pinput.decode_batch(records, max_seq_length=T, max_predictions_per_seq=P, pad_id=pad)
    want = [
        decode_record(r, max_seq_length=T, max_predictions_per_seq=P, pad_id=pad) for r in records
    ]
    for k in F.PRETRAINING_FEATURES:
        expected = np.stack([w[k] for w in want])
        assert got[k].dtype == expected.dtype, k
        np.testing.assert_array_equal(got[k], expected, err_msg=k)
    assert got[F.INPUT_IDS][-3, 1] == 70_000 and got[F.MASKED_LM_IDS][-3, 1] == 99_999
    empty = pinput.decode_batch([], max_seq_length=T, max_predictions_per_seq=P)
    assert empty[F.INPUT_IDS].shape == (0, T)
    # Damaged records are refused, as decode_record refuses them.
    with pytest.raises(ValueError, match="not a bertjax-pretrain-v1 record"):
        pinput.decode_batch([records[0], b"XY" + records[1][2:]], max_seq_length=T,
                            max_predictions_per_seq=P)  # fmt: skip
    with pytest.raises(ValueError, match="exceeds max_seq_length"):
        pinput.decode_batch(records[:2], max_seq_length=4, max_predictions_per_seq=P)
    with pytest.raises(ValueError, match="header describes another size"):
        pinput.decode_batch([records[0][:-2]], max_seq_length=T, max_predictions_per_seq=P)


@pytest.fixture(scope="module")
def short_pairs_dir(tmp_path_factory, tok):
    """Dynamic whole-word masking, short documents and pairs: most packs hold 2-3 pairs."""
    d = tmp_path_factory.mktemp("short_pairs")
    files = [write_corpus(d / "corpus.txt", make_documents(80, seed=11, max_sents=5))]
    pdata.create_pretraining_data(
        files,
        tok,
        d / "data",
        max_seq_length=64,
        max_predictions_per_seq=10,
        dupe_factor=1,
        short_seq_prob=1.0,
        dynamic_masking=True,
        do_whole_word_mask=True,
        num_output_shards=2,
        num_workers=1,
        progress=False,
    )
    return str(d / "data")


def test_dynamic_packed_rows_are_their_pairs_masked_in_turn(short_pairs_dir):
    """Pack r of epoch e: its pairs masked one after the other with the one generator
    example_rng(seed, e, r), then laid out by pack_examples."""
    info = load_dataset_info(short_pairs_dir)
    t, p, spec = info.max_seq_length, info.max_predictions_per_seq, info.masking
    plan = pinput.pack_plan(short_pairs_dir, 3, seed=5)
    assert ((plan >= 0).sum(1) > 1).mean() > 0.5
    _, budget = pinput.packed_shapes(info, 3)
    records = list(read_examples(short_pairs_dir))
    n, g = len(plan), len(plan) // 4
    it = _iterator(short_pairs_dir, packing=True, shuffle=False, seed=5, global_batch_size=g)
    for r in range(4 * g):
        if r % g == 0:
            batch = next(it)
        rng = example_rng(5, 0, r)
        pairs = []
        for i in plan[r][plan[r] >= 0]:
            ex = decode_record(records[i], max_seq_length=t, max_predictions_per_seq=p)
            m = mask_example(ex[F.INPUT_IDS], int(ex[F.INPUT_MASK].sum()), spec, rng=rng)
            pairs.append({**ex, **dict(zip(_MASKED, m, strict=True))})
        want = packing.pack_examples(
            pairs, max_seq_length=t, max_sequences=3, max_predictions=budget
        )
        for k, v in want.items():
            np.testing.assert_array_equal(batch[k][r % g], v, err_msg=f"{k} row {r} of {n}")


_MASKED = (F.INPUT_IDS, F.MASKED_LM_POSITIONS, F.MASKED_LM_IDS, F.MASKED_LM_WEIGHTS)


def test_device_prefetch_runs_ahead_and_checkpoints_the_batches_taken(static_dir, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    expected = _take(_iterator(static_dir), 9)
    puts = []

    def put(batch):
        puts.append(batch)
        return {k: v.copy() for k, v in batch.items()}

    it = pinput.prefetch_to_device(_iterator(static_dir), put, size=2)
    _assert_same_batches(_take(it, 3), expected[:3])
    assert len(puts) == 5  # two batches ahead of the three taken
    state = it.get_state()
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(3, args=ocp.args.Composite(data=pinput.iterator_save_args(it)))
        mngr.wait_until_finished()
    _assert_same_batches(_take(it, 3), expected[3:6])
    # The saved position is after the batches taken, not after those fetched ahead.
    resumed = _iterator(static_dir)
    resumed.set_state(state)
    _assert_same_batches(_take(resumed, 3), expected[3:6])
    from_orbax = _iterator(static_dir)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(3, args=ocp.args.Composite(data=pinput.iterator_restore_args(from_orbax)))
    _assert_same_batches(_take(from_orbax, 3), expected[3:6])
    it.set_state(state)  # back: the batches fetched ahead are dropped
    _assert_same_batches(_take(it, 6), expected[3:9])
    # A finite iterator ends after its last batch.
    n = len(_rows(_records(static_dir)))
    finite = pinput.prefetch_to_device(
        _iterator(static_dir, num_epochs=1, global_batch_size=n // 3), lambda b: b
    )
    assert len(list(finite)) == 3


def test_the_reader_imports_the_record_format_and_masking_only():
    """Training reads shards with `records` and `masking`: neither the example-creation
    engine nor its worker pool and shard writers are imported."""
    code = (
        "import sys, data_pipelines.pretrain_input, data_pipelines.packing; "
        "print(sorted(m for m in sys.modules if m.startswith('data_pipelines.')))"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, check=True, capture_output=True, text=True,
        timeout=120,
    ).stdout  # fmt: skip
    loaded = set(json.loads(out.strip().splitlines()[-1].replace("'", '"')))
    assert {"data_pipelines.records", "data_pipelines.masking"} <= loaded
    assert not loaded & {"data_pipelines.pretraining_data", "data_pipelines.example_writer"}
