"""Tests for data_pipelines.example_writer: the worker pool and the shard writers."""

from __future__ import annotations

import operator
import os

import pytest

from data_pipelines import example_writer, records


@pytest.mark.parametrize("num_workers", [1, 2])
def test_pool_results_come_in_submission_order_with_the_context(num_workers):
    # context = int("7"), built once per process; each task is operator.mul(context, x).
    pool = example_writer.TaskPool(num_workers, int, ("7",))
    try:
        futures = [pool.submit(operator.mul, x) for x in range(20)]
        assert [f.result() for f in futures] == [7 * x for x in range(20)]
        assert pool.submit(operator.add, 1).result() == 8
    finally:
        pool.close()


def test_pool_context_larger_than_a_pipe_reaches_every_worker_and_its_file_goes():
    # A 1 MB context (a pipe holds 64 KiB) goes to the workers through a temporary file.
    pool = example_writer.TaskPool(2, len, ("x" * 1_000_000,))
    context_file = pool._context_file
    try:
        assert os.path.exists(context_file)
        futures = [pool.submit(operator.add, x) for x in range(8)]
        assert [f.result() for f in futures] == [1_000_000 + x for x in range(8)]
    finally:
        pool.close()
    assert not os.path.exists(context_file)


def test_shards_are_dealt_round_robin(tmp_path):
    from array_record.python.array_record_module import ArrayRecordReader

    writer = example_writer.ShardWriter(
        tmp_path, 3, "arrayrecord", max_seq_length=8, max_predictions_per_seq=2, pad_id=0
    )
    writer.write([b"r0", b"r1", b"r2", b"r3"])
    writer.write([b"r4", b"r5", b"r6"])
    writer.close()
    assert writer.names == [records.shard_file_name(i, 3, "arrayrecord") for i in range(3)]
    assert writer.counts == [3, 2, 2] and writer.num_examples == 7
    got = []
    for name in writer.names:
        reader = ArrayRecordReader(str(tmp_path / name))
        got.append(reader.read_all())
        reader.close()
    assert got == [[b"r0", b"r3", b"r6"], [b"r1", b"r4"], [b"r2", b"r5"]]
