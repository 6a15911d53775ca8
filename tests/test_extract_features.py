"""`bertjax features`: hidden states of a checkpoint as JSON lines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertjax import checkpoint as ckpt
from bertjax.extract_features import extract_features, read_examples, split_pair
from bertjax.model import BertModel
from data_pipelines import features as F
from data_pipelines.corpus import CorpusError, CorpusWarning
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
        F.INPUT_IDS: enc.input_ids[None],
        F.INPUT_MASK: enc.input_mask[None],
        F.SEGMENT_IDS: enc.segment_ids[None],
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
    with pytest.raises(CorpusError, match=r"in.txt:2: invalid UTF-8"):
        extract_features(bertjax_dir, str(inp), str(out), layers=[-1], max_seq_length=16)
    assert not out.exists() and not (tmp_path / "o.jsonl.tmp").exists()
    # "replace" reads the bytes as U+FFFD, which BERT's normalizer drops.
    with pytest.warns(CorpusWarning, match=r"in.txt:2: invalid UTF-8 bytes replaced"):
        n = extract_features(
            bertjax_dir, str(inp), str(out), layers=[-1], max_seq_length=16,
            input_errors="replace",
        )  # fmt: skip
    records = [json.loads(x) for x in out.read_text().splitlines()]
    broken = ["b", "##r", "##o", "##k", "##e", "##n"]
    assert n == 2 and records[1]["tokens"] == ["[CLS]", *broken, "[SEP]"]


# What google-research/bert's extract_features.py makes of each line: it strips the line and
# matches ^(.*) \|\|\| (.*)$, whose greedy first group puts the boundary at the LAST " ||| ".
SPLITS = [
    ("first part ||| second part ||| third part", "first part ||| second part", "third part"),
    ("a ||| b", "a", "b"),
    ("  a ||| b  \t", "a", "b"),
    ("a |||  b", "a", " b"),
    ("a ||| ||| b", "a |||", "b"),
    ("a ||| |||", "a", "|||"),
    ("a |||| ||| b", "a ||||", "b"),
    (" ||| x", "||| x", None),  # stripped: no space before the separator is left
    ("x ||| ", "x |||", None),  # stripped: no space after it
    ("|||", "|||", None),
    ("x |||y", "x |||y", None),
    ("x||| y", "x||| y", None),
    ("a |||| b", "a |||| b", None),
    ("a\t|||\tb", "a\t|||\tb", None),
    ("", "", None),
    ("plain sentence", "plain sentence", None),
]


def test_pairs_split_as_google_research_bert(tmp_path):
    for line, a, b in SPLITS:
        assert split_pair(line.strip()) == (a, b), line
    # read_examples: the lines of a (CRLF) file stripped and split the same way, blank included.
    path = tmp_path / "in.txt"
    path.write_bytes("".join(line + "\r\n" for line, _, _ in SPLITS).encode())
    assert list(read_examples(str(path))) == [(i, a, b) for i, (_, a, b) in enumerate(SPLITS)]


def test_three_part_line_has_its_boundary_at_the_last_separator(bertjax_dir, tmp_path):
    inp = tmp_path / "in.txt"
    inp.write_text("the cat ||| the dog ||| hello world\n")
    out = tmp_path / "o.jsonl"
    extract_features(bertjax_dir, str(inp), str(out), layers=[-1], max_seq_length=32)
    (record,) = [json.loads(x) for x in out.read_text().splitlines()]
    pipes = ["[UNK]"] * 3  # "|" is not in the tiny vocab
    assert record["tokens"] == [
        "[CLS]", "the", "cat", *pipes, "the", "dog", "[SEP]", "hello", "world", "[SEP]"
    ]  # fmt: skip


@pytest.fixture(scope="module")
def four_layer_dir(tmp_path_factory):
    """A bertjax model directory of a tiny random 4-layer BERT (the default layers -1..-4)."""
    from conftest import make_hf_model

    from bertjax import convert

    root = tmp_path_factory.mktemp("four_layers")
    make_hf_model(str(root / "hf"), num_hidden_layers=4, heads=False)
    return convert.convert_to_bertjax("hf", str(root / "hf"), str(root / "ckpt"))


def test_google_format_is_extract_features_layout(four_layer_dir, tmp_path, capsys):
    """`bertjax features --format google`: google-research/bert's extract_features.py output,
    {"linex_index", "features": [{"token", "layers": [{"index", "values"}]}]}, its default
    layers -1,-2,-3,-4 in that order, values the model's hidden states rounded to 6 decimals."""
    from bertjax.main import main

    inp = tmp_path / "in.txt"
    inp.write_text("the cat sat on the mat .\nhello world ||| the dog sat\n")
    out = tmp_path / "google.jsonl"
    argv = ["features", "--checkpoint", four_layer_dir, "--input", str(inp), "--output", str(out)]
    with pytest.raises(SystemExit) as e:
        main(["bertjax", *argv, "--format", "google", "--max_seq_length", "16"])
    assert e.value.code == 0, capsys.readouterr().err
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [list(r) for r in records] == [["linex_index", "features"]] * 2
    assert [r["linex_index"] for r in records] == [0, 1]
    config, params, _ = ckpt.load_model_dir(four_layer_dir)
    tok = load_tokenizer(four_layer_dir)
    model = BertModel(config)
    for record, (a, b) in zip(records, [("the cat sat on the mat .", None),
                                        ("hello world", "the dog sat")], strict=True):  # fmt: skip
        enc = encode_pair(tok, a, b, 16)
        feats = record["features"]
        assert [f["token"] for f in feats] == list(enc.tokens)
        assert all(list(f) == ["token", "layers"] for f in feats)
        assert all([list(x) for x in f["layers"]] == [["index", "values"]] * 4 for f in feats)
        assert all([x["index"] for x in f["layers"]] == [-1, -2, -3, -4] for f in feats)
        batch = {k: getattr(enc, k)[None] for k in (F.INPUT_IDS, F.INPUT_MASK, F.SEGMENT_IDS)}
        hidden = model.apply(
            {"params": params["bert"]}, batch, train=False, output_hidden_states=True
        )["hidden_states"]  # the embedding output, then the 4 layers
        n = len(feats)
        got = np.array([[x["values"] for x in f["layers"]] for f in feats])  # [n, 4, D]
        assert got.shape == (n, 4, config.hidden_size)
        for li, layer in enumerate([-1, -2, -3, -4]):
            np.testing.assert_allclose(got[:, li], np.asarray(hidden[layer])[0, :n], atol=2e-6)
        # 6 decimals, written short (0.123457), as round(float(x), 6) makes them.
        assert all(round(v, 6) == v for v in got.ravel().tolist())
        assert np.abs(got).max() > 0.1 and len(np.unique(got)) > 100

    # Layers in the order asked; the same numbers as the bertjax layout of the same run.
    bj, google = tmp_path / "bj.jsonl", tmp_path / "g2.jsonl"
    for path, fmt in ((bj, "bertjax"), (google, "google")):
        extract_features(four_layer_dir, str(inp), str(path), layers=[0, -1, 2],
                         max_seq_length=16, output_format=fmt)  # fmt: skip
    lines = zip(bj.read_text().splitlines(), google.read_text().splitlines(), strict=True)
    for rec_bj, rec_g in (map(json.loads, pair) for pair in lines):
        assert list(rec_bj["layers"]) == ["0", "-1", "2"]
        for f in rec_g["features"]:
            assert [x["index"] for x in f["layers"]] == [0, -1, 2]
        for li, layer in enumerate(["0", "-1", "2"]):
            assert rec_bj["layers"][layer] == [f["layers"][li]["values"] for f in rec_g["features"]]
    with pytest.raises(ValueError, match="--format=tf: use one of bertjax, google"):
        extract_features(four_layer_dir, str(inp), str(tmp_path / "x"), output_format="tf")
