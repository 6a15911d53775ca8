"""Feature extraction: BERT's hidden states as fixed contextual features.

The feature-based use of BERT (google-research/bert's extract_features.py): each input
line is a sentence, or a pair written `text_a ||| text_b`; the output has one JSON object
per line with the tokens (including [CLS] and [SEP]) and, for each requested layer, one
vector per token. Layer -1 is the last transformer layer, -2 the one before, and so on
(the embedding output is not a layer); non-negative indexes count from the first layer.
Values are rounded to 6 decimals. Two layouts (`output_format`), layers in the order asked:

    bertjax  {"line": 0, "tokens": ["[CLS]", ...], "layers": {"-1": [[D floats] per token]}}
    google   google-research/bert's own, key names included ("linex_index" as spelt there):
             {"linex_index": 0, "features": [{"token": "[CLS]",
                 "layers": [{"index": -1, "values": [D floats]}, ...]}, ...]}
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import jax
import numpy as np
from tqdm import tqdm

from bertjax import checkpoint as ckpt
from bertjax import storage
from bertjax.model import BertModel
from data_pipelines import corpus
from data_pipelines.features import INPUT_IDS, INPUT_MASK, SEGMENT_IDS

# google-research/bert's extract_features.py: the pattern is matched against the stripped
# line, and the greedy first group makes the *last* " ||| " the boundary.
_PAIR = re.compile(r"^(.*) \|\|\| (.*)$")


def split_pair(line: str) -> tuple[str, str | None]:
    """(text_a, text_b or None) of a stripped line, split as google-research/bert does.

    The boundary is the last " ||| " (spaces included); without one, or with the
    separator only at an end of the line (stripped away), the line is a single text.
    """
    match = _PAIR.match(line)
    return (match.group(1), match.group(2)) if match else (line, None)


def read_examples(
    path: str, *, errors: Literal["strict", "replace", "ignore"] = "strict"
) -> Iterator[tuple[int, str, str | None]]:
    """(line index from 0, text_a, text_b or None) for each line of a UTF-8 text file.

    Lines are read by `data_pipelines.corpus.iter_lines`: stripped, decoded under the
    `errors` policy, a `CorpusError` naming ``file:line`` for invalid UTF-8 under "strict".
    Blank lines are examples too (an empty text_a), as in google-research/bert.
    """
    for lineno, line in corpus.iter_lines(path, errors=errors):
        yield (lineno - 1, *split_pair(line))


OUTPUT_FORMATS = ("bertjax", "google")


def _record(
    output_format: str, line: int, tokens: Sequence[str], layers: Sequence[int], values: Any
) -> dict[str, Any]:
    """One output line: `values` [len(layers), len(tokens), D] in the layers' order."""
    # Rounded in float64, as google-research/bert's round(float(x), 6): a float32 times 1e6 is
    # exact in float64, so this is the same number, written in its short form (0.123457).
    rounded = np.round(np.asarray(values, np.float64), 6)  # [l, n, D]
    if output_format == "google":
        features = [
            {
                "token": token,
                "layers": [
                    {"index": layer, "values": rounded[li, ti].tolist()}
                    for li, layer in enumerate(layers)
                ],
            }
            for ti, token in enumerate(tokens)
        ]
        return {"linex_index": line, "features": features}
    return {
        "line": line,
        "tokens": list(tokens),
        "layers": {str(layer): rounded[li].tolist() for li, layer in enumerate(layers)},
    }


def _layer_indexes(layers: Sequence[int], num_layers: int) -> list[int]:
    if not layers:
        raise ValueError("--layers is empty: give one or more layers, e.g. -1,-2,-3,-4")
    out = []
    for layer in layers:
        if not -num_layers <= layer < num_layers:
            raise ValueError(
                f"--layers: layer {layer} is out of range for a {num_layers}-layer model "
                f"(valid: {-num_layers}..{num_layers - 1})"
            )
        out.append(layer)
    return out


def extract_features(
    checkpoint: str,
    input_path: str,
    output_path: str,
    *,
    layers: Sequence[int] = (-1, -2, -3, -4),
    max_seq_length: int = 128,
    batch_size: int = 32,
    overwrite: bool = False,
    input_errors: Literal["strict", "replace", "ignore"] = "strict",
    output_format: Literal["bertjax", "google"] = "bertjax",
) -> int:
    """Writes one JSON line of features for every line of input_path, in the layout
    `output_format` names (module doc); returns the number of lines.

    `input_errors` is the UTF-8 decoding policy of the input (see `read_examples`).
    """
    from data_pipelines.tokenizers import encode_pair

    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"--format={output_format}: use one of {', '.join(OUTPUT_FORMATS)}")
    if batch_size < 1:
        raise ValueError(f"--batch_size={batch_size}: must be >= 1")

    def real(p: str) -> str:
        return storage.abspath(p) if storage.is_remote(p) else os.path.realpath(p)

    if real(output_path) == real(input_path):
        raise FileExistsError(f"{output_path}: the output would replace the input; choose another")
    if storage.isdir(output_path):
        raise FileExistsError(f"{output_path}: is a directory; --output takes a file path")
    if storage.exists(output_path) and not overwrite:
        raise FileExistsError(f"{output_path}: already exists; pass --overwrite to replace it")
    if not storage.isfile(input_path):
        raise FileNotFoundError(f"{input_path}: input file not found")
    # Every id the tokenizer can produce has an embedding row (VocabMismatchError otherwise).
    config, params, _, tokenizer = ckpt.load_model_and_tokenizer(checkpoint)
    if max_seq_length > config.max_position_embeddings:
        raise ValueError(
            f"--max_seq_length={max_seq_length} exceeds the model's max_position_embeddings="
            f"{config.max_position_embeddings}"
        )
    if max_seq_length < 3:
        raise ValueError(f"--max_seq_length={max_seq_length}: must leave room for [CLS], [SEP]")
    layer_ids = _layer_indexes(layers, config.num_layers)
    model = BertModel(config, add_pooler=False)
    encoder_params = {"params": {k: v for k, v in params["bert"].items() if k != "pooler"}}

    @jax.jit
    def hidden(batch):
        out = model.apply(encoder_params, batch, train=False, output_hidden_states=True)
        stacked = jax.numpy.stack(out["hidden_states"][1:])  # [layers, B, T, D]
        return stacked[np.array(layer_ids)].astype(jax.numpy.float32)

    count = 0
    # The lines appear at output_path only once all are written (`storage.atomic_open`).
    with storage.local_copy(input_path) as local_input:
        with storage.atomic_open(output_path, "w", encoding="utf-8") as out:
            pending: list[tuple[int, object]] = []

            def flush():
                rows = [enc for _, enc in pending]
                pad = batch_size - len(rows)
                ids = np.stack([r.input_ids for r in rows] + [rows[0].input_ids] * pad)
                batch = {
                    INPUT_IDS: ids,
                    INPUT_MASK: np.stack([r.input_mask for r in rows] + [rows[0].input_mask] * pad),
                    SEGMENT_IDS: np.stack(
                        [r.segment_ids for r in rows] + [rows[0].segment_ids] * pad
                    ),
                }
                values = np.asarray(hidden(batch))  # [layers, B, T, D]
                for j, (line, enc) in enumerate(pending):
                    n = len(enc.tokens)
                    record = _record(output_format, line, enc.tokens, layer_ids, values[:, j, :n])
                    out.write(json.dumps(record) + "\n")
                pending.clear()

            for line, a, b in tqdm(
                read_examples(local_input, errors=input_errors),
                total=corpus.count_lines(local_input),
                desc="features",
                unit=" lines",
            ):
                pending.append((line, encode_pair(tokenizer, a, b, max_seq_length)))
                count += 1
                if len(pending) == batch_size:
                    flush()
            if pending:
                flush()
    return count
