"""GLUE task table, TSV and TFDS readers, and featurization (data_pipelines/glue.py)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import write_vocab

from data_pipelines import features, glue
from data_pipelines.glue import Example, GlueDataError, GlueDataWarning
from data_pipelines.tokenizers import load_tokenizer

T = "\t"

# MNLI's parse columns, abbreviated (their content is never read).
_PARSES = ["( ( a b ) c )", "( d e )", "(ROOT (S a b c))", "(ROOT (S d e))"]
_MNLI_TRAIN_HEADER = [
    "index", "promptID", "pairID", "genre", "sentence1_binary_parse",
    "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1", "sentence2",
    "label1", "gold_label",
]  # fmt: skip
_MNLI_DEV_HEADER = _MNLI_TRAIN_HEADER[:-1] + ["label2", "label3", "label4", "label5", "gold_label"]
_MNLI_TEST_HEADER = _MNLI_TRAIN_HEADER[:10]
_STSB_HEADER = [
    "index", "genre", "filename", "year", "old_index", "source1", "source2",
    "sentence1", "sentence2", "score",
]  # fmt: skip
_QQP_MALFORMED = '"\tWas Muhammad a real historical figure?\t0'  # a broken row of QQP's train.tsv


def _tsv(*rows: list[str] | str) -> str:
    return "".join((r if isinstance(r, str) else T.join(r)) + "\n" for r in rows)


def _mnli_row(i: int, s1: str, s2: str, labels: list[str]) -> list[str]:
    return [str(i), f"{i}01", f"{i}01n", "fiction", *_PARSES, s1, s2, *labels]


# Small copies of every file in the GLUE download layout, in the real formats.
GLUE_FILES: dict[str, str | bytes] = {
    # CoLA train/dev: no header; source, label, original mark, sentence.
    "CoLA/train.tsv": _tsv(
        [
            "gj04",
            "1",
            "",
            "Our friends won't buy this analysis, let alone the next one we propose.",
        ],
        ["gj04", "0", "*", "One more pseudo generalization and I'm giving up."],
    ),
    "CoLA/dev.tsv": _tsv(["gj04", "1", "", "The sailors rode the breeze clear of the rocks."]),
    "CoLA/test.tsv": _tsv(
        ["index", "sentence"], ["0", "Bill whistled past the house."], ["1", "The car honked."]
    ),
    # SST-2: a sentence opening with an unbalanced quote; sentences end with a space.
    "SST-2/train.tsv": _tsv(
        ["sentence", "label"],
        ["hide new secretions from the parental units ", "0"],
        ['" a charming and often affecting journey . ', "1"],
        ["the greatest musicians ", "1"],
    ),
    "SST-2/dev.tsv": _tsv(["sentence", "label"], ["it 's a charming journey . ", "1"]),
    "SST-2/test.tsv": _tsv(["index", "sentence"], ["0", "uneasy mishmash of styles ."]),
    # MRPC: train.tsv starts with a UTF-8 byte-order mark (as in some copies).
    "MRPC/train.tsv": b"\xef\xbb\xbf"
    + _tsv(
        ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        ["1", "702876", "702977", 'He called " the witness " , a liar .', 'He said " liar " .'],
        ["0", "2108705", "2108831", "Yucaipa owned Dominick 's .", "Yucaipa bought it ."],
    ).encode(),
    "MRPC/dev.tsv": _tsv(
        ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        ["1", "1355540", "1355592", "He is fine .", "He is well ."],
    ),
    "MRPC/test.tsv": _tsv(
        ["index", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        ["0", "1089874", "1089925", "PCCW 's chief will report .", "The chief will report ."],
        ["1", "3019446", "3019327", "Two .", "Deux ."],
    ),
    "STS-B/train.tsv": _tsv(
        _STSB_HEADER,
        [
            "0",
            "main-captions",
            "MSRvid",
            "2012test",
            "0001",
            "none",
            "none",
            "A plane is taking off.",
            "An air plane is taking off.",
            "5.000",
        ],
        [
            "1",
            "main-captions",
            "MSRvid",
            "2012test",
            "0004",
            "none",
            "none",
            "A man is playing a large flute.",
            "A man is playing a flute.",
            "3.800",
        ],
    ),  # fmt: skip
    "STS-B/dev.tsv": _tsv(
        _STSB_HEADER,
        [
            "0",
            "main-captions",
            "MSRvid",
            "2012test",
            "0000",
            "none",
            "none",
            "A man with a hard hat is dancing.",
            "A man wearing a hard hat is dancing.",
            "0.250",
        ],
    ),  # fmt: skip
    "STS-B/test.tsv": _tsv(
        _STSB_HEADER[:-1],
        [
            "0",
            "main-captions",
            "MSRvid",
            "2012test",
            "0024",
            "none",
            "none",
            "A girl is styling her hair.",
            "A girl is brushing her hair.",
        ],
    ),  # fmt: skip
    # QQP: train holds a malformed (3-field) row, which is skipped with a warning.
    "QQP/train.tsv": _tsv(
        ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
        ["133273", "213221", "213222", "How is life?", "Which level is enough?", "0"],
        _QQP_MALFORMED,
        ["402555", "536040", "536041", "How do I stay calm?", "How do you stay calm?", "1"],
    ),
    "QQP/dev.tsv": _tsv(
        ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
        ["201359", "303345", "303346", "Why are African-Americans so beautiful?", "Why?", "0"],
    ),
    "QQP/test.tsv": _tsv(
        ["id", "question1", "question2"],
        ["0", "Why do rockets look white?", "Why are rockets white?"],
        ["1", "What is jax?", "What is flax?"],
    ),
    # MNLI: gold_label is the last column (label1 may differ); train and dev differ in width.
    "MNLI/train.tsv": _tsv(
        _MNLI_TRAIN_HEADER,
        _mnli_row(
            0, "Conceptually cream skimming works.", "Product matters.", ["entailment", "neutral"]
        ),
        _mnli_row(
            1, "you know during the season", "You lose the things.", ["neutral", "entailment"]
        ),
    ),
    "MNLI/dev_matched.tsv": _tsv(
        _MNLI_DEV_HEADER,
        _mnli_row(
            0,
            "The new rights are nice enough",
            "Everyone loves them",
            ["contradiction"] * 5 + ["neutral"],
        ),
        _mnli_row(1, 'He said "yes', "He said no.", ["contradiction"] * 6),
    ),
    "MNLI/dev_mismatched.tsv": _tsv(
        _MNLI_DEV_HEADER,
        _mnli_row(0, "Your contribution helped.", "Your contribution helped.", ["entailment"] * 6),
    ),
    "MNLI/test_matched.tsv": _tsv(
        _MNLI_TEST_HEADER, _mnli_row(0, "Hierbas is a name.", "Hierbas is a fruit.", [])
    ),
    "MNLI/test_mismatched.tsv": _tsv(
        _MNLI_TEST_HEADER, _mnli_row(0, "What a day.", "It was a day.", [])
    ),
    "QNLI/train.tsv": _tsv(
        ["index", "question", "sentence", "label"],
        ["0", "When did the series begin?", "It began in 2001.", "entailment"],
        ["1", "What is a fox?", "Dogs bark.", "not_entailment"],
    ),
    "QNLI/dev.tsv": _tsv(
        ["index", "question", "sentence", "label"],
        ["0", "What came into force?", "The law.", "entailment"],
    ),
    "QNLI/test.tsv": _tsv(
        ["index", "question", "sentence"], ["0", "What is Hapreet?", "A place in Punjab."]
    ),
    # RTE dev uses CRLF line ends.
    "RTE/train.tsv": _tsv(
        ["index", "sentence1", "sentence2", "label"],
        ["0", "No weapons were found.", "Weapons were found.", "not_entailment"],
    ),
    "RTE/dev.tsv": _tsv(
        ["index", "sentence1", "sentence2", "label"],
        ["0", "Dana Reeve died.", "Christopher Reeve had an accident.", "not_entailment"],
        ["1", "Yet, we now are discovering.", "We are discovering.", "entailment"],
    ).replace("\n", "\r\n"),
    "RTE/test.tsv": _tsv(
        ["index", "sentence1", "sentence2"], ["0", "Mangla was split.", "Mangla was a place."]
    ),
    "WNLI/train.tsv": _tsv(
        ["index", "sentence1", "sentence2", "label"],
        ["0", "I stuck a pin through a carrot.", "The carrot had a hole.", "1"],
        ["1", "John couldn't see the stage.", "John is so short.", "0"],
    ),
    "WNLI/dev.tsv": _tsv(
        ["index", "sentence1", "sentence2", "label"],
        ["0", "The drain is clogged.", "The hair is clogged.", "0"],
    ),
    "WNLI/test.tsv": _tsv(
        ["index", "sentence1", "sentence2"], ["0", "Maude and Dora saw trains.", "Maude saw."]
    ),
    "diagnostic/diagnostic.tsv": _tsv(
        ["index", "sentence1", "sentence2"],
        ["0", "The cat sat on the mat.", "The cat did not sit on the mat."],
        ["1", "The cat sat on the mat.", "The cat sat on the mat."],
    ),
}


def _write(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


@pytest.fixture
def glue_dir(tmp_path: Path) -> Path:
    root = tmp_path / "glue_data"
    _write(root, GLUE_FILES)
    return root


def _ex(index: int, a: str, b: str | None = None, label: int | float | None = None) -> Example:
    return Example(index=index, text_a=a, text_b=b, label=label)


# Hand-written expectations: every split of every task.
EXPECTED: dict[tuple[str, str], list[Example]] = {
    ("cola", "train"): [
        _ex(0, "Our friends won't buy this analysis, let alone the next one we propose.", None, 1),
        _ex(1, "One more pseudo generalization and I'm giving up.", None, 0),
    ],
    ("cola", "validation"): [_ex(0, "The sailors rode the breeze clear of the rocks.", None, 1)],
    ("cola", "test"): [_ex(0, "Bill whistled past the house."), _ex(1, "The car honked.")],
    ("sst2", "train"): [
        _ex(0, "hide new secretions from the parental units ", None, 0),
        _ex(1, '" a charming and often affecting journey . ', None, 1),
        _ex(2, "the greatest musicians ", None, 1),
    ],
    ("sst2", "validation"): [_ex(0, "it 's a charming journey . ", None, 1)],
    ("sst2", "test"): [_ex(0, "uneasy mishmash of styles .")],
    ("mrpc", "train"): [
        _ex(0, 'He called " the witness " , a liar .', 'He said " liar " .', 1),
        _ex(1, "Yucaipa owned Dominick 's .", "Yucaipa bought it .", 0),
    ],
    ("mrpc", "validation"): [_ex(0, "He is fine .", "He is well .", 1)],
    ("mrpc", "test"): [
        _ex(0, "PCCW 's chief will report .", "The chief will report ."),
        _ex(1, "Two .", "Deux ."),
    ],
    ("stsb", "train"): [
        _ex(0, "A plane is taking off.", "An air plane is taking off.", 5.0),
        _ex(1, "A man is playing a large flute.", "A man is playing a flute.", 3.8),
    ],
    ("stsb", "validation"): [
        _ex(0, "A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 0.25)
    ],
    ("stsb", "test"): [_ex(0, "A girl is styling her hair.", "A girl is brushing her hair.")],
    ("qqp", "train"): [
        _ex(0, "How is life?", "Which level is enough?", 0),
        _ex(2, "How do I stay calm?", "How do you stay calm?", 1),  # row 1 is malformed
    ],
    ("qqp", "validation"): [_ex(0, "Why are African-Americans so beautiful?", "Why?", 0)],
    ("qqp", "test"): [
        _ex(0, "Why do rockets look white?", "Why are rockets white?"),
        _ex(1, "What is jax?", "What is flax?"),
    ],
    ("mnli", "train"): [
        _ex(0, "Conceptually cream skimming works.", "Product matters.", 1),
        _ex(1, "you know during the season", "You lose the things.", 0),
    ],
    ("mnli", "validation_matched"): [
        _ex(0, "The new rights are nice enough", "Everyone loves them", 1),
        _ex(1, 'He said "yes', "He said no.", 2),
    ],
    ("mnli", "validation_mismatched"): [
        _ex(0, "Your contribution helped.", "Your contribution helped.", 0)
    ],
    ("mnli", "test_matched"): [_ex(0, "Hierbas is a name.", "Hierbas is a fruit.")],
    ("mnli", "test_mismatched"): [_ex(0, "What a day.", "It was a day.")],
    ("qnli", "train"): [
        _ex(0, "When did the series begin?", "It began in 2001.", 0),
        _ex(1, "What is a fox?", "Dogs bark.", 1),
    ],
    ("qnli", "validation"): [_ex(0, "What came into force?", "The law.", 0)],
    ("qnli", "test"): [_ex(0, "What is Hapreet?", "A place in Punjab.")],
    ("rte", "train"): [_ex(0, "No weapons were found.", "Weapons were found.", 1)],
    ("rte", "validation"): [
        _ex(0, "Dana Reeve died.", "Christopher Reeve had an accident.", 1),
        _ex(1, "Yet, we now are discovering.", "We are discovering.", 0),
    ],
    ("rte", "test"): [_ex(0, "Mangla was split.", "Mangla was a place.")],
    ("wnli", "train"): [
        _ex(0, "I stuck a pin through a carrot.", "The carrot had a hole.", 1),
        _ex(1, "John couldn't see the stage.", "John is so short.", 0),
    ],
    ("wnli", "validation"): [_ex(0, "The drain is clogged.", "The hair is clogged.", 0)],
    ("wnli", "test"): [_ex(0, "Maude and Dora saw trains.", "Maude saw.")],
    ("ax", "test"): [
        _ex(0, "The cat sat on the mat.", "The cat did not sit on the mat."),
        _ex(1, "The cat sat on the mat.", "The cat sat on the mat."),
    ],
}


# ----------------------------------------------------------------------------------------------
# The task table.


def test_task_table():
    assert list(glue.TASKS) == [
        "cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli", "ax",
    ]  # fmt: skip
    dirs = {t: s.directory for t, s in glue.TASKS.items()}
    assert dirs == {
        "cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP",
        "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI", "ax": "diagnostic",
    }  # fmt: skip
    subs = [f for s in glue.TASKS.values() for f in s.submission_files]
    assert subs == [
        "CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "MNLI-m.tsv",
        "MNLI-mm.tsv", "QNLI.tsv", "RTE.tsv", "WNLI.tsv", "AX.tsv",
    ]  # fmt: skip
    metrics = {t: s.metrics for t, s in glue.TASKS.items()}
    assert metrics["cola"] == ("matthews_corrcoef",)
    assert metrics["mrpc"] == metrics["qqp"] == ("f1", "accuracy")
    assert metrics["stsb"] == ("pearson", "spearman")
    assert all(metrics[t] == ("accuracy",) for t in ("sst2", "mnli", "qnli", "rte", "wnli"))
    for name, spec in glue.TASKS.items():
        assert spec.name == name and spec.tfds_name == f"glue/{name}"
        assert len(spec.tfds_text_keys) == (1 if name in ("cola", "sst2") else 2)

    mnli = glue.TASKS["mnli"]
    assert mnli.label_names == ("entailment", "neutral", "contradiction")
    assert mnli.eval_splits == ("validation_matched", "validation_mismatched")
    assert mnli.test_splits == ("test_matched", "test_mismatched")
    assert mnli.metric_keys == ("accuracy_m", "accuracy_mm")
    assert glue.TASKS["qnli"].label_names == glue.TASKS["rte"].label_names
    assert glue.TASKS["rte"].label_names == ("entailment", "not_entailment")
    stsb = glue.TASKS["stsb"]
    assert stsb.is_regression and stsb.label_names is None and stsb.num_labels == 1
    assert glue.TASKS["cola"].num_labels == 2 and mnli.num_labels == 3
    ax = glue.TASKS["ax"]
    assert ax.split_names == ("test",) and ax.train_split is None and ax.eval_splits == ()
    assert ax.predict_with == "mnli" and not ax.scored and ax.label_names == mnli.label_names
    assert sum(s.scored for s in glue.TASKS.values()) == 9
    assert glue.split_names("rte") == ("train", "validation", "test")
    assert glue.get_task("SST-2") is glue.TASKS["sst2"] and glue.get_task("STS-B") is stsb
    assert glue.task_file("ax", "/g", "test") == os.path.join("/g", "diagnostic", "diagnostic.tsv")
    with pytest.raises(ValueError, match="unknown GLUE task 'snli'"):
        glue.get_task("snli")
    with pytest.raises(ValueError, match="mnli has no split 'validation'"):
        mnli.split("validation")


def test_table_matches_tfds_builders():
    """Feature keys and class order agree with the TFDS glue builder (so class ids agree)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    for spec in glue.TASKS.values():
        feats = tfds.builder(spec.tfds_name).info.features
        assert set(feats) == {*spec.tfds_text_keys, "label", "idx"}, spec.name
        if spec.is_regression:
            assert feats["label"].dtype == np.float32
        else:
            assert tuple(feats["label"].names) == spec.tfds_label_names, spec.name


# ----------------------------------------------------------------------------------------------
# Local TSV files.


def test_every_split_of_every_task_is_listed():
    assert {(t, s) for t, spec in glue.TASKS.items() for s in spec.split_names} == set(EXPECTED)


@pytest.mark.parametrize("task,split", sorted(EXPECTED))
def test_read_split(glue_dir, task, split):
    if (task, split) == ("qqp", "train"):
        with pytest.warns(GlueDataWarning, match=r"skipped 1 malformed row\(s\) of 3.*train.tsv:3"):
            got = glue.read_split(task, str(glue_dir), split)
    else:
        got = glue.read_split(task, str(glue_dir), split)
    assert got == EXPECTED[task, split]
    for ex in got:  # labels have the right Python type
        if ex.label is not None:
            assert type(ex.label) is (float if task == "stsb" else int)


def test_test_file_ids_come_from_the_index_column(glue_dir):
    """Submission ids are the test file's index/id column, not the row number."""
    _write(
        glue_dir,
        {
            "QQP/test.tsv": _tsv(["id", "question1", "question2"], ["7", "a?", "b?"]),
            "CoLA/test.tsv": _tsv(["index", "sentence"], ["12", "x"], ["3", "y"]),
        },
    )
    assert [e.index for e in glue.read_split("qqp", str(glue_dir), "test")] == [7]
    assert [e.index for e in glue.read_split("cola", str(glue_dir), "test")] == [12, 3]


def test_quotes_and_line_ends_are_kept_as_text(glue_dir):
    """Quoting is off: a quote swallows no tab or line; a lone CR stays inside the sentence."""
    _write(
        glue_dir,
        {
            "SST-2/dev.tsv": _tsv(
                ["sentence", "label"], ['"unbalanced ', "0"], ['two "" quotes"', "1"], ["c\rd", "0"]
            )
        },
    )
    got = glue.read_split("sst2", str(glue_dir), "validation")
    assert [(e.text_a, e.label) for e in got] == [
        ('"unbalanced ', 0),
        ('two "" quotes"', 1),
        ("c\rd", 0),
    ]


def test_blank_lines_are_skipped(glue_dir):
    _write(glue_dir, {"CoLA/dev.tsv": "\nsrc\t0\t*\tA b.\n\n  \nsrc\t1\t\tC d.\n\n"})
    got = glue.read_split("cola", str(glue_dir), "validation")
    assert got == [_ex(0, "A b.", None, 0), _ex(1, "C d.", None, 1)]


def test_missing_directory_and_file_name_the_path(glue_dir, tmp_path):
    empty = tmp_path / "nothing"
    with pytest.raises(FileNotFoundError, match=str(empty / "RTE")):
        glue.read_split("rte", str(empty), "train")
    os.remove(glue_dir / "MNLI" / "test_mismatched.tsv")
    with pytest.raises(FileNotFoundError, match=str(glue_dir / "MNLI" / "test_mismatched.tsv")):
        glue.read_split("mnli", str(glue_dir), "test_mismatched")
    with pytest.raises(ValueError, match="rte has no split 'dev'"):
        glue.read_split("rte", str(glue_dir), "dev")


def _error_at(glue_dir: Path, rel: str, content: str | bytes, task: str, split: str, line: int):
    _write(glue_dir, {rel: content})
    path = str(glue_dir / rel)
    with pytest.raises(GlueDataError) as info:
        glue.read_split(task, str(glue_dir), split)
    assert str(info.value).startswith(f"{path}:{line}: "), str(info.value)
    return str(info.value)


def test_dev_and_test_errors_name_file_and_line(glue_dir):
    header = ["index", "sentence1", "sentence2", "label"]
    msg = _error_at(
        glue_dir, "RTE/dev.tsv",
        _tsv(header, ["0", "a", "b", "entailment"], ["1", "a", "b", "maybe"]),
        "rte", "validation", 3,
    )  # fmt: skip
    assert "unknown label 'maybe'" in msg
    msg = _error_at(
        glue_dir, "QQP/test.tsv",
        _tsv(["id", "question1", "question2"], ["0", "a?"], ["1", "b?", "c?"]),
        "qqp", "test", 2,
    )  # fmt: skip
    assert "2 fields, expected 3" in msg
    msg = _error_at(
        glue_dir, "CoLA/dev.tsv", _tsv(["s", "1", "", "ok"], ["s", "1", "too", "many", "x"]),
        "cola", "validation", 2,
    )  # fmt: skip
    assert "5 fields, expected 4" in msg
    msg = _error_at(
        glue_dir, "WNLI/test.tsv", _tsv(["index", "sentence1", "sentence2"], ["x", "a", "b"]),
        "wnli", "test", 2,
    )  # fmt: skip
    assert "index 'x' is not an integer" in msg
    msg = _error_at(
        glue_dir, "STS-B/dev.tsv", _tsv(_STSB_HEADER, ["0"] * 7 + ["a", "b", "high"]),
        "stsb", "validation", 2,
    )  # fmt: skip
    assert "score 'high'" in msg
    msg = _error_at(
        glue_dir, "MNLI/dev_matched.tsv",
        _tsv(_MNLI_DEV_HEADER).encode()
        + b"0\t1\t2\tg\tp\tp\tp\tp\t\xff\tb\tx\tx\tx\tx\tx\tneutral\n",
        "mnli", "validation_matched", 2,
    )  # fmt: skip
    assert "not UTF-8" in msg


def test_wrong_header_names_file_and_line_1(glue_dir):
    # SST-2's test layout where its train file belongs.
    msg = _error_at(
        glue_dir, "SST-2/train.tsv", _tsv(["index", "sentence"], ["0", "a"]), "sst2", "train", 1
    )
    assert "expected column 0 named 'sentence', found 'index'" in msg
    # An MRPC BOM that were not stripped would fail this check ('\ufeffQuality' != 'Quality').
    _write(glue_dir, {"MRPC/dev.tsv": b"\xef\xbb\xbf" + GLUE_FILES["MRPC/dev.tsv"].encode()})
    assert glue.read_split("mrpc", str(glue_dir), "validation") == EXPECTED["mrpc", "validation"]
    _write(glue_dir, {"QNLI/dev.tsv": ""})
    with pytest.raises(GlueDataError, match="empty file"):
        glue.read_split("qnli", str(glue_dir), "validation")
    _write(glue_dir, {"CoLA/train.tsv": "\n"})  # no header to check: empty is still an error
    with pytest.raises(GlueDataError, match="empty file"):
        glue.read_split("cola", str(glue_dir), "train")


def test_a_file_without_examples_is_named(glue_dir):
    """A train or dev file with only a header (or only malformed train rows) names the file,
    from read_split and from check_split alike; a header-only test file reads as empty."""
    header = ["index", "question", "sentence", "label"]
    cases = {
        ("QNLI/dev.tsv", "validation", "(only a header, no rows)"): _tsv(header),
        ("QNLI/train.tsv", "train", "(every one of its 2 rows is malformed; first: "): _tsv(
            header, ["0", "q?", "s."], ["x", "q", "s", "bad"]
        ),
    }
    for (rel, split, why), content in cases.items():
        _write(glue_dir, {rel: content})
        path = str(glue_dir / rel)
        for read in (glue.read_split, glue.check_split):
            with pytest.raises(GlueDataError) as info:
                read("qnli", str(glue_dir), split)
            assert str(info.value).startswith(f"{path}: no QNLI {split} examples {why}")
    _write(glue_dir, {"QNLI/test.tsv": _tsv(["index", "question", "sentence"])})
    assert glue.read_split("qnli", str(glue_dir), "test") == []
    assert glue.check_split("qnli", str(glue_dir), "test") == 0
    assert glue.check_split("mrpc", str(glue_dir), "validation") == len(
        glue.read_split("mrpc", str(glue_dir), "validation")
    )


def test_malformed_train_rows_are_skipped_and_counted(glue_dir):
    header = ["index", "question", "sentence", "label"]
    _write(
        glue_dir,
        {
            "QNLI/train.tsv": _tsv(
                header,
                ["0", "q?", "s.", "entailment"],
                ["1", "q?", "s.", "maybe"],  # unknown label
                ["2", "q?"],  # too few fields
                "3\tq?\ts.\tnot_entailment",
            ).encode()
            + b"4\t\xff\ts.\tentailment\n"  # not UTF-8
        },
    )
    with pytest.warns(GlueDataWarning, match=r"skipped 3 malformed row\(s\) of 5; first: .*:3: "):
        got = glue.read_split("qnli", str(glue_dir), "train")
    assert got == [_ex(0, "q?", "s.", 0), _ex(3, "q?", "s.", 1)]


# ----------------------------------------------------------------------------------------------
# TFDS.


def _mock_dataset(rows: dict[tuple[str, str], dict[str, list]]):
    """An as_dataset_fn for tfds.testing.mock_data serving fixed rows per (config, split)."""
    import tensorflow as tf

    def as_dataset_fn(builder, split, **kwargs):
        return tf.data.Dataset.from_tensor_slices(rows[builder.builder_config.name, str(split)])

    return as_dataset_fn


def test_load_tfds_split_single_and_pair_tasks():
    tfds = pytest.importorskip("tensorflow_datasets")
    rows = {
        ("sst2", "test"): {
            "sentence": [b"b movie", "caf\u00e9 .".encode()],
            "label": np.array([-1, -1], np.int64),
            "idx": np.array([1, 0], np.int32),
        },
        ("sst2", "train"): {
            "sentence": [b"good", b"bad"],
            "label": np.array([1, 0], np.int64),
            "idx": np.array([0, 1], np.int32),
        },
        ("mnli", "validation_mismatched"): {
            "premise": [b"p2", b"p0", b"p1"],
            "hypothesis": [b"h2", b"h0", b"h1"],
            "label": np.array([2, 0, 1], np.int64),
            "idx": np.array([2, 0, 1], np.int32),
        },
        ("stsb", "test"): {
            "sentence1": [b"a"],
            "sentence2": [b"b"],
            "label": np.array([-1.0], np.float32),
            "idx": np.array([0], np.int32),
        },
        ("stsb", "validation"): {
            "sentence1": [b"a"],
            "sentence2": [b"b"],
            "label": np.array([3.8], np.float32),
            "idx": np.array([0], np.int32),
        },
    }
    with tfds.testing.mock_data(as_dataset_fn=_mock_dataset(rows)):
        assert glue.load_tfds_split("sst2", "test") == [
            _ex(0, "caf\u00e9 ."),
            _ex(1, "b movie"),
        ]  # sorted by idx, unlabelled
        assert glue.load_tfds_split("sst2", "train") == [
            _ex(0, "good", None, 1),
            _ex(1, "bad", None, 0),
        ]
        assert glue.load_tfds_split("mnli", "validation_mismatched") == [
            _ex(0, "p0", "h0", 0),
            _ex(1, "p1", "h1", 1),
            _ex(2, "p2", "h2", 2),
        ]
        assert glue.load_tfds_split("stsb", "test") == [_ex(0, "a", "b", None)]
        (ex,) = glue.load_tfds_split("stsb", "validation")
        assert type(ex.label) is float and ex.label == pytest.approx(3.8)
        with pytest.raises(ValueError, match="mnli has no split 'validation'"):
            glue.load_tfds_split("mnli", "validation")


def test_load_tfds_split_random_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=7):
        got = glue.load_tfds_split("rte", "validation")
    assert len(got) == 7
    assert [e.index for e in got] == sorted(e.index for e in got)
    assert all(isinstance(e.text_a, str) and isinstance(e.text_b, str) for e in got)
    assert all(e.label in (0, 1) for e in got)


# ----------------------------------------------------------------------------------------------
# Features.


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(write_vocab(str(tmp_path_factory.mktemp("vocab"))))


def test_featurize_pairs_and_truncation(tokenizer):
    examples = [
        _ex(5, "the cat sat on the", "the dog", 2),
        _ex(9, "hello world the cat sat on the mat with a dog", "big small good", 0),
        _ex(3, "hello", None, None),
    ]
    out = glue.featurize(examples, tokenizer, 10)
    assert set(out) == {
        features.INPUT_IDS,
        features.INPUT_MASK,
        features.SEGMENT_IDS,
        features.LABEL,
        features.EXAMPLE_INDEX,
    }
    for key in (features.INPUT_IDS, features.INPUT_MASK, features.SEGMENT_IDS):
        assert out[key].shape == (3, 10) and out[key].dtype == np.int32
    assert out[features.LABEL].dtype == np.int32 and out[features.LABEL].tolist() == [2, 0, -1]
    assert out[glue.EXAMPLE_INDEX].dtype == np.int64
    assert out[glue.EXAMPLE_INDEX].tolist() == [5, 9, 3]

    ids = lambda text: tokenizer.convert_tokens_to_ids(text.split())
    cls, sep, pad = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id
    # Fits exactly: [CLS] a [SEP] b [SEP].
    assert out[features.INPUT_IDS][0].tolist() == [
        cls,
        *ids("the cat sat on the"),
        sep,
        *ids("the dog"),
        sep,
    ]
    assert out[features.SEGMENT_IDS][0].tolist() == [0] * 7 + [1] * 3
    # 11 + 3 pieces into 10 - 3 = 7: the longer a is cut to 4, b kept whole.
    assert out[features.INPUT_IDS][1].tolist() == [
        cls, *ids("hello world the cat"), sep, *ids("big small good"), sep,
    ]  # fmt: skip
    assert out[features.SEGMENT_IDS][1].tolist() == [0] * 6 + [1] * 4
    assert out[features.INPUT_MASK][1].tolist() == [1] * 10
    # Single sentence, padded.
    assert out[features.INPUT_IDS][2].tolist() == [cls, *ids("hello"), sep] + [pad] * 7
    assert out[features.INPUT_MASK][2].tolist() == [1] * 3 + [0] * 7
    assert out[features.SEGMENT_IDS][2].tolist() == [0] * 10


def test_featurize_regression_and_unlabelled(tokenizer):
    out = glue.featurize([_ex(0, "a", "b", 3.8), _ex(1, "c", "d", None)], tokenizer, 8)
    assert out[features.LABEL].dtype == np.float32
    assert out[features.LABEL][0] == pytest.approx(3.8) and math.isnan(out[features.LABEL][1])
    # An unlabelled STS-B split: regression must be said.
    out = glue.featurize([_ex(0, "a", "b")], tokenizer, 8, regression=True)
    assert out[features.LABEL].dtype == np.float32 and np.isnan(out[features.LABEL]).all()
    out = glue.featurize([], tokenizer, 8)
    assert out[features.INPUT_IDS].shape == (0, 8) and out[features.LABEL].shape == (0,)
    with pytest.raises(TypeError, match="not a class id"):
        glue.featurize([_ex(0, "a", None, 1.5)], tokenizer, 8, regression=False)


def test_featurize_reads_examples_from_files(glue_dir, tokenizer):
    examples = glue.read_split("mnli", str(glue_dir), "validation_matched")
    out = glue.featurize(examples, tokenizer, 16)
    assert out[features.LABEL].tolist() == [1, 2]
    assert out[features.EXAMPLE_INDEX].tolist() == [0, 1]
    assert (out[features.SEGMENT_IDS].sum(axis=1) > 0).all()  # pairs: b gets segment 1
