"""SQuAD readers and featurization (data_pipelines/squad.py): offsets, windows, bad input."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from conftest import write_vocab

from data_pipelines import features as F
from data_pipelines import squad as sq
from data_pipelines.squad import Answer, SquadExample
from data_pipelines.tokenizers import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    d = tmp_path_factory.mktemp("vocab")
    return load_tokenizer(write_vocab(str(d)))


def _pieces(tokenizer, context: str) -> list[tuple[str, str]]:
    t = sq.tokenize_context(tokenizer, context)
    names = tokenizer.convert_ids_to_tokens(t.ids.tolist())
    return [(p, context[s:e]) for p, s, e in zip(names, t.starts, t.ends, strict=True)]


def _example(context: str, answer: str, *, nth: int = 0, qid: str = "", question: str = "what?"):
    start = -1
    for _ in range(nth + 1):
        start = context.index(answer, start + 1)
    return SquadExample(qid or answer, question, context, (Answer(answer, start),))


def _featurize(examples, tokenizer, *, training=False, v2=False, **kw):
    kw = {"max_seq_length": 24, "doc_stride": 4, "max_query_length": 8, **kw}
    return sq.featurize(examples, tokenizer, is_training=training, version_2_with_negative=v2, **kw)


def _answer_texts(feats: sq.SquadFeatures, examples) -> list[str | None]:
    """The context text each feature's positions point at (None for [CLS])."""
    a = feats.arrays
    out = []
    for i in range(feats.size):
        s, e = a[sq.START_POSITIONS][i], a[sq.END_POSITIONS][i]
        if s == 0:
            out.append(None)
            continue
        context = examples[a[sq.EXAMPLE_INDEX][i]].context
        out.append(context[a[sq.TOKEN_START_CHAR][i, s] : a[sq.TOKEN_END_CHAR][i, e]])
    return out


# --- Reading ------------------------------------------------------------------------------------


def _squad_json(qas_per_paragraph: list[tuple[str, list[dict]]]) -> dict:
    return {
        "version": "v2.0",
        "data": [
            {
                "title": "T",
                "paragraphs": [{"context": c, "qas": qas} for c, qas in qas_per_paragraph],
            }
        ],
    }


def test_read_v1_and_v2_files(tmp_path):
    data = _squad_json(
        [
            (
                "Paris is in France.",
                [
                    {
                        "id": "a1",
                        "question": "Where?",
                        "answers": [{"text": "France", "answer_start": 12}],
                    },
                    {"id": 7, "question": "What?", "answers": [], "is_impossible": True},
                ],
            ),
            ("Second context.", [{"id": "a3", "question": "No answers key?"}]),
        ]
    )
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    got = sq.read_squad_file(str(path))
    assert got == [
        SquadExample("a1", "Where?", "Paris is in France.", (Answer("France", 12),), False, "T"),
        SquadExample("7", "What?", "Paris is in France.", (), True, "T"),
        SquadExample("a3", "No answers key?", "Second context.", (), False, "T"),
    ]
    assert sq.default_file("squad_v2", "/d", "train") == "/d/train-v2.0.json"
    assert sq.default_file("squad_v1", "/d", "validation") == "/d/dev-v1.1.json"
    with pytest.raises(ValueError, match="unknown SQuAD task 'squad_v3'"):
        sq.get_task("squad_v3")


def test_read_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope" / "train-v1.1.json"
    with pytest.raises(FileNotFoundError, match=f"SQuAD file not found: {missing}"):
        sq.read_squad_file(str(missing))
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [\n  {"paragraphs": ]}', encoding="utf-8")
    with pytest.raises(sq.SquadDataError, match=rf"{bad}:2:\d+: invalid JSON"):
        sq.read_squad_file(str(bad))
    bad.write_bytes(b'{"data": "\xff"}')
    with pytest.raises(sq.SquadDataError, match=f"{bad}: not UTF-8"):
        sq.read_squad_file(str(bad))
    cases = [
        ([], "the top level must be dict"),
        ({"version": "1.1"}, "missing 'data'"),
        (
            {"data": [{"paragraphs": [{"qas": []}]}]},
            r"data\[0\].paragraphs\[0\]: missing 'context'",
        ),
        (
            _squad_json([("c", [{"id": "x", "question": "q", "answers": [{"text": "c"}]}])]),
            r"data\[0\].paragraphs\[0\].qas\[0\].answers\[0\]: missing 'answer_start'",
        ),
        (
            _squad_json(
                [
                    (
                        "c",
                        [
                            {
                                "id": "x",
                                "question": "q",
                                "answers": [{"text": "c", "answer_start": "0"}],
                            }
                        ],
                    )
                ]
            ),
            "'answer_start' must be int, got str",
        ),
        (_squad_json([("c", [{"id": "x", "answers": []}])]), r"qas\[0\]: missing 'question'"),
    ]
    for data, message in cases:
        bad.write_text(json.dumps(data), encoding="utf-8")
        with pytest.raises(sq.SquadDataError, match=f"{bad}.*{message}"):
            sq.read_squad_file(str(bad))


# --- Offsets ------------------------------------------------------------------------------------

CONTEXTS = [
    "Café  Hello (1994), the dogs' MODEL\u00a0x;",
    "naïve e\u0301cole\tİstanbul\n\nworld 😀 cat",
    "  leading and trailing  ",
]


def test_piece_offsets_survive_accents_punctuation_and_wordpiece(tokenizer):
    assert tokenizer.do_lower_case
    assert _pieces(tokenizer, CONTEXTS[0]) == [
        ("c", "C"), ("##a", "a"), ("##f", "f"), ("##e", "é"),  # accent stripped, kept in text
        ("hello", "Hello"),
        ("(", "("), ("1", "1"), ("##9", "9"), ("##9", "9"), ("##4", "4"), (")", ")"), (",", ","),
        ("the", "the"),
        ("dog", "dog"), ("##s", "s"), ("'", "'"),
        ("model", "MODEL"), ("x", "x"), (";", ";"),
    ]  # fmt: skip
    assert _pieces(tokenizer, CONTEXTS[1]) == [
        ("n", "n"), ("##a", "a"), ("##i", "ï"), ("##v", "v"), ("##e", "e"),
        ("e", "e\u0301"),  # a decomposed accent stays with its letter
        ("##c", "c"), ("##o", "o"), ("##l", "l"), ("##e", "e"),
        ("is", "İs"), ("##t", "t"), ("##a", "a"), ("##n", "n"), ("##b", "b"), ("##u", "u"),
        ("##l", "l"),
        ("world", "world"), ("[UNK]", "😀"), ("cat", "cat"),
    ]  # fmt: skip
    assert "".join(t for _, t in _pieces(tokenizer, CONTEXTS[2])) == "leadingandtrailing"


class _WithoutOffsets:
    """The same tokenizer seen only through the Tokenizer interface (no Rust offsets)."""

    def __init__(self, inner):
        self.inner = inner
        self.do_lower_case = inner.do_lower_case

    def tokenize_with_ids(self, text):
        return self.inner.tokenize_with_ids(text)


def test_fallback_alignment_matches_rust_offsets(tokenizer):
    slow = _WithoutOffsets(tokenizer)
    for context in CONTEXTS:
        fast = sq.tokenize_context(tokenizer, context)
        other = sq.tokenize_contexts(slow, [context])[0]
        np.testing.assert_array_equal(other.ids, fast.ids)
        if "😀" in context:  # [UNK] cannot be aligned by text: its word keeps its whole span
            i = tokenizer.convert_ids_to_tokens(fast.ids.tolist()).index("[UNK]")
            assert (other.starts[i], other.ends[i]) == (fast.starts[i], fast.ends[i])
        np.testing.assert_array_equal(other.starts, fast.starts)
        np.testing.assert_array_equal(other.ends, fast.ends)
    assert sq.align_pieces("Café,", ["c", "##a", "##f", "##e", ","], lower=True) == [
        (0, 1), (1, 2), (2, 3), (3, 4), (4, 5),
    ]  # fmt: skip
    assert sq.align_pieces("Ab😀", ["a", "##b", "[UNK]"], lower=True) is None
    # Cased SentencePiece-style pieces.
    assert sq.align_pieces("Héllo", ["\u2581H", "é", "llo"], lower=False) == [
        (0, 1),
        (1, 2),
        (2, 5),
    ]


def test_answer_positions_map_back_to_the_answer(tokenizer):
    context = "Café  Hello (1994), the dogs' MODEL\u00a0x; naïve e\u0301cole world"
    examples = [
        _example(context, "1994"),  # inside "(1994),": the digits only
        _example(context, "Café"),  # four pieces, accent
        _example(context, "dogs"),  # "dogs'" without the apostrophe
        _example(context, "MODEL\u00a0x"),  # across a no-break space
        _example(context, "e\u0301cole"),  # decomposed accent
        _example(context, "naïve e\u0301cole world"),  # to the very end
        SquadExample("ws", "q", context, (Answer("Café Hello", 0),)),  # "Café  Hello" (2 spaces)
    ]
    for training in (False, True):
        feats = _featurize(examples, tokenizer, training=training)
        assert not feats.issues
        a = feats.arrays
        if training:
            assert sq.TOKEN_START_CHAR not in a
            continue
        texts = _answer_texts(feats, examples)
        for i, ex in enumerate(examples):
            rows = np.flatnonzero(a[sq.EXAMPLE_INDEX] == i)
            found = {texts[r] for r in rows} - {None}
            expected = ex.answers[0].text if ex.qas_id != "ws" else "Café  Hello"
            assert found == {expected}, ex
        eval_positions = (a[sq.START_POSITIONS].copy(), a[sq.END_POSITIONS].copy())
    train = _featurize(examples, tokenizer, training=True).arrays
    np.testing.assert_array_equal(train[sq.START_POSITIONS], eval_positions[0])
    np.testing.assert_array_equal(train[sq.END_POSITIONS], eval_positions[1])


def test_answer_char_span_checks_the_text_at_the_offset():
    c = "New  York is big"
    assert sq.answer_char_span(c, Answer("New  York", 0)) == (0, 9)
    assert sq.answer_char_span(c, Answer("New York", 0)) == (0, 9)  # whitespace runs
    assert sq.answer_char_span(c, Answer("York", 5)) == (5, 9)
    assert sq.answer_char_span(c, Answer("York", 4)) is None  # off by one
    assert sq.answer_char_span(c, Answer("york", 5)) is None  # case
    assert sq.answer_char_span(c, Answer("big", 40)) is None
    assert sq.answer_char_span(c, Answer("  ", 3)) is None


# --- Windows ------------------------------------------------------------------------------------


def _bert_max_context(spans, position):
    """google-research/bert's _check_is_max_context, as written there (a loop)."""
    best_score, best_index = None, None
    for index, (start, length) in enumerate(spans):
        end = start + length - 1
        if position < start or position > end:
            continue
        score = min(position - start, end - position) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best_index = score, index
    return best_index


def test_windows_layout_and_max_context(tokenizer):
    words = "the cat sat on a mat with a big dog and a small cat".split()
    context = " ".join(words * 3)
    question = "is the cat sat?"
    ex = _example(context, "big dog", nth=1, question=question)
    feats = _featurize([ex], tokenizer, max_seq_length=20, doc_stride=5)
    a = feats.arrays
    q_ids = tokenizer.encode(question)
    assert len(q_ids) == 5
    doc_ids = sq.tokenize_context(tokenizer, context).ids
    max_doc = 20 - 5 - 3
    spans = sq.doc_spans(len(doc_ids), max_doc, 5)
    assert [s for s, _ in spans] == list(range(0, len(doc_ids) - max_doc + 5, 5))[: len(spans)]
    assert spans[-1][0] + spans[-1][1] == len(doc_ids)
    assert all(length == max_doc for _, length in spans[:-1])
    assert feats.size == len(spans)
    assert a[sq.UNIQUE_ID].tolist() == [1_000_000_000 + i for i in range(len(spans))]
    for i, (start, length) in enumerate(spans):
        n = 2 + len(q_ids) + length + 1
        ids = a[F.INPUT_IDS][i]
        assert ids[:n].tolist() == [
            tokenizer.cls_id, *q_ids, tokenizer.sep_id, *doc_ids[start : start + length],
            tokenizer.sep_id,
        ]  # fmt: skip
        assert (ids[n:] == tokenizer.pad_id).all()
        assert a[F.INPUT_MASK][i].tolist() == [1] * n + [0] * (20 - n)
        assert a[F.SEGMENT_IDS][i].tolist() == [0] * (len(q_ids) + 2) + [1] * (length + 1) + [0] * (
            20 - n
        )
        # Character maps cover exactly the window's positions.
        assert (a[sq.TOKEN_START_CHAR][i] >= 0).sum() == length
        for j in range(length):
            best = _bert_max_context(spans, start + j)
            assert a[sq.TOKEN_IS_MAX_CONTEXT][i, len(q_ids) + 2 + j] == (best == i)
    # Each context piece is the max-context piece of exactly one window.
    per_char = {}
    for i in range(feats.size):
        for pos in np.flatnonzero(a[sq.TOKEN_IS_MAX_CONTEXT][i]):
            key = int(a[sq.TOKEN_START_CHAR][i, pos])
            per_char[key] = per_char.get(key, 0) + 1
    assert len(per_char) == len(doc_ids) and set(per_char.values()) == {1}


def test_max_context_window_matches_bert_on_any_spans():
    rng = np.random.default_rng(0)
    cases = [[(3, 4), (0, 8)], [(0, 5), (2, 3), (4, 6)]]  # shorter first: the length decides
    cases += [
        [(int(rng.integers(0, 12)), int(rng.integers(1, 9))) for _ in range(k)]
        for k in rng.integers(1, 5, 30)
    ]
    for spans in cases:
        n = max(s + length for s, length in spans)
        got = sq.max_context_window(spans, n)
        for pos in range(n):
            want = _bert_max_context(spans, pos)
            if want is not None:
                assert got[pos] == want, (spans, pos)


def test_answer_across_a_window_boundary(tokenizer):
    context = "a b c d e f g h i j k l m n o p q r s t u v w x y z"  # one piece per letter
    ex = _example(context, "h i j")  # pieces 7..9
    q = len(tokenizer.encode(ex.question))
    feats = _featurize([ex], tokenizer, max_seq_length=q + 3 + 6, doc_stride=2)
    a = feats.arrays
    texts = _answer_texts(feats, [ex])
    starts = [s for s, _ in sq.doc_spans(26, 6, 2)]
    assert starts == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    whole = [s <= 7 and 9 < s + 6 for s in starts]
    cut = [not w and s <= 9 and 7 < s + 6 for s, w in zip(starts, whole, strict=True)]
    assert sum(whole) == 2 and sum(cut) == 2  # windows at 4 and 6 hold it, those at 2 and 8 cut it
    for i, s in enumerate(starts):
        if whole[i]:
            assert texts[i] == "h i j"
            assert a[sq.START_POSITIONS][i] == 7 - s + q + 2
            assert a[sq.END_POSITIONS][i] == 9 - s + q + 2
        else:
            assert a[sq.START_POSITIONS][i] == a[sq.END_POSITIONS][i] == 0


def test_v2_unanswerable_points_at_cls(tokenizer):
    ex = SquadExample("imp", "what?", "a b c d e f g h i j k l", (), is_impossible=True)
    ok = _example("x y z dog", "dog", qid="ok")
    for training in (True, False):
        feats = _featurize([ex, ok], tokenizer, training=training, v2=True, max_seq_length=12)
        a = feats.arrays
        imp = a[sq.EXAMPLE_INDEX] == 0
        assert imp.sum() > 1
        assert (a[sq.START_POSITIONS][imp] == 0).all() and (a[sq.END_POSITIONS][imp] == 0).all()
        assert (a[sq.IS_IMPOSSIBLE] == imp).all()
        assert a[sq.START_POSITIONS][~imp].tolist() == [10]  # [CLS] w ##h ##a ##t ? [SEP] x y z dog
    # SQuAD v1.1 trains on answerable questions only.
    feats = _featurize([ex, ok], tokenizer, training=True, v2=False)
    assert [(i.qas_id, i.reason) for i in feats.issues] == [("imp", sq.NO_ANSWER)]
    assert feats.size == 1


# --- Bad input ----------------------------------------------------------------------------------


def test_bad_examples_are_reported_and_skipped(tokenizer, caplog):
    good = _example("the cat sat on the mat", "mat", qid="good")
    examples = [
        SquadExample("shifted", "q?", "the cat sat", (Answer("cat", 5),)),
        SquadExample("wrong", "q?", "the cat sat", (Answer("dog", 4),)),
        SquadExample("empty", "q?", "", (Answer("x", 0),)),
        SquadExample("blank", "q?", " \t\n", ()),
        good,
        SquadExample("long", "the " * 30 + "?", "the cat sat", (Answer("cat", 4),)),
        SquadExample("good", "again?", "the dog", (Answer("dog", 4),)),
    ]
    with caplog.at_level(logging.WARNING, logger="data_pipelines.squad"):
        feats = _featurize(
            examples, tokenizer, training=True, max_seq_length=16, max_query_length=20
        )
    got = [(i.qas_id, i.reason, i.skipped) for i in feats.issues]
    assert got == [
        ("shifted", sq.ANSWER_MISMATCH, True),
        ("wrong", sq.ANSWER_MISMATCH, True),
        ("empty", sq.EMPTY_CONTEXT, True),
        ("blank", sq.EMPTY_CONTEXT, True),
        ("long", sq.QUESTION_TOO_LONG, True),
        ("good", sq.DUPLICATE_ID, True),
    ]
    assert feats.issue_counts() == {
        sq.ANSWER_MISMATCH: 2, sq.EMPTY_CONTEXT: 2, sq.QUESTION_TOO_LONG: 1, sq.DUPLICATE_ID: 1,
    }  # fmt: skip
    assert "'cat' at 5 does not match the context there ('at ')" in feats.issues[0].detail
    assert feats.arrays[sq.EXAMPLE_INDEX].tolist() == [4]  # only the good one is featurized
    assert _answer_texts(_featurize([good], tokenizer), [good]) == ["mat"]
    assert "example shifted skipped: answer_mismatch" in caplog.text
    assert "skipped 6 of 7 examples" in caplog.text and "answer_mismatch: 2" in caplog.text

    # Evaluation keeps a mismatching answer (it is scored on its text) with unknown positions.
    feats = _featurize(examples[:2] + [good], tokenizer, training=False)
    assert [(i.qas_id, i.skipped) for i in feats.issues] == [("shifted", False), ("wrong", False)]
    assert feats.arrays[sq.EXAMPLE_INDEX].tolist() == [0, 1, 2]
    assert feats.arrays[sq.START_POSITIONS].tolist()[:2] == [-1, -1]
    assert feats.issue_counts() == {}


def test_questions_are_truncated_to_max_query_length(tokenizer):
    ex = _example("the cat sat on the mat", "mat", question="a b c d e f g h i j")
    feats = _featurize([ex], tokenizer, max_query_length=4, max_seq_length=16)
    assert feats.num_truncated_questions == 1
    a = feats.arrays
    assert a[F.INPUT_IDS][0, :6].tolist() == [
        tokenizer.cls_id, *tokenizer.encode("a b c d"), tokenizer.sep_id,
    ]  # fmt: skip
    assert _answer_texts(feats, [ex]) == ["mat"]
    with pytest.raises(ValueError, match="max_seq_length=3"):
        _featurize([ex], tokenizer, max_seq_length=3)


# --- TFDS ---------------------------------------------------------------------------------------


def _mock_squad(rows: dict[str, list[dict]]):
    """An as_dataset_fn for tfds.testing.mock_data serving fixed SQuAD rows per config."""
    import tensorflow as tf

    def as_dataset_fn(builder, split, **kwargs):
        examples = rows[f"{builder.builder_config.name}/{split}"]
        v2 = builder.builder_config.name == "v2.0"
        answer = {
            "text": tf.TensorSpec([None], tf.string),
            "answer_start": tf.TensorSpec([None], tf.int32),
        }
        sig = {k: tf.TensorSpec([], tf.string) for k in ("id", "title", "context", "question")}
        sig["answers"] = answer
        if v2:
            sig["is_impossible"] = tf.TensorSpec([], tf.bool)
            sig["plausible_answers"] = answer

        def gen():
            for r in examples:
                row = {k: r[k] for k in ("id", "title", "context", "question")}
                row["answers"] = {
                    "text": r["texts"],
                    "answer_start": np.array(r["starts"], np.int32),
                }
                if v2:
                    row["is_impossible"] = r.get("impossible", False)
                    row["plausible_answers"] = {"text": [], "answer_start": np.zeros(0, np.int32)}
                yield row

        return tf.data.Dataset.from_generator(gen, output_signature=sig)

    return as_dataset_fn


def test_load_tfds_split_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    row = dict(title="T", context="Paris is in France.", question="Where?")
    rows = {
        "v1.1/validation": [
            {**row, "id": "b", "texts": ["France", "in France"], "starts": [12, 9]},
            {**row, "id": "a", "texts": ["Paris"], "starts": [0]},
        ],
        "v2.0/train": [
            {**row, "id": "x", "texts": [], "starts": [], "impossible": True},
            {**row, "id": "y", "texts": ["café"], "starts": [3]},
        ],
    }
    with tfds.testing.mock_data(as_dataset_fn=_mock_squad(rows)):
        v1 = sq.load_tfds_split("squad_v1", "validation")
        v2 = sq.load_tfds_split("squad_v2", "train")
    assert v1 == [
        SquadExample("a", "Where?", "Paris is in France.", (Answer("Paris", 0),), False, "T"),
        SquadExample(
            "b", "Where?", "Paris is in France.",
            (Answer("France", 12), Answer("in France", 9)), False, "T",
        ),
    ]  # fmt: skip
    assert [(e.qas_id, e.is_impossible, e.answers) for e in v2] == [
        ("x", True, ()),
        ("y", False, (Answer("café", 3),)),
    ]
    with pytest.raises(ValueError, match="use 'train' or 'validation'"):
        sq.load_tfds_split("squad_v1", "test")
