"""SQuAD answers from span logits (n-best decoding) and the official metric; pure NumPy.

Decoding (`decode_predictions`, after google-research/bert's write_predictions): for each
feature of a question, the `n_best_size` best start and end positions among its context tokens
(a start only where the token has its maximum context) form candidate spans of at most
`max_answer_length` tokens; over all features of the question the candidates are ranked by
start + end logit and mapped back to the original context through the tokens' character
offsets (what BERT's get_final_text approximates: original case, accents and punctuation;
whitespace runs become one space); the first `n_best_size` distinct texts form the n-best list.
SQuAD v2.0 adds the null answer, scored start + end logit at [CLS] in the feature where that is
lowest; a question is answered "" when null score - best non-null score exceeds
`null_score_diff_threshold`. Deliberate differences from BERT: the top positions are chosen among
context tokens only (BERT takes them among all tokens and filters afterwards, which can leave
fewer candidates), and a question with no candidate is answered "" (BERT: "empty").

Metric (`evaluate_predictions`, written from the definitions of the official evaluate-v1.1.py /
evaluate-v2.0.py): answers are normalised (lowercase, punctuation removed, articles a/an/the
removed, whitespace collapsed); exact match and token F1 take the maximum over the gold answers.
v1.1 reports exact_match and f1 over every answerable question. v2.0 reports exact, f1, total,
the HasAns_/NoAns_ breakdown and, with null odds, best_exact / best_f1 and their thresholds;
unanswerable questions have the gold answer "". A missing prediction counts as "" (the official
v1.1 script counts it as wrong, the v2.0 one skips it or fails). `tune_null_threshold` finds the
v2.0 null threshold that maximises F1 on a labelled split; `evaluate_files` scores the
predictions.json (and null_odds.json) of a run against a SQuAD file.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from data_pipelines import squad as squad_data

log = logging.getLogger(__name__)

NO_CANDIDATE_ODDS = 1e9  # null odds of a question without any non-null candidate


# --- Decoding -----------------------------------------------------------------------------------


@dataclasses.dataclass
class SquadPredictions:
    """Decoded answers of a split, keyed by question id."""

    predictions: dict[str, str]  # the answer ("" = no answer, v2.0)
    nbest: dict[str, list[dict[str, Any]]]  # text, probability, start_logit, end_logit
    null_odds: dict[str, float]  # v2.0: null score - best non-null score (empty for v1.1)
    best_non_null: dict[str, str]  # v2.0: the best non-empty answer ("" if there is none)


def _top_positions(logits: np.ndarray, allowed: np.ndarray, n: int) -> np.ndarray:
    idx = np.flatnonzero(allowed)
    if len(idx) > n:
        idx = idx[np.argsort(-logits[idx], kind="stable")[:n]]
    return idx


def _softmax(scores: Sequence[float]) -> list[float]:
    if not scores:
        return []
    x = np.asarray(scores, np.float64)
    e = np.exp(x - x.max())
    return (e / e.sum()).tolist()


def decode_predictions(
    examples: Sequence[squad_data.SquadExample],
    feats: dict[str, np.ndarray],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    *,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    version_2_with_negative: bool = False,
    null_score_diff_threshold: float = 0.0,
) -> SquadPredictions:
    """Answers of `examples` from the logits [N, T] of their evaluation features `feats`
    (see the module doc). Every example gets a prediction, "" when it has no features."""
    rows_of: dict[int, list[int]] = collections.defaultdict(list)
    for row, index in enumerate(feats[squad_data.EXAMPLE_INDEX].tolist()):
        rows_of[index].append(row)
    t_start, t_end = feats[squad_data.TOKEN_START_CHAR], feats[squad_data.TOKEN_END_CHAR]
    max_context = feats[squad_data.TOKEN_IS_MAX_CONTEXT]
    out = SquadPredictions({}, {}, {}, {})
    for index, ex in enumerate(examples):
        if ex.qas_id in out.predictions:
            continue  # a repeated id: the first example answers
        # Candidates over all features: (score, start logit, end logit, char start, char end).
        cands: list[np.ndarray] = [np.zeros((0, 5))]
        null: tuple[float, float, float] | None = None
        for r in rows_of.get(index, []):
            sl, el = start_logits[r], end_logits[r]
            if version_2_with_negative and (null is None or sl[0] + el[0] < null[0]):
                null = (float(sl[0] + el[0]), float(sl[0]), float(el[0]))
            context = t_start[r] >= 0
            s_idx = _top_positions(sl, context & max_context[r], n_best_size)
            e_idx = _top_positions(el, context, n_best_size)
            s, e = (a.ravel() for a in np.meshgrid(s_idx, e_idx, indexing="ij"))
            ok = (e >= s) & (e - s + 1 <= max_answer_length)
            s, e = s[ok], e[ok]
            cands.append(np.stack([sl[s] + el[e], sl[s], el[e], t_start[r][s], t_end[r][e]], 1))
        table = np.concatenate(cands)
        if null is not None:
            table = np.concatenate([table, [[null[0], null[1], null[2], -1, -1]]])
        order = np.argsort(-table[:, 0], kind="stable")

        nbest: list[tuple[str, float, float]] = []
        seen: set[str] = set()
        for _, s_logit, e_logit, c_start, c_end in table[order].tolist():
            if len(nbest) >= n_best_size:
                break
            text = (
                squad_data.context_offsets_to_text(ex.context, int(c_start), int(c_end))
                if c_start >= 0
                else ""
            )
            if text in seen or (c_start >= 0 and not text):
                continue
            seen.add(text)
            nbest.append((text, s_logit, e_logit))
        if null is not None and "" not in seen:
            nbest.append(("", null[1], null[2]))
        probs = _softmax([s + e for _, s, e in nbest])
        out.nbest[ex.qas_id] = [
            {"text": t, "probability": p, "start_logit": s, "end_logit": e}
            for (t, s, e), p in zip(nbest, probs, strict=True)
        ]
        non_null = next(((t, s, e) for t, s, e in nbest if t), None)
        if not version_2_with_negative:
            out.predictions[ex.qas_id] = nbest[0][0] if nbest else ""
            continue
        if non_null is None or null is None:
            odds = NO_CANDIDATE_ODDS
        else:
            odds = null[0] - non_null[1] - non_null[2]
        out.null_odds[ex.qas_id] = float(odds)
        out.best_non_null[ex.qas_id] = non_null[0] if non_null else ""
        answered = non_null is not None and odds <= null_score_diff_threshold
        out.predictions[ex.qas_id] = non_null[0] if answered else ""
    return out


# --- The official metric ------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    """SQuAD's answer normalisation: lowercase, drop punctuation, drop the articles a/an/the,
    collapse whitespace."""
    s = "".join(c for c in s.lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_score(gold: str, prediction: str) -> int:
    """1 if the normalised texts are equal."""
    return int(normalize_answer(gold) == normalize_answer(prediction))


def f1_score(gold: str, prediction: str, *, empty_matches_empty: bool = True) -> float:
    """Token F1 of the normalised texts. Two empty answers score 1 under v2.0's rule
    (`empty_matches_empty`), 0 under v1.1's."""
    gold_toks, pred_toks = normalize_answer(gold).split(), normalize_answer(prediction).split()
    if empty_matches_empty and (not gold_toks or not pred_toks):
        return float(gold_toks == pred_toks)
    same = sum((collections.Counter(gold_toks) & collections.Counter(pred_toks)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def _unique(examples: Sequence[squad_data.SquadExample]) -> list[squad_data.SquadExample]:
    """The examples without repeated ids (the first one stays)."""
    seen: set[str] = set()
    out = []
    for e in examples:
        if e.qas_id not in seen:
            seen.add(e.qas_id)
            out.append(e)
    return out


def _find_best_threshold(
    predictions: Mapping[str, str],
    scores: Mapping[str, float],
    null_odds: Mapping[str, float],
    has_answer: Mapping[str, bool],
) -> tuple[float, float]:
    """(best score in percent, its threshold) as the official find_best_thresh: questions are
    answered in increasing order of null odds, the rest predicted as unanswerable."""
    current = best = sum(1 for q in scores if not has_answer[q])
    threshold = 0.0
    for qid in sorted(scores, key=lambda q: null_odds[q]):
        if has_answer[qid]:
            current += scores[qid]
        elif predictions.get(qid, ""):
            current -= 1
        if current > best:
            best, threshold = current, null_odds[qid]
    return 100.0 * best / max(len(scores), 1), float(threshold)


def evaluate_predictions(
    examples: Sequence[squad_data.SquadExample],
    predictions: Mapping[str, str],
    *,
    version_2_with_negative: bool,
    null_odds: Mapping[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, float]:
    """The official SQuAD metric, in percent (see the module doc).

    v1.1: {exact_match, f1, total} over the questions that have gold answers. v2.0: {exact, f1,
    total, HasAns_exact, HasAns_f1, HasAns_total, NoAns_exact, NoAns_f1, NoAns_total} and, with
    `null_odds` (the official script's na_probs), best_exact, best_exact_thresh, best_f1,
    best_f1_thresh; a question whose null odds exceed `na_prob_thresh` counts as answered "".
    """
    examples = _unique(examples)
    missing = [e.qas_id for e in examples if e.qas_id not in predictions]
    if missing:
        log.warning(
            "%d question(s) without a prediction (scored as ''), e.g. %s", len(missing), missing[0]
        )
    if not version_2_with_negative:
        scored = [e for e in examples if e.answers]
        exact = f1 = 0.0
        for e in scored:
            pred = predictions.get(e.qas_id, "")
            exact += max(exact_score(a.text, pred) for a in e.answers)
            f1 += max(f1_score(a.text, pred, empty_matches_empty=False) for a in e.answers)
        total = max(len(scored), 1)
        return {
            "exact_match": 100.0 * exact / total,
            "f1": 100.0 * f1 / total,
            "total": len(scored),
        }

    has_answer = {e.qas_id: bool(e.answers) for e in examples}
    exact_raw, f1_raw = {}, {}
    for e in examples:
        gold = [a.text for a in e.answers if normalize_answer(a.text)] or [""]
        pred = predictions.get(e.qas_id, "")
        exact_raw[e.qas_id] = float(max(exact_score(g, pred) for g in gold))
        f1_raw[e.qas_id] = max(f1_score(g, pred) for g in gold)
    odds = dict(null_odds) if null_odds is not None else {}

    def thresholded(raw: dict[str, float]) -> dict[str, float]:
        return {
            q: float(not has_answer[q]) if odds.get(q, 0.0) > na_prob_thresh else s
            for q, s in raw.items()
        }

    exact, f1 = thresholded(exact_raw), thresholded(f1_raw)

    def summary(qids: list[str], prefix: str = "") -> dict[str, float]:
        n = max(len(qids), 1)
        return {
            f"{prefix}exact": 100.0 * sum(exact[q] for q in qids) / n,
            f"{prefix}f1": 100.0 * sum(f1[q] for q in qids) / n,
            f"{prefix}total": len(qids),
        }

    qids = list(has_answer)
    out = summary(qids)
    has = [q for q in qids if has_answer[q]]
    no = [q for q in qids if not has_answer[q]]
    if has:
        out.update(summary(has, "HasAns_"))
    if no:
        out.update(summary(no, "NoAns_"))
    if null_odds is not None:
        full = {q: odds.get(q, 0.0) for q in qids}
        out["best_exact"], out["best_exact_thresh"] = _find_best_threshold(
            predictions, exact_raw, full, has_answer
        )
        out["best_f1"], out["best_f1_thresh"] = _find_best_threshold(
            predictions, f1_raw, full, has_answer
        )
    return out


def tune_null_threshold(
    examples: Sequence[squad_data.SquadExample],
    best_non_null: Mapping[str, str],
    null_odds: Mapping[str, float],
) -> tuple[float, dict[str, str]]:
    """(threshold, predictions) maximising v2.0 F1: a question is answered with its best
    non-null answer when its null odds are <= threshold, else "". The threshold is one of the
    odds (or below them all when answering nothing is best)."""
    examples = _unique(examples)
    if not examples:
        return 0.0, {}
    gain = []  # (odds, F1 change when the question is answered instead of left unanswered)
    for e in examples:
        pred = best_non_null.get(e.qas_id, "")
        if e.answers:
            gold = [a.text for a in e.answers if normalize_answer(a.text)] or [""]
            gain.append((null_odds.get(e.qas_id, 0.0), max(f1_score(g, pred) for g in gold)))
        else:
            gain.append((null_odds.get(e.qas_id, 0.0), -1.0 if pred else 0.0))
    gain.sort(key=lambda x: x[0])
    best_total, threshold = 0.0, gain[0][0] - 1.0
    total = 0.0
    for i, (odds, delta) in enumerate(gain):
        total += delta
        last_of_tie = i + 1 == len(gain) or gain[i + 1][0] > odds
        if last_of_tie and total > best_total + 1e-12:
            best_total, threshold = total, odds
    predictions = {
        e.qas_id: best_non_null.get(e.qas_id, "")
        if null_odds.get(e.qas_id, 0.0) <= threshold
        else ""
        for e in examples
    }
    return float(threshold), predictions


def evaluate_files(
    data_file: str,
    predictions_file: str,
    *,
    null_odds_file: str | None = None,
    version_2_with_negative: bool | None = None,
) -> dict[str, float]:
    """`evaluate_predictions` of a predictions.json (and null_odds.json) against a SQuAD file;
    the version is v2.0 when any question is marked is_impossible, unless given."""
    examples = squad_data.read_squad_file(data_file)
    if version_2_with_negative is None:
        version_2_with_negative = any(e.is_impossible for e in examples)

    def read_map(path: str, kind: type | tuple[type, ...], what: str) -> dict[str, Any]:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"file not found: {path}")
        try:
            with open(path, encoding="utf-8") as f:
                value = json.load(f)
        except json.JSONDecodeError as e:
            raise squad_data.SquadDataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(value, dict) or not all(isinstance(v, kind) for v in value.values()):
            raise squad_data.SquadDataError(
                f"{path}: expected a JSON object of question id -> {what}"
            )
        return value

    predictions = read_map(predictions_file, str, "answer text")
    null_odds = read_map(null_odds_file, (int, float), "number") if null_odds_file else None
    return evaluate_predictions(
        examples,
        predictions,
        version_2_with_negative=version_2_with_negative,
        null_odds=null_odds,
    )
