"""The SQuAD metric and n-best decoding (bertjax/squad_metrics.py): hand-computed cases of the
official v1.1 / v2.0 definitions, and decoding on a context cut into overlapping windows."""

from __future__ import annotations

import numpy as np
import pytest

from bertjax import checkpoint as ckpt
from bertjax import squad_metrics
from data_pipelines import features as F
from data_pipelines import squad as sq
from data_pipelines.squad import Answer, SquadExample

# --- The metric ---------------------------------------------------------------------------------


def _ex(qid: str, *golds: str, impossible: bool = False) -> SquadExample:
    return SquadExample(qid, "q?", "ctx", tuple(Answer(g, 0) for g in golds), impossible)


def test_normalize_exact_f1():
    assert squad_metrics.normalize_answer("  The  Eiffel-Tower, (Paris)! ") == "eiffeltower paris"
    assert squad_metrics.normalize_answer("an apple a day theory") == "apple day theory"
    assert squad_metrics.normalize_answer("Café") == "café"  # accents are kept
    assert squad_metrics.exact_score("the Eiffel Tower", "Eiffel tower!") == 1
    assert squad_metrics.exact_score("Denver Broncos", "Broncos") == 0
    assert squad_metrics.f1_score("Denver Broncos", "Broncos") == pytest.approx(2 / 3)
    assert squad_metrics.f1_score("a cat", "cat sat mat") == pytest.approx(0.5)
    assert squad_metrics.f1_score("cat cat dog", "cat dog dog") == pytest.approx(2 / 3)  # counts
    assert squad_metrics.f1_score("red", "blue") == 0.0
    assert (
        squad_metrics.f1_score("", "") == 1.0 and squad_metrics.f1_score("the", "") == 1.0
    )  # v2.0 rule
    assert squad_metrics.f1_score("", "", empty_matches_empty=False) == 0.0  # v1.1 rule


def test_evaluate_v1_hand_computed(caplog):
    examples = [
        _ex("q1", "Denver Broncos", "The Denver Broncos"),
        _ex("q2", "the Eiffel Tower"),
        _ex("q3", "1994"),
        _ex("q4", "a cat"),
        _ex("q5"),  # no gold answer: not scored under v1.1
        _ex("q1", "ignored repeat"),
    ]
    preds = {"q1": "Broncos", "q2": "Eiffel tower!", "q4": "cat sat mat", "q5": "x"}
    got = squad_metrics.evaluate_predictions(examples, preds, version_2_with_negative=False)
    assert got == pytest.approx(
        {"exact_match": 100 * 1 / 4, "f1": 100 * (2 / 3 + 1 + 0 + 0.5) / 4, "total": 4}
    )
    assert "1 question(s) without a prediction" in caplog.text  # q3 scores 0


V2_EXAMPLES = [
    _ex("h1", "Denver Broncos"),
    _ex("h2", "blue sky"),
    _ex("h3", "red"),
    _ex("n1", impossible=True),
    _ex("n2", impossible=True),
    _ex("n3", impossible=True),
]
V2_PREDS = {"h1": "Denver Broncos", "h2": "sky", "h3": "", "n1": "", "n2": "something", "n3": "x"}
V2_ODDS = {"h1": -3.0, "h2": -2.0, "n2": -1.0, "n1": 0.5, "n3": 1.5, "h3": 2.0}


def test_evaluate_v2_hand_computed():
    got = squad_metrics.evaluate_predictions(V2_EXAMPLES, V2_PREDS, version_2_with_negative=True)
    # Raw: h1 1/1, h2 0/(2/3), h3 0/0, n1 1/1, n2 0/0, n3 0/0.
    assert got == pytest.approx(
        {
            "exact": 100 * 2 / 6,
            "f1": 100 * (1 + 2 / 3 + 1) / 6,
            "total": 6,
            "HasAns_exact": 100 * 1 / 3,
            "HasAns_f1": 100 * (1 + 2 / 3) / 3,
            "HasAns_total": 3,
            "NoAns_exact": 100 * 1 / 3,
            "NoAns_f1": 100 * 1 / 3,
            "NoAns_total": 3,
        }
    )
    # With null odds: n3 (odds 1.5 > na_prob_thresh 1.0) counts as answered "" (right), h3
    # (odds 2.0) too (it was wrong anyway). Best thresholds: questions answered in order of
    # odds h1, h2, n2, n1, n3, h3 starting from 3 (every no-answer right):
    # exact 4 (after h1) -> thresh -3; F1 4 + 2/3 (after h2) -> thresh -2.
    got = squad_metrics.evaluate_predictions(
        V2_EXAMPLES, V2_PREDS, version_2_with_negative=True, null_odds=V2_ODDS
    )
    assert got["exact"] == pytest.approx(100 * 3 / 6)
    assert got["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1 + 1) / 6)
    assert got["NoAns_exact"] == pytest.approx(100 * 2 / 3)
    assert got["best_exact"] == pytest.approx(100 * 4 / 6) and got["best_exact_thresh"] == -3.0
    assert got["best_f1"] == pytest.approx(100 * (4 + 2 / 3) / 6) and got["best_f1_thresh"] == -2.0
    loose = squad_metrics.evaluate_predictions(
        V2_EXAMPLES, V2_PREDS, version_2_with_negative=True, null_odds=V2_ODDS, na_prob_thresh=5
    )
    assert loose["exact"] == pytest.approx(100 * 2 / 6)


def test_tune_null_threshold():
    best_non_null = {"h1": "Denver Broncos", "h2": "sky", "h3": "red", "n1": "a", "n2": "b"}
    best_non_null["n3"] = "c"
    # Gains in odds order: h1 +1, h2 +2/3, n2 -1, n1 -1, n3 -1, h3 +1: best after h2.
    threshold, preds = squad_metrics.tune_null_threshold(V2_EXAMPLES, best_non_null, V2_ODDS)
    assert threshold == -2.0
    assert preds == {"h1": "Denver Broncos", "h2": "sky", "h3": "", "n1": "", "n2": "", "n3": ""}
    f1 = squad_metrics.evaluate_predictions(V2_EXAMPLES, preds, version_2_with_negative=True)["f1"]
    assert f1 == pytest.approx(100 * (4 + 2 / 3) / 6)
    # Answering nothing is best: the threshold lies below every odds.
    threshold, preds = squad_metrics.tune_null_threshold(
        V2_EXAMPLES, {k: "wrong" for k in best_non_null}, V2_ODDS
    )
    assert threshold == -4.0 and set(preds.values()) == {""}


# --- Decoding -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(bertjax_dir):
    return ckpt.load_tokenizer_from(bertjax_dir)


CONTEXT = "Café is good. the cat sat on the mat with a big dog"
# Pieces: c ##a ##f ##e is good . the cat sat on the mat with a big dog (doc 0..16); the
# question "what?" is w ##h ##a ##t ?, so doc piece d of the window starting at w0 sits at
# position d - w0 + 7; windows of 8 pieces every 4: [0, 8), [4, 12), [8, 16), [12, 17).


def _decode_setup(tokenizer):
    ex = SquadExample("q", "what?", CONTEXT, (Answer("Café", 0),))
    feats = sq.featurize(
        [ex], tokenizer, max_seq_length=16, doc_stride=4, max_query_length=8,
        is_training=False, version_2_with_negative=True,
    ).arrays  # fmt: skip
    assert len(feats[F.INPUT_IDS]) == 4
    start = np.full((4, 16), -10.0, np.float32)
    end = np.full((4, 16), -10.0, np.float32)

    def put(window: int, first: int, last: int, s: float, e: float) -> None:
        w0 = 4 * window
        start[window, first - w0 + 7] = s
        end[window, last - w0 + 7] = e

    put(0, 0, 3, 5.0, 5.0)  # "Café" (score 10)
    put(0, 4, 5, 1.0, 1.0)  # "is good" (2)
    put(1, 4, 5, 9.0, 9.0)  # "is good" from window 1, where "is" lacks max context: excluded
    put(1, 7, 11, 6.0, 6.0)  # "the cat sat on the" (12): 5 pieces
    for w, (s, e) in enumerate([(3.0, 3.0), (1.0, 1.0), (4.0, 4.0), (5.0, 5.0)]):
        start[w, 0], end[w, 0] = s, e  # null score 2 in window 1
    return ex, feats, start, end


def test_decode_nbest_max_context_and_length(tokenizer):
    ex, feats, start, end = _decode_setup(tokenizer)
    out = squad_metrics.decode_predictions(
        [ex], feats, start, end, n_best_size=3, max_answer_length=4
    )
    assert out.predictions == {"q": "Café"}  # original case and accent
    nbest = out.nbest["q"]
    assert [n["text"] for n in nbest][:2] == ["Café", "is good"]
    assert len(nbest) == 3 and nbest[0]["start_logit"] == 5.0 and nbest[1]["end_logit"] == 1.0
    assert sum(n["probability"] for n in nbest) == pytest.approx(1.0)
    assert nbest[0]["probability"] > nbest[1]["probability"] > nbest[2]["probability"]
    assert out.null_odds == {} and out.best_non_null == {}
    longer = squad_metrics.decode_predictions([ex], feats, start, end, max_answer_length=5)
    assert longer.predictions == {"q": "the cat sat on the"}
    assert [n["text"] for n in longer.nbest["q"]][:3] == ["the cat sat on the", "Café", "is good"]
    assert len({n["text"] for n in longer.nbest["q"]}) == len(longer.nbest["q"]) == 20


def test_decode_v2_null_answer(tokenizer):
    ex, feats, start, end = _decode_setup(tokenizer)
    kw = dict(n_best_size=3, max_answer_length=4, version_2_with_negative=True)
    out = squad_metrics.decode_predictions([ex], feats, start, end, **kw)
    assert out.null_odds == {"q": pytest.approx(2.0 - 10.0)}
    assert out.predictions == {"q": "Café"} and out.best_non_null == {"q": "Café"}
    texts = [n["text"] for n in out.nbest["q"]]
    assert texts == ["Café", "is good", ""]  # the null answer (score 2) is in the n-best
    assert out.nbest["q"][2]["start_logit"] == 1.0
    strict = squad_metrics.decode_predictions(
        [ex], feats, start, end, **kw, null_score_diff_threshold=-9
    )
    assert strict.predictions == {"q": ""} and strict.best_non_null == {"q": "Café"}
    # An example without features (skipped in featurization) is answered "".
    other = SquadExample("none", "q", "", ())
    out = squad_metrics.decode_predictions([ex, other], feats, start, end, **kw)
    assert out.predictions["none"] == "" and out.nbest["none"] == []
    assert out.null_odds["none"] == squad_metrics.NO_CANDIDATE_ODDS
