"""Fine-tuning BERT on SQuAD v1.1 / v2.0, n-best span decoding, and the official metric.

`finetune_squad(config, workdir)` reads like finetune.py (the GLUE loop, whose machinery it
reuses): config -> checkpoint and tokenizer -> data -> mesh -> model and optimizer -> sharded
state -> loop (train, evaluate on dev each epoch, keep the best) -> prediction files. It writes

    WORKDIR/run_config.json           the config as given
    WORKDIR/metrics.jsonl             train metrics every train.log_every steps; one "eval"
                                      record per evaluation (metrics in percent, eval loss)
    WORKDIR/tensorboard/              the same for TensorBoard
    WORKDIR/best/                     bertjax model dir (encoder + qa_outputs, tokenizer) of the
                                      best evaluation (task kind "span")
    WORKDIR/predictions.json          {question id: answer text} of the best evaluation
                                      (v2.0: "" = no answer, at eval.null_score_diff_threshold)
    WORKDIR/nbest_predictions.json    {id: [{text, probability, start_logit, end_logit}, ...]}
    WORKDIR/null_odds.json            v2.0: {id: null score - best non-null score}
    WORKDIR/predictions_tuned.json    v2.0: the predictions at the null threshold tuned on dev
    WORKDIR/eval_results.json         best metrics, every evaluation, data issues, the config;
                                      "complete": true once the run has finished

Model: `BertForQuestionAnswering`, a dense layer (2 outputs) on the sequence output giving start
and end logits per token; the encoder comes from `init_checkpoint` (a bertjax model dir or a
pre-training workdir; its pooler and pre-training heads are dropped), the span head is fresh. The
loss is the mean of the start and end cross-entropies over the real tokens (`losses.span_loss`).
With `train.num_epochs=0` nothing is trained: the checkpoint must then hold a span head (a
previous run's WORKDIR/best) and the run only predicts and evaluates the dev set.

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
v1.1 script counts it as wrong, the v2.0 one skips it or fails). The run's score (best epoch) is
F1: v1.1 f1, v2.0 `tuned_f1`, the F1 at the null threshold tuned on dev (`tune_null_threshold`,
reported as `tuned_null_threshold`), which is how the paper's dev numbers are obtained.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import math
import os
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from bertjax import checkpoint as ckpt
from bertjax import finetune as ft
from bertjax import losses, sharding
from bertjax.config import from_group
from bertjax.model import BertForQuestionAnswering
from bertjax.optim import OptimConfig, learning_rate_schedule, make_optimizer
from bertjax.pretrain import (
    MetricWriter,
    TrainState,
    accumulate_gradients,
    apply_guarded_update,
)
from data_pipelines import squad as squad_data
from data_pipelines.features import INPUT_MASK
from data_pipelines.squad import END_POSITIONS, START_POSITIONS

log = logging.getLogger(__name__)

TRAIN_KEYS = (*ft.MODEL_INPUTS, START_POSITIONS, END_POSITIONS)
PREDICTIONS_FILE = "predictions.json"
NBEST_FILE = "nbest_predictions.json"
NULL_ODDS_FILE = "null_odds.json"
TUNED_PREDICTIONS_FILE = "predictions_tuned.json"
NO_CANDIDATE_ODDS = 1e9  # null odds of a question without any non-null candidate


def is_squad_config(config: Any) -> bool:
    """Whether an experiment config is a SQuAD one (`config.task.name` is squad_v1/squad_v2);
    the `finetune` command runs `finetune_squad` for these and `finetune.finetune` otherwise."""
    try:
        return str(config.task.name) in squad_data.TASKS
    except (AttributeError, KeyError):
        return False


# --- Config -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SquadTaskConfig:
    """Which SQuAD version, where its files are, and the window (see experiments/squad)."""

    name: str = ""
    data_dir: str = ""
    train_file: str = ""
    dev_file: str = ""
    tfds_data_dir: str = ""
    max_train_examples: int = 0
    max_eval_examples: int = 0
    max_seq_length: int = 384
    doc_stride: int = 128
    max_query_length: int = 64

    def __post_init__(self):
        if not self.name:
            raise ValueError("config.task.name is required (squad_v1 or squad_v2)")
        squad_data.get_task(self.name)  # ValueError naming the task when unknown
        if not self.data_dir:
            raise ValueError("config.task.data_dir is required: a SQuAD data directory or 'tfds'")
        if self.max_seq_length < 4:
            raise ValueError(f"config.task.max_seq_length={self.max_seq_length}: must be >= 4")
        for name in ("doc_stride", "max_query_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"config.task.{name}={getattr(self, name)}: must be >= 1")
        for name in ("max_train_examples", "max_eval_examples"):
            if getattr(self, name) < 0:
                raise ValueError(f"config.task.{name}={getattr(self, name)}: must be >= 0")

    @property
    def spec(self) -> squad_data.SquadTask:
        return squad_data.get_task(self.name)

    def file(self, split: str) -> str:
        """The JSON file of "train" or "validation": the configured name (relative to data_dir
        unless absolute) or the standard one."""
        name = self.train_file if split == "train" else self.dev_file
        if not name:
            return squad_data.default_file(self.name, self.data_dir, split)
        return os.path.join(self.data_dir, name)


@dataclasses.dataclass(frozen=True)
class SquadTrainConfig:
    """Loop lengths; steps follow from the number of training features."""

    batch_size: int = 32
    eval_batch_size: int = 0  # 0: batch_size
    num_epochs: float = 3.0  # 0: no training, only predict and evaluate the dev set
    eval_every_epoch: bool = True
    log_every: int = 50

    def __post_init__(self):
        for name in ("batch_size", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"config.train.{name}={getattr(self, name)}: must be > 0")
        if self.eval_batch_size < 0:
            raise ValueError(f"config.train.eval_batch_size={self.eval_batch_size}: must be >= 0")
        if not self.num_epochs >= 0:
            raise ValueError(f"config.train.num_epochs={self.num_epochs}: must be >= 0")

    @property
    def eval_batch(self) -> int:
        return self.eval_batch_size or self.batch_size


@dataclasses.dataclass(frozen=True)
class SquadEvalConfig:
    """Answer decoding."""

    n_best_size: int = 20
    max_answer_length: int = 30
    null_score_diff_threshold: float = 0.0

    def __post_init__(self):
        for name in ("n_best_size", "max_answer_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"config.eval.{name}={getattr(self, name)}: must be >= 1")


@dataclasses.dataclass(frozen=True)
class SquadConfig:
    """The resolved SQuAD experiment: what library code receives."""

    task: SquadTaskConfig
    model: ft.ModelOverrides
    optim: OptimConfig  # warmup_steps is set from warmup_fraction by optim_for()
    warmup_fraction: float
    train: SquadTrainConfig
    eval: SquadEvalConfig
    mesh: sharding.MeshConfig
    seed: int
    init_checkpoint: str

    @classmethod
    def from_config_dict(cls, config: Any) -> SquadConfig:
        """Validates a ConfigDict (without reading any file); unknown keys are errors."""
        top = {"task", "model", "optim", "train", "eval", "mesh", "seed", "init_checkpoint"}
        unknown = sorted(set(config.keys()) - top)
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}; known: {sorted(top)}")
        optim = dict(config.optim.to_dict())
        warmup_fraction = float(optim.pop("warmup_fraction", 0.1))
        if not 0.0 <= warmup_fraction <= 1.0:
            raise ValueError(f"config.optim.warmup_fraction={warmup_fraction}: must be in [0, 1]")
        if "warmup_steps" in optim:
            raise ValueError("config.optim.warmup_steps: use warmup_fraction for fine-tuning")
        return cls(
            task=from_group(SquadTaskConfig, config.task, "config.task"),
            model=from_group(ft.ModelOverrides, config.model, "config.model"),
            optim=OptimConfig.from_config_dict({**optim, "warmup_steps": 0}),
            warmup_fraction=warmup_fraction,
            train=from_group(SquadTrainConfig, config.train, "config.train"),
            eval=from_group(SquadEvalConfig, config.get("eval", {}), "config.eval"),
            mesh=sharding.MeshConfig.from_config_dict(config.mesh),
            seed=int(config.seed),
            init_checkpoint=str(config.init_checkpoint or ""),
        )

    def optim_for(self, num_steps: int) -> OptimConfig:
        return dataclasses.replace(
            self.optim, warmup_steps=int(round(self.warmup_fraction * num_steps))
        )


# --- Data ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class SquadSplit:
    """The examples of one split and their features."""

    split: str
    examples: list[squad_data.SquadExample]
    features: squad_data.SquadFeatures

    @property
    def size(self) -> int:
        return self.features.size


def read_examples(cfg: SquadTaskConfig, split: str) -> list[squad_data.SquadExample]:
    """One split ("train" or "validation") from the local JSON file or TFDS (data_dir='tfds')."""
    if cfg.data_dir == "tfds":
        return squad_data.load_tfds_split(cfg.name, split, data_dir=cfg.tfds_data_dir or None)
    return squad_data.read_squad_file(cfg.file(split))


def load_split(cfg: SquadTaskConfig, tokenizer: Any, split: str) -> SquadSplit:
    """The (first max_*_examples) examples of a split, featurized for training or evaluation."""
    training = split == "train"
    examples = read_examples(cfg, split)
    limit = cfg.max_train_examples if training else cfg.max_eval_examples
    if limit:
        examples = examples[:limit]
    if not examples:
        raise ValueError(f"{cfg.spec.display_name} {split}: no examples (data_dir={cfg.data_dir})")
    feats = squad_data.featurize(
        examples,
        tokenizer,
        max_seq_length=cfg.max_seq_length,
        doc_stride=cfg.doc_stride,
        max_query_length=cfg.max_query_length,
        is_training=training,
        version_2_with_negative=cfg.spec.version_2_with_negative,
    )
    if training and feats.size == 0:
        raise ValueError(
            f"{cfg.spec.display_name} train: every example was skipped "
            f"({feats.issue_counts()}); see the log"
        )
    return SquadSplit(split, examples, feats)


# --- Train and predict steps -------------------------------------------------------------------


def _masked(logits: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.where(mask > 0, logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    grad_accum_steps: int,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on the batch's weighted mean span loss (rows of weight 0 do not
    count); a non-finite loss or gradient leaves parameters and optimizer state untouched."""
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    denominator = jnp.maximum(jnp.sum(batch[ft.WEIGHT].astype(jnp.float32)), 1e-5)

    def loss_fn(params, micro, key):
        out = model.apply({"params": params}, micro, train=True, rngs={"dropout": key})
        start, end = out["start_logits"], out["end_logits"]  # [B, T]
        w, mask = micro[ft.WEIGHT], micro[INPUT_MASK]
        loss = losses.span_loss(start, end, micro[START_POSITIONS], micro[END_POSITIONS], mask, w)

        def hits(logits, positions):
            return jnp.sum((jnp.argmax(_masked(logits, mask), axis=-1) == positions) * w)

        sums = {
            "loss_sum": loss["loss_sum"],
            "start_correct": hits(start, micro[START_POSITIONS]),
            "end_correct": hits(end, micro[END_POSITIONS]),
        }
        return loss["loss_sum"] / denominator, sums

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    grads, sums = accumulate_gradients(grad_fn, state.params, batch, step_key, grad_accum_steps)
    loss = sums["loss_sum"] / denominator
    new_state, grad_norm, finite = apply_guarded_update(state, grads, loss, tx)
    metrics = {
        "loss": loss,
        "start_accuracy": sums["start_correct"] / denominator,
        "end_accuracy": sums["end_correct"] / denominator,
        "grad_norm": grad_norm,
        "learning_rate": schedule(state.step),
        "finite": finite.astype(jnp.float32),
    }
    return new_state, metrics


def predict_step(
    params: Any, batch: dict[str, jax.Array], *, model: nn.Module
) -> tuple[jax.Array, jax.Array]:
    """(start_logits, end_logits), each [B, T] fp32, without dropout."""
    out = model.apply({"params": params}, batch, train=False)
    return out["start_logits"], out["end_logits"]


def predict_span_logits(
    p_predict, params: Any, feats: dict[str, np.ndarray], *, mesh, rules, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Start and end logits [N, T] of every feature, in order (padding rows removed)."""
    n_rows, seq_len = feats[ft.MODEL_INPUTS[0]].shape
    starts, ends = [np.zeros((0, seq_len), np.float32)], [np.zeros((0, seq_len), np.float32)]
    for rows, n in ft.batch_rows(np.arange(n_rows), batch_size):
        batch = ft._process_rows(ft.take(feats, rows, n, ft.MODEL_INPUTS))
        s, e = jax.device_get(p_predict(params, sharding.global_batch(mesh, rules, batch)))
        starts.append(np.asarray(s)[:n])
        ends.append(np.asarray(e)[:n])
    return np.concatenate(starts), np.concatenate(ends)


def span_eval_loss(
    start_logits: np.ndarray, end_logits: np.ndarray, feats: dict[str, np.ndarray]
) -> float:
    """Mean span loss over the features whose positions are known (nan when none are)."""
    known = feats[START_POSITIONS] >= 0
    if not known.any():
        return float("nan")
    mask = feats[INPUT_MASK][known] > 0

    def ce(logits: np.ndarray, positions: np.ndarray) -> np.ndarray:
        x = np.where(mask, logits[known].astype(np.float64), -np.inf)
        top = x.max(axis=-1, keepdims=True)
        log_z = np.log(np.exp(x - top).sum(axis=-1)) + top[:, 0]
        return log_z - x[np.arange(len(x)), positions]

    loss = 0.5 * (
        ce(start_logits, feats[START_POSITIONS][known])
        + ce(end_logits, feats[END_POSITIONS][known])
    )
    return float(loss.mean())


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


# --- The run ------------------------------------------------------------------------------------


def _write_json(path: str, value: Any, *, indent: int | None = 2) -> None:
    if jax.process_index() != 0:
        return
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=indent, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def _qa_params(loaded: dict[str, Any], source: str, *, keep_head: bool) -> dict[str, Any]:
    """The encoder of a checkpoint (without pooler), plus its span head when `keep_head`."""
    if "bert" not in loaded:
        raise ckpt.CheckpointError(f"{source}: no 'bert' parameters (has {sorted(loaded)})")
    out = {"bert": {k: v for k, v in loaded["bert"].items() if k != "pooler"}}
    if keep_head:
        if "qa_outputs" not in loaded:
            raise ckpt.CheckpointError(
                f"{source}: no 'qa_outputs' span head; with config.train.num_epochs=0 the "
                "checkpoint must be a fine-tuned SQuAD model (a run's WORKDIR/best)"
            )
        out["qa_outputs"] = loaded["qa_outputs"]
    return out


def _issues(data: SquadSplit) -> dict[str, Any]:
    feats = data.features
    return {
        "examples": feats.num_examples,
        "features": feats.size,
        "skipped": feats.issue_counts(),
        "truncated_questions": feats.num_truncated_questions,
        "issues": [dataclasses.asdict(i) for i in feats.issues],
    }


def finetune_squad(
    config_dict: Any, workdir: str, *, devices: Sequence[jax.Device] | None = None
) -> dict[str, Any]:
    """Fine-tunes on SQuAD v1.1 or v2.0 in `workdir` (see the module doc for what it writes).

    `devices` (default: all) is where the (data, fsdp, tensor) mesh of `config.mesh` is laid.
    Returns a dict with `task`, `metrics` (best dev metrics, percent), `score` (dev F1, v2.0
    at the tuned null threshold), `best_epoch`, `best_step`, `best_dir`, `history` (every
    evaluation), `num_steps`, `num_train_examples`, `num_train_features`, `data` (examples,
    features, skipped examples by reason, every issue with its question id, per split),
    `prediction_files` ({name: path}) and `predictions` ({question id: answer}, best epoch).
    """
    cfg = SquadConfig.from_config_dict(config_dict)
    spec = cfg.task.spec
    v2 = spec.version_2_with_negative
    if not cfg.init_checkpoint:
        raise ValueError(
            "config.init_checkpoint is required: a bertjax model dir (`bertjax convert`) or a "
            "pre-training workdir"
        )
    training = cfg.train.num_epochs > 0
    # Checkpoint and tokenizer.
    model_config, loaded, tokenizer = ft.load_checkpoint(cfg)
    loaded = _qa_params(loaded, cfg.init_checkpoint, keep_head=not training)
    seq_len = cfg.task.max_seq_length

    # Data.
    train = load_split(cfg.task, tokenizer, "train") if training else None
    dev = load_split(cfg.task, tokenizer, "validation")
    batch_size, eval_batch = cfg.train.batch_size, cfg.train.eval_batch
    steps_per_epoch = math.ceil(train.size / batch_size) if train else 0
    num_steps = max(1, math.ceil(steps_per_epoch * cfg.train.num_epochs)) if train else 0
    num_epochs = math.ceil(num_steps / steps_per_epoch) if train else 0
    log.info(
        "%s: %s; dev %d examples -> %d features; %d steps (%d per epoch)",
        spec.display_name,
        f"train {len(train.examples)} examples -> {train.size} features"
        if train
        else "no training",
        len(dev.examples),
        dev.size,
        num_steps,
        steps_per_epoch,
    )

    # Mesh, model, optimizer.
    mesh = sharding.make_mesh(cfg.mesh, devices)
    rules = cfg.mesh.rules
    dp = sharding.data_parallel_size(mesh, rules)
    sharding.check_divisible(eval_batch, mesh, rules, what="config.train.eval_batch_size")
    accum = cfg.optim.grad_accum_steps
    if training:
        sharding.check_divisible(batch_size, mesh, rules, what="config.train.batch_size")
        if batch_size % (accum * dp):
            raise ValueError(
                f"config.train.batch_size={batch_size} must split into grad_accum_steps={accum} "
                f"micro-batches, each divisible by the data-parallel size {dp}"
            )

    # The workdir is only written once the inputs are known to be good.
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    _write_json(os.path.join(workdir, "run_config.json"), ft.config_to_json(config_dict))
    _write_json(os.path.join(workdir, ft.RESULTS_FILE), {"task": spec.name, "complete": False})
    if jax.process_index() == 0:  # no stale predictions from an earlier run
        for name in (PREDICTIONS_FILE, NBEST_FILE, NULL_ODDS_FILE, TUNED_PREDICTIONS_FILE):
            if os.path.exists(os.path.join(workdir, name)):
                os.remove(os.path.join(workdir, name))
    log.info("fine-tuning %s from %s; config:\n%s", spec.name, cfg.init_checkpoint, config_dict)

    model = BertForQuestionAnswering(model_config)
    if training:
        optim = cfg.optim_for(num_steps)
        tx = make_optimizer(optim, num_steps)
        schedule = learning_rate_schedule(optim, num_steps)
    else:
        tx, schedule = optax.identity(), optax.constant_schedule(0.0)

    with mesh, nn.logical_axis_rules(rules):
        state, state_sharding, gather = ft.init_from_checkpoint(
            model, tx, seq_len, cfg.seed, loaded, mesh, rules,
            source=cfg.init_checkpoint, head="qa_outputs/",
        )  # fmt: skip
        replicated = NamedSharding(mesh, PartitionSpec())
        del loaded

        p_train = jax.jit(
            functools.partial(
                train_step, model=model, tx=tx, schedule=schedule, grad_accum_steps=accum
            ),
            in_shardings=(state_sharding, None),
            out_shardings=(state_sharding, None),
            donate_argnums=(0,),
        )
        p_predict = jax.jit(
            functools.partial(predict_step, model=model),
            in_shardings=(state_sharding.params, None),
            out_shardings=replicated,
        )

        def evaluate(params) -> tuple[dict[str, float], float, SquadPredictions, dict[str, str]]:
            """(metrics, eval loss, decoded predictions, tuned predictions) on the dev set."""
            starts, ends = predict_span_logits(
                p_predict,
                params,
                dev.features.arrays,
                mesh=mesh,
                rules=rules,
                batch_size=eval_batch,
            )
            preds = decode_predictions(
                dev.examples,
                dev.features.arrays,
                starts,
                ends,
                n_best_size=cfg.eval.n_best_size,
                max_answer_length=cfg.eval.max_answer_length,
                version_2_with_negative=v2,
                null_score_diff_threshold=cfg.eval.null_score_diff_threshold,
            )
            metrics = evaluate_predictions(
                dev.examples,
                preds.predictions,
                version_2_with_negative=v2,
                null_odds=preds.null_odds if v2 else None,
            )
            tuned: dict[str, str] = {}
            if v2:
                threshold, tuned = tune_null_threshold(
                    dev.examples, preds.best_non_null, preds.null_odds
                )
                at = evaluate_predictions(dev.examples, tuned, version_2_with_negative=True)
                metrics.update(
                    tuned_null_threshold=threshold, tuned_exact=at["exact"], tuned_f1=at["f1"]
                )
            return metrics, span_eval_loss(starts, ends, dev.features.arrays), preds, tuned

        def write_predictions(preds: SquadPredictions, tuned: dict[str, str]) -> dict[str, str]:
            files = {PREDICTIONS_FILE: preds.predictions, NBEST_FILE: preds.nbest}
            if v2:
                files.update({NULL_ODDS_FILE: preds.null_odds, TUNED_PREDICTIONS_FILE: tuned})
            paths = {}
            for name, value in files.items():
                paths[name] = os.path.join(workdir, name)
                _write_json(paths[name], value, indent=None if name == NBEST_FILE else 2)
            return paths

        # The loop (with num_epochs=0: one evaluation of the checkpoint as it is).
        writer = MetricWriter(workdir, resume_step=-1)  # a fresh metrics.jsonl
        rng = np.random.default_rng(cfg.seed)
        bar = tqdm(
            total=num_steps,
            desc=f"finetune {spec.name}",
            unit="step",
            disable=jax.process_index() != 0 or not training,
            dynamic_ncols=True,
        )
        history: list[dict[str, Any]] = []
        best: dict[str, Any] | None = None
        best_predictions: dict[str, str] = {}
        files: dict[str, str] = {}
        window: list[dict[str, jax.Array]] = []
        step = 0
        data_report = {"validation": _issues(dev), **({"train": _issues(train)} if train else {})}
        results_base = {
            "task": spec.name,
            "init_checkpoint": cfg.init_checkpoint,
            "num_train_examples": len(train.examples) if train else 0,
            "num_train_features": train.size if train else 0,
            "num_steps": num_steps,
            "data": data_report,
            "config": ft.config_to_json(config_dict),
        }
        for epoch in range(0 if not training else 1, num_epochs + 1):
            if training:
                for rows, n in ft.batch_rows(rng.permutation(train.size), batch_size):
                    if step == num_steps:
                        break
                    batch = ft._process_rows(ft.take(train.features.arrays, rows, n, TRAIN_KEYS))
                    state, metrics = p_train(state, sharding.global_batch(mesh, rules, batch))
                    window.append(metrics)
                    step += 1
                    bar.update(1)
                    if step % cfg.train.log_every == 0 or step == num_steps:
                        summary = ft._summarise(jax.device_get(window))
                        writer.write(step, {"epoch": epoch, **summary})
                        bar.set_postfix({k: f"{v:.4g}" for k, v in summary.items()})
                        window = []
                if not (cfg.train.eval_every_epoch or step == num_steps):
                    continue
            metrics, loss, preds, tuned = evaluate(state.params)
            score = metrics["tuned_f1"] if v2 else metrics["f1"]
            record = {"epoch": epoch, "step": step, "score": score, "metrics": metrics}
            history.append({**record, "loss": loss})
            writer.write(step, {"epoch": epoch, "score": score, **metrics, "loss": loss}, "eval")
            if jax.process_index() == 0:
                shown = " ".join(
                    f"{k}={metrics[k]:.2f}"
                    for k in ("exact_match", "exact", "f1", "tuned_f1", "tuned_null_threshold")
                    if k in metrics
                )
                tqdm.write(f"{spec.name} epoch {epoch} (step {step}): {shown}")
            if best is None or score > best["score"]:
                best = record
                best_predictions = preds.predictions
                files = write_predictions(preds, tuned)
                if training and jax.process_index() == 0:
                    ckpt.save_model_dir(
                        os.path.join(workdir, ft.BEST_DIR),
                        jax.device_get(gather(state.params)),
                        model_config,
                        tokenizer=tokenizer,
                        source=f"finetune:{spec.name}:{cfg.init_checkpoint}",
                        task={"name": spec.name, "kind": "span", "labels": None},
                        overwrite=True,
                    )
            _write_json(
                os.path.join(workdir, ft.RESULTS_FILE),
                _results(results_base, best, history, workdir, training, complete=False),
            )
        bar.close()
        nonfinite = int(state.nonfinite_steps)
        if nonfinite:
            log.warning("%s: %d update(s) skipped for non-finite values", spec.name, nonfinite)
        del state
    writer.close()

    results = _results(results_base, best, history, workdir, training, complete=True)
    results["prediction_files"] = files
    results["nonfinite_steps"] = nonfinite
    _write_json(os.path.join(workdir, ft.RESULTS_FILE), results)
    return {**results, "predictions": best_predictions}


def _results(
    base: dict[str, Any],
    best: dict[str, Any] | None,
    history: list[dict[str, Any]],
    workdir: str,
    training: bool,
    *,
    complete: bool,
) -> dict[str, Any]:
    """As finetune's; an evaluate-only run's best parameters are the checkpoint itself."""
    best_dir = None if training else base["init_checkpoint"]
    return ft._results(base, best, history, workdir, complete=complete, best_dir=best_dir)
