"""`bertjax features`: hidden states of a checkpoint as JSON lines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertjax import checkpoint as ckpt
from bertjax.features import extract_features
from bertjax.model import BertModel
from data_pipelines.tokenizers import encode_pair, load_tokenizer


def test_features_match_the_model(bertjax_dir, tmp_path):
    inp = tmp_path / "in.txt"
    lines = ["the cat sat on the mat .", "hello world ||| the dog sat", "bert jax flax"]
    inp.write_text("\n".join(lines) + "\n")
    out = tmp_path / "features.jsonl"
    n = extract_features(
        bertjax_dir, str(inp), str(out), layers=[-1, 0], max_seq_length=16, batch_size=2
    )
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert n == 3 and [r["line"] for r in records] == [0, 1, 2]
    tok = load_tokenizer(bertjax_dir)
    assert records[0]["tokens"] == ["[CLS]", "the", "cat", "sat", "on", "the", "mat", ".", "[SEP]"]
    pair = records[1]["tokens"]
    assert pair[0] == "[CLS]" and pair.count("[SEP]") == 2 and pair[-1] == "[SEP]"

    config, params, _ = ckpt.load_model_dir(bertjax_dir)
    enc = encode_pair(tok, "hello world", "the dog sat", 16)
    batch = {
        "input_ids": enc.input_ids[None],
        "input_mask": enc.input_mask[None],
        "segment_ids": enc.segment_ids[None],
    }
    hidden = BertModel(config).apply(
        {"params": params["bert"]}, batch, train=False, output_hidden_states=True
    )["hidden_states"]
    n_tok = len(pair)
    last = np.array(records[1]["layers"]["-1"])
    first = np.array(records[1]["layers"]["0"])
    assert last.shape == (n_tok, config.hidden_size)
    np.testing.assert_allclose(last, np.asarray(hidden[-1])[0, :n_tok], atol=2e-6)
    np.testing.assert_allclose(first, np.asarray(hidden[1])[0, :n_tok], atol=2e-6)


def test_bad_layers_and_existing_output(bertjax_dir, tmp_path):
    inp = tmp_path / "in.txt"
    inp.write_text("hello\n")
    with pytest.raises(ValueError, match="layer -3 is out of range for a 2-layer model"):
        extract_features(
            bertjax_dir, str(inp), str(tmp_path / "o.jsonl"), layers=[-3], max_seq_length=16
        )
    out = tmp_path / "exists.jsonl"
    out.write_text("keep")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        extract_features(bertjax_dir, str(inp), str(out), max_seq_length=16)
    assert out.read_text() == "keep"


def test_non_utf8_line_is_named(bertjax_dir, tmp_path):
    inp = tmp_path / "in.txt"
    inp.write_bytes(b"fine\n\xff\xfe broken\n")
    out = tmp_path / "o.jsonl"
    with pytest.raises(ValueError, match=r"in.txt:2: not valid UTF-8"):
        extract_features(bertjax_dir, str(inp), str(out), layers=[-1], max_seq_length=16)
    assert not out.exists() and not (tmp_path / "o.jsonl.tmp").exists()
