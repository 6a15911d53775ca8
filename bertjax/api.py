"""The Python API: a checkpoint in a few lines, as transformers' AutoModel / AutoTokenizer.

    import bertjax

    bert = bertjax.load("ckpt/minilm")        # see `load` for what a path may be
    batch = bert.encode(["A cat sat.", "Hello"])  # {"input_ids": [N, T], ...} numpy int32
    vectors = bert.embed(["A cat sat."], pooling="mean")      # [N, D] float32
    states = bert.hidden_states(["A cat sat."])               # [L + 1, N, T, D] float32
    bert.fill_mask("The cat [MASK] on the mat.")              # checkpoints with an MLM head
    bert.predict(["A fine film."])                            # fine-tuned classifiers, NER

Dimension letters: N texts, T tokens (the longest encoded text of the call, [CLS] and [SEP]
included), D hidden size, L layers. Everything runs on JAX's default device, in inference mode
(no dropout), in the checkpoint's compute dtype (`config.dtype`); outputs are fp32 numpy.

Texts are encoded as google-research/bert's `convert_single_example` does
(`data_pipelines.tokenizers.encode_pair`: [CLS] a [SEP] (b [SEP]), the pair truncated by its
`_truncate_seq_pair` rule) to at most `max_seq_length` tokens. The model runs on batches of
`batch_size` texts of similar length (each padded to a multiple of 32 tokens, so few shapes
compile); a text's outputs do not depend on the other texts of the call, and the values at
padding positions (input_mask 0) are returned as zeros.

Loading reuses the checkpoint readers of the commands (`checkpoint.load_model_and_tokenizer`,
`convert_hf.read_hf`), so every check they make (a tokenizer whose ids all have an embedding row,
task metadata that fits the head) holds here too; their errors are ValueErrors naming the file.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bertjax import checkpoint as ckpt
from bertjax import storage
from bertjax.config import ModelConfig
from data_pipelines.features import INPUT_IDS, INPUT_MASK, SEGMENT_IDS

BATCH_KEYS = (INPUT_IDS, INPUT_MASK, SEGMENT_IDS)
POOLINGS = ("cls", "mean")
_WIDTH_MULTIPLE = 32  # padded batch lengths are multiples of this: few compiled shapes
_SEQUENCE_KINDS = ("classification", "multi_label_classification", "regression")


def load(path: str | os.PathLike, *, max_seq_length: int = 512, batch_size: int = 32) -> Bert:
    """A checkpoint ready to use from Python, with its config, parameters and tokenizer.

    `path` (local, or a gs:// URI) is one of
      - a bertjax model directory (`bertjax convert --out`, a fine-tuning run's WORKDIR/best);
      - a pre-training workdir (its newest checkpoint) or a fine-tuning workdir (its best/);
      - a Hugging Face BERT directory (config.json, model.safetensors or pytorch_model.bin,
        vocab.txt or tokenizer.json), as `save_pretrained` writes it or as a Hub cache holds it:
        a snapshot directory (.../models--org--name/snapshots/<revision>) or the repository
        directory above it (.../models--org--name, read at the revision refs/main names);
      - where no such path exists, a Hugging Face Hub model id ("bert-base-uncased",
        "org/name"), fetched as `bertjax convert --from hf --src ID` fetches it
        (`convert_hf.resolve_hf_source`: the local Hub cache, downloaded when the network allows).

    `max_seq_length` caps the tokens per text (cut to the model's max_position_embeddings);
    `batch_size` is the number of texts per forward pass.

    Raises FileNotFoundError (one line) when `path` is none of the above or a workdir with
    no finished checkpoint yet (`checkpoint.NoCheckpointError`, also a CheckpointError), and
    ValueError (CheckpointError, ConversionError, VocabMismatchError) naming the file when
    what is there cannot be used.
    """
    path = os.fspath(path)
    if max_seq_length < 2 or batch_size < 1:
        raise ValueError(
            f"max_seq_length={max_seq_length} must be >= 2 and batch_size={batch_size} >= 1"
        )
    model_dir = _bertjax_dir(path)
    if model_dir is not None:
        config, params, meta, tokenizer = ckpt.load_model_and_tokenizer(model_dir)
        source = model_dir
    else:
        config, params, meta, tokenizer = _load_hf(_hf_dir(path))
        source = path
    return Bert(
        config,
        params,
        tokenizer,
        meta=meta,
        path=source,
        max_seq_length=max_seq_length,
        batch_size=batch_size,
    )


def _quote(value: Any, limit: int = 60) -> str:
    """`value` for an error message: repr of a text cut to its first `limit` characters + '…'
    (a long input is not repeated whole)."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + "…"
    return repr(value)


def _bertjax_dir(path: str) -> str | None:
    """The bertjax directory to read for `path` (itself, or a fine-tuning workdir's best/)."""
    if storage.isfile(storage.join(path, ckpt.CONFIG_FILE)):
        return path
    best = storage.join(path, "best")
    if storage.isfile(storage.join(best, ckpt.CONFIG_FILE)):
        return best
    return None


def _hf_dir(path: str) -> str:
    """The Hugging Face checkpoint directory `path` names (`convert_hf.resolve_hf_source`: the
    path itself, a Hub cache repository's snapshot at refs/main, or a Hub model id's snapshot),
    checked to hold a config.json."""
    from bertjax import convert_hf

    resolved = convert_hf.resolve_hf_source(path)
    if storage.isfile(storage.join(resolved, "config.json")):
        return resolved
    raise FileNotFoundError(
        f"{path}: not a checkpoint (no {ckpt.CONFIG_FILE}, best/{ckpt.CONFIG_FILE}, Hugging Face "
        "config.json or Hub cache snapshots/)"
    )


def _load_hf(path: str) -> tuple[ModelConfig, dict[str, Any], dict[str, Any], Any]:
    """(config, params, metadata, tokenizer) of a Hugging Face BERT directory, read as
    `bertjax convert --from hf` reads it, in memory."""
    from bertjax import convert, convert_hf

    with storage.local_copy(path) as local, tempfile.TemporaryDirectory() as scratch:
        config, params, task = convert_hf.read_hf(local)
        # The tokenizer is built in memory; the scratch vocab.txt (tokenizer.json only) can go.
        tokenizer = convert.tokenizer_or_none(local, scratch)
    if tokenizer is None:
        raise ckpt.CheckpointError(f"{path}: no tokenizer (vocab.txt or tokenizer.json)")
    vocab = "vocab.txt" if storage.isfile(storage.join(path, "vocab.txt")) else "tokenizer.json"
    ckpt.check_vocab_fits(
        tokenizer.vocab_size,
        config.vocab_size,
        vocab_source=storage.join(path, vocab),
        model_source=storage.join(path, "config.json"),
    )
    meta = {"source": f"hf:{storage.abspath(path)}", "heads": ckpt.head_groups(params)}
    if task is not None:
        meta["task"] = task
    return config, params, meta, tokenizer


# The jitted forward passes, shared by every `Bert` of the same shape (compiled once).


def _encoder_params(params: dict[str, Any]) -> dict[str, Any]:
    return {name: v for name, v in params["bert"].items() if name != "pooler"}


@functools.lru_cache(maxsize=8)
def _jit_hidden(config: ModelConfig):
    """(params, batch, layer indexes [l]) -> hidden states [B, l, T, D], fp32, 0 on padding."""
    from bertjax.model import BertModel

    encoder = BertModel(config, add_pooler=False)

    def hidden(params, batch, layers):
        out = encoder.apply(
            {"params": _encoder_params(params)}, batch, train=False, output_hidden_states=True
        )
        states = jnp.stack(out["hidden_states"], axis=1)[:, layers]  # [B, l, T, D]
        mask = batch[INPUT_MASK][:, None, :, None].astype(jnp.float32)
        return states.astype(jnp.float32) * mask  # padding positions are zeros

    return jax.jit(hidden)


@functools.lru_cache(maxsize=8)
def _jit_mlm(config: ModelConfig, vocab_size: int):
    """(params, batch, positions [B, P], k) -> the k most probable of the first vocab_size
    tokens at each position: (probabilities, ids), each [B, P, k]."""
    from bertjax.model import BertModel, MaskedLMHead, gather_positions

    encoder, head = BertModel(config, add_pooler=False), MaskedLMHead(config)

    def top(params, batch, positions, k):
        out = encoder.apply({"params": _encoder_params(params)}, batch, train=False)
        table = params["bert"]["embeddings"]["word_embeddings"]["embedding"]  # [V, D]
        logits = head.apply(
            {"params": params["cls"]["predictions"]},
            gather_positions(out["sequence_output"], positions),
            table,
        )  # [B, P, V] fp32
        probs = jax.nn.softmax(logits, axis=-1)
        # Rows past the tokenizer's vocab (a padded table) have no token to name.
        return jax.lax.top_k(probs[..., :vocab_size], k)

    return jax.jit(top, static_argnums=3)


@functools.lru_cache(maxsize=8)
def _jit_classifier(config: ModelConfig, num_labels: int):
    """(params, batch) -> the sequence classifier's logits [B, L], fp32."""
    from bertjax.model import BertForSequenceClassification

    model = BertForSequenceClassification(config, num_labels)

    def logits(params, batch):
        p = {"bert": params["bert"], "classifier": params["classifier"]}
        return model.apply({"params": p}, batch, train=False)["logits"]

    return jax.jit(logits)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _as_texts(texts: str | Sequence[str], what: str = "texts") -> list[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"{what} must be a str or a list of str; got an element {_quote(bad)}")
    return texts


class Bert:
    """A loaded checkpoint: `config` (ModelConfig), `params` (the parameter tree, numpy, as
    in the model directory), `tokenizer` (data_pipelines.tokenizers.Tokenizer), `task` (the
    downstream head's {"name", "kind", "labels"}, None without one), `heads` (the parts the
    parameters hold: pooler, mlm, nsp, classifier, qa_outputs) and `path`.

    Made by `load`; the methods are safe to call from one thread at a time.
    """

    def __init__(
        self,
        config: ModelConfig,
        params: dict[str, Any],
        tokenizer: Any,
        *,
        meta: dict[str, Any] | None = None,
        path: str = "",
        max_seq_length: int = 512,
        batch_size: int = 32,
    ):
        self.config = config
        self.params = params
        self.tokenizer = tokenizer
        self.meta = dict(meta or {})
        self.task = self.meta.get("task")
        self.heads = ckpt.head_groups(params)
        self.path = path
        self.max_seq_length = min(max_seq_length, config.max_position_embeddings)
        self.batch_size = batch_size
        self._device_params = jax.device_put(params)

    def __repr__(self) -> str:
        c = self.config
        task = f", task={self.task['kind']}:{self.task['name'] or '?'}" if self.task else ""
        return (
            f"Bert({self.path!r}, layers={c.num_layers}, hidden={c.hidden_size}, "
            f"vocab={self.tokenizer.vocab_size}, heads={self.heads}{task})"
        )

    # --- Text -> batch ------------------------------------------------------------------------

    def encode(
        self, texts: str | Sequence[str], pairs: Sequence[str | None] | None = None
    ) -> dict[str, np.ndarray]:
        """The model's input batch for N texts (and optional second segments), as numpy int32:

            input_ids    [N, T]  [CLS] text [SEP] (pair [SEP]) then [PAD] ids
            input_mask   [N, T]  1 on real tokens, 0 on padding (HF: attention_mask)
            segment_ids  [N, T]  0 for [CLS] text [SEP], 1 for pair [SEP], 0 on padding
                                 (HF: token_type_ids)

        T is the longest encoded text, at most `max_seq_length`; longer texts and pairs are
        truncated as google-research/bert's `_truncate_seq_pair` truncates them. `pairs` has
        one entry per text (None or "" for a single text). The ids are those of transformers'
        BertTokenizer with `padding=True`, except that an empty pair adds no second [SEP] (as
        google-research/bert; transformers adds one).

        Raises TypeError for texts that are not strings, ValueError when `pairs` has another
        length or the model cannot embed a second segment (type_vocab_size 1).
        """
        from data_pipelines.tokenizers import encode_pair

        texts = _as_texts(texts)
        if pairs is None:
            seconds: list[str | None] = [None] * len(texts)
        else:
            seconds = list(pairs)
            bad = next((p for p in seconds if p is not None and not isinstance(p, str)), None)
            if bad is not None:
                raise TypeError(f"pairs must hold a str or None per text; got {_quote(bad)}")
            if len(seconds) != len(texts):
                raise ValueError(f"{len(seconds)} pairs for {len(texts)} texts")
            if any(seconds):
                ckpt.check_sequence_fits(
                    self.config,
                    max_seq_length=self.max_seq_length,
                    num_segments=2,
                    what=f"max_seq_length={self.max_seq_length}",
                    model_source=self.path or "the model",
                )
        rows = [
            encode_pair(self.tokenizer, a, b, self.max_seq_length)
            for a, b in zip(texts, seconds, strict=True)
        ]
        width = max((len(r.tokens) for r in rows), default=0)
        return {
            key: np.stack([getattr(r, key)[:width] for r in rows])
            if rows
            else np.zeros((0, 0), np.int32)
            for key in BATCH_KEYS
        }

    def tokens(self, texts: str | Sequence[str]) -> list[list[str]]:
        """The pieces of each encoded text, [CLS] and [SEP] included (the real positions of
        `encode(texts)["input_ids"]`)."""
        batch = self.encode(texts)
        return [
            self.tokenizer.convert_ids_to_tokens(ids[mask > 0])
            for ids, mask in zip(batch[INPUT_IDS], batch[INPUT_MASK], strict=True)
        ]

    # --- Batches of similar length through the model -----------------------------------------

    def _chunks(self, batch: dict[str, np.ndarray]) -> Iterator[tuple[np.ndarray, dict, int, int]]:
        """(row indexes, device batch, rows used, width): the rows in length order, by
        batch_size; each chunk padded to a multiple of 32 tokens and to the rows of the first
        chunk, a power of two (copies of its first row), so a call compiles few shapes."""
        lengths = batch[INPUT_MASK].sum(axis=1)
        order = np.argsort(-lengths, kind="stable")
        pads = {INPUT_IDS: self.tokenizer.pad_id, INPUT_MASK: 0, SEGMENT_IDS: 0}
        rows = min(1 << max(len(order) - 1, 0).bit_length(), self.batch_size)
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo : lo + self.batch_size]
            longest = max(int(lengths[idx].max()), 1)
            width = min(_round_up(longest, _WIDTH_MULTIPLE), self.max_seq_length)
            chunk = {}
            for key in BATCH_KEYS:
                x = batch[key][idx, :width]
                x = np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=pads[key])
                chunk[key] = np.concatenate([x, np.repeat(x[:1], rows - len(idx), axis=0)])
            yield idx, chunk, len(idx), width

    def _layer_indexes(self, layers: int | Sequence[int]) -> tuple[int, ...]:
        count = self.config.num_layers + 1
        chosen = [layers] if isinstance(layers, (int, np.integer)) else list(layers)
        if not chosen:
            raise ValueError("layers is empty: give one or more hidden-state indexes, e.g. -1")
        out = []
        for i in chosen:
            if not -count <= int(i) < count:
                raise ValueError(
                    f"layer {i} is out of range: the hidden states are indexes 0..{count - 1} "
                    f"(0 the embeddings, {count - 1} or -1 the last layer), or -{count}..-1"
                )
            out.append(int(i) % count)
        return tuple(out)

    def hidden_states(
        self,
        texts: str | Sequence[str],
        pairs: Sequence[str | None] | None = None,
        *,
        layers: int | Sequence[int] | None = None,
    ) -> np.ndarray:
        """The encoder's hidden states, float32 [L + 1, N, T, D] (or [len(layers), N, T, D]).

        Index 0 is the embedding output (word + position + token type, LayerNorm) and index i
        the output of layer i, as transformers' `output_hidden_states=True`; -1 is the last
        layer (`sequence_output`). T and the positions are those of `encode(texts, pairs)`;
        values at padding positions are 0. `layers` picks some of the L + 1 indexes.

        Raises ValueError for a layer index outside -(L + 1)..L.
        """
        batch = self.encode(texts, pairs)
        chosen = self._layer_indexes(
            range(self.config.num_layers + 1) if layers is None else layers
        )
        n, t = batch[INPUT_IDS].shape
        out = np.zeros((len(chosen), n, t, self.config.hidden_size), np.float32)
        hidden = _jit_hidden(self.config)
        for idx, chunk, m, width in self._chunks(batch):
            h = np.asarray(hidden(self._device_params, chunk, np.array(chosen)))[:m]  # [m, l, W, D]
            w = min(width, t)
            out[:, idx, :w] = h[:, :, :w].transpose(1, 0, 2, 3)
        return out

    def embed(
        self,
        texts: str | Sequence[str],
        pairs: Sequence[str | None] | None = None,
        *,
        pooling: str = "cls",
        layers: int | Sequence[int] = -1,
        normalize: bool = False,
    ) -> np.ndarray:
        """One vector per text, float32 [N, D].

        pooling="cls" takes the [CLS] position (the vector BERT's classifier and NSP heads read,
        before the pooler's dense + tanh); "mean" averages the real tokens ([CLS] and [SEP]
        included, padding excluded), as sentence-transformers' mean pooling. `layers` (hidden-
        state indexes as in `hidden_states`: -1 the last layer, 0 the embeddings) are averaged
        before pooling, e.g. (-1, -2, -3, -4). `normalize` scales each vector to unit L2 norm
        (sentence-transformers' Normalize: all-MiniLM-L6-v2 is pooling="mean", normalize=True).

        Raises ValueError for an unknown pooling or a layer index out of range.
        """
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}")
        batch = self.encode(texts, pairs)
        chosen = self._layer_indexes(layers)
        out = np.zeros((batch[INPUT_IDS].shape[0], self.config.hidden_size), np.float32)
        hidden = _jit_hidden(self.config)
        for idx, chunk, m, _ in self._chunks(batch):
            h = np.asarray(hidden(self._device_params, chunk, np.array(chosen)))[:m]
            h = h.mean(axis=1)  # [m, W, D]: the chosen layers averaged
            if pooling == "cls":
                out[idx] = h[:, 0]
            else:
                mask = chunk[INPUT_MASK][:m, :, None].astype(np.float32)  # [m, W, 1]
                out[idx] = h.sum(axis=1) / np.maximum(mask.sum(axis=1), 1.0)
        if normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    # --- Masked-LM head -----------------------------------------------------------------------

    def fill_mask(self, text: str | Sequence[str], top_k: int = 5) -> list:
        """The MLM head's top_k tokens for each [MASK] of `text`, as transformers'
        "fill-mask" pipeline returns them: a list of {"score", "token", "token_str",
        "sequence"} dicts, best first (score: the softmax probability over the whole vocabulary;
        token: the id; token_str: `tokenizer.decode([token])`; sequence: the text's ids with
        the token in place of the [MASK], decoded without special tokens; with them when the
        text has several [MASK]s, as transformers does). A text with several [MASK]s gives one
        such list per [MASK], in order; a list of texts gives a list of those.

        The MLM head is BERT's masked-LM output layer (cls/predictions: dense + GELU +
        LayerNorm, logits against the tied word embeddings plus a bias; the paper, section 3.1,
        Task #1; google-research/bert's `get_masked_lm_output`).

        Raises ValueError when the checkpoint has no MLM head, a text has no [MASK] (or loses
        it to truncation), or top_k is not positive.
        """
        if "mlm" not in self.heads:
            raise ValueError(
                f"{self.path}: the checkpoint has no masked-LM head (it holds {self.heads}); "
                "fill_mask needs a pre-trained BERT with its cls/predictions"
            )
        if top_k < 1:
            raise ValueError(f"top_k={top_k} must be >= 1")
        texts = _as_texts(text)
        if not texts:
            return []
        top_k = min(top_k, self.tokenizer.vocab_size)
        batch = self.encode(texts)
        mask_id = self.tokenizer.mask_id
        positions = [np.flatnonzero(ids == mask_id) for ids in batch[INPUT_IDS]]
        for t, p in zip(texts, positions, strict=True):
            if not len(p):
                mask = self.tokenizer.convert_ids_to_tokens([mask_id])[0]
                raise ValueError(f"no {mask} token in {_quote(t)} (within max_seq_length)")
        width = max(len(p) for p in positions)
        results: list[Any] = [None] * len(texts)
        top = _jit_mlm(self.config, self.tokenizer.vocab_size)
        for idx, chunk, _, _ in self._chunks(batch):
            pos = np.zeros((len(chunk[INPUT_IDS]), width), np.int32)
            for j, i in enumerate(idx):
                pos[j, : len(positions[i])] = positions[i]
            scores, ids = (np.asarray(x) for x in top(self._device_params, chunk, pos, top_k))
            for j, i in enumerate(idx):
                results[i] = self._fill_results(batch, i, positions[i], scores[j], ids[j])
        return results[0] if isinstance(text, str) else results

    def _fill_results(self, batch, row, positions, scores, ids) -> list:
        tok = self.tokenizer
        real = batch[INPUT_IDS][row][batch[INPUT_MASK][row] > 0]
        single = len(positions) == 1
        out = []
        for p, position in enumerate(positions):
            proposals = []
            for score, token in zip(scores[p].tolist(), ids[p].tolist(), strict=True):
                filled = real.copy()
                filled[position] = token
                proposals.append(
                    {
                        "score": float(score),
                        "token": int(token),
                        "token_str": tok.decode([token], skip_special_tokens=False),
                        "sequence": tok.decode(filled.tolist(), skip_special_tokens=single),
                    }
                )
            out.append(proposals)
        return out[0] if single else out

    # --- Fine-tuned heads ---------------------------------------------------------------------

    @property
    def labels(self) -> list[str]:
        """The class names of the downstream head, in class-id order (LABEL_i when the
        checkpoint names none); [] without a classifier."""
        if not self.task or self.task["kind"] == "span":
            return []
        named = self.task.get("labels")
        return list(named) if named else [f"LABEL_{i}" for i in range(self.num_labels)]

    @property
    def num_labels(self) -> int:
        return ckpt.head_outputs(self.params, "classifier") or 0

    def logits(
        self, texts: str | Sequence[str], pairs: Sequence[str | None] | None = None
    ) -> np.ndarray:
        """The sequence classifier's logits, float32 [N, num_labels] (regression: [N, 1], the
        predicted value). Raises ValueError without a sequence-level head."""
        self._require_kind(_SEQUENCE_KINDS)
        batch = self.encode(texts, pairs)
        out = np.zeros((batch[INPUT_IDS].shape[0], self.num_labels), np.float32)
        classifier = _jit_classifier(self.config, self.num_labels)
        for idx, chunk, m, _ in self._chunks(batch):
            out[idx] = np.asarray(classifier(self._device_params, chunk))[:m]
        return out

    def _require_kind(self, kinds: Sequence[str]) -> str:
        kind = (self.task or {}).get("kind")
        if kind not in kinds:
            have = f"task kind {kind!r}" if kind else f"no downstream head ({self.heads})"
            raise ValueError(
                f"{self.path}: has {have}; this needs a fine-tuned model of kind "
                f"{' or '.join(map(repr, kinds))}"
            )
        return kind

    def predict(
        self,
        texts: str | Sequence[str],
        pairs: Sequence[str | None] | None = None,
        *,
        top_k: int | None = 1,
        aggregation: str = "first",
    ) -> list:
        """The fine-tuned head's predictions: a list with one entry per text (a str is one text).

        - classification (GLUE and the like): {"label", "score"} of the best class, the score
          a softmax probability, as transformers' "text-classification" pipeline;
          top_k=None (or k) gives the list of all (or the k best) classes, best first.
          multi_label_classification scores each class with a sigmoid; regression (STS-B)
          gives {"label", "score": the predicted value}.
        - token_classification (NER: task metadata with IOB2 labels, bertjax/ner.py): the
          entities of the text, a list of {"type", "start", "end", "text", "score"} with
          character spans [start, end) in the text, as `bertjax ner` prints them (`pairs`
          not taken); `aggregation` is its --aggregation: "first" (each word's tag at its
          first piece) or "simple" (every piece's tag), as transformers' strategies of those
          names (`ner.Tagger`).

        Labels are the task's class names (bertjax_config.json "task": {"name", "kind",
        "labels"}; a Hugging Face model's id2label). Raises ValueError for a checkpoint without
        a downstream head or with one of another kind (span / question answering).
        """
        kind = self._require_kind((*_SEQUENCE_KINDS, "token_classification"))
        if kind == "token_classification":
            if pairs is not None:
                raise ValueError("predict: an NER model tags single texts; pairs is not taken")
            return self._entities(_as_texts(texts), aggregation)
        logits = self.logits(texts, pairs)
        labels = self.labels
        if kind == "regression":
            out = [{"label": labels[0], "score": float(v[0])} for v in logits]
        else:
            if kind == "classification":
                scores = np.asarray(jax.nn.softmax(logits, axis=-1))
            else:
                scores = 1.0 / (1.0 + np.exp(-logits))
            k = len(labels) if top_k is None else max(1, min(top_k, len(labels)))
            out = []
            for row in scores:
                best = np.argsort(-row, kind="stable")[:k]
                ranked = [{"label": labels[i], "score": float(row[i])} for i in best]
                out.append(ranked[0] if top_k == 1 else ranked)
        return out

    @functools.cached_property
    def _tagger(self):
        from bertjax import ner

        if self.path and ckpt.is_model_dir(self.path):
            return ner.Tagger(self.path, max_seq_length=self.max_seq_length)
        # ner.Tagger reads a model directory; an imported (Hugging Face) model is staged as one
        # in a temporary directory, which the Tagger no longer needs once built.
        with tempfile.TemporaryDirectory(prefix="bertjax-api-") as tmp:
            staged = ckpt.save_model_dir(
                os.path.join(tmp, "model"),
                self.params,
                self.config,
                tokenizer=self.tokenizer,
                source=str(self.meta.get("source", self.path)),
                task=self.task,
            )
            return ner.Tagger(staged, max_seq_length=self.max_seq_length)

    def _entities(self, texts: list[str], aggregation: str) -> list[list[dict[str, Any]]]:
        import dataclasses

        found = self._tagger(texts, batch_size=self.batch_size, aggregation=aggregation)
        return [[dataclasses.asdict(e) for e in entities] for entities in found]
