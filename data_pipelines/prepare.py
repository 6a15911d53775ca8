"""A text corpus prepared for pre-training in one call: held-out split, vocab, examples.

`bertjax train` with `config.data.corpus` (and no prepared shards) calls `prepare_corpus` once,
on process 0, into WORKDIR/data:

    OUT/split_train.txt, OUT/split_eval.txt   the documents, every n-th one held out
    OUT/vocab/                                a WordPiece vocab trained on the training split
                                              (unless one is given)
    OUT/train/, OUT/eval/                     MLM + NSP examples (`create_pretraining_data`)

Plain arguments, no config object: the caller (bertjax.pretrain) resolves its config first.
Same arguments, same bytes out.
"""

from __future__ import annotations

import logging
import os

from data_pipelines import corpus, corpus_sources
from data_pipelines.pretraining_data import create_pretraining_data
from data_pipelines.tokenizers import load_tokenizer
from data_pipelines.vocab import train_vocab

log = logging.getLogger(__name__)

# Seeds of the example writer, offset from the run's seed (train and held-out split).
TRAIN_SEED_OFFSET = 12345
EVAL_SEED_OFFSET = 54321


def prepare_corpus(
    source: str,
    out: str,
    *,
    vocab: str = "",
    vocab_size: int,
    do_lower_case: bool,
    eval_fraction: float,
    max_seq_length: int,
    max_predictions_per_seq: int,
    masked_lm_prob: float,
    dupe_factor: int,
    short_seq_prob: float,
    do_whole_word_mask: bool,
    dynamic_masking: bool,
    seed: int,
) -> tuple[str, str]:
    """Prepares `source` ('embedded' or a glob of BERT-format text) under `out`; returns the
    (train, eval) example directories. The eval one exists only when eval_fraction > 0.

    `vocab`: a vocab to use ('' trains a `vocab_size` WordPiece vocab into OUT/vocab, or
    reuses the one there).
    """
    os.makedirs(out, exist_ok=True)
    train_dir, eval_dir = os.path.join(out, "train"), os.path.join(out, "eval")
    if source == "embedded":
        files = [os.path.join(out, "embedded_corpus.txt")]
        if not os.path.isfile(files[0]):
            log.info("writing the embedded corpus (Python's documentation) to %s", files[0])
            corpus_sources.write_embedded_corpus(files[0])
    else:
        files = corpus.expand_input_files(source)
    # Hold out every n-th document for evaluation.
    split_train, split_eval = (
        os.path.join(out, "split_train.txt"),
        os.path.join(out, "split_eval.txt"),
    )
    every = round(1 / eval_fraction) if eval_fraction > 0 else 0
    docs = list(enumerate(corpus.iter_documents(files)))
    corpus.write_documents((d for i, d in docs if not every or i % every), split_train)
    if every:
        corpus.write_documents((d for i, d in docs if i % every == 0), split_eval)
    if vocab:
        tokenizer = load_tokenizer(vocab, do_lower_case=do_lower_case)
    else:
        vocab_dir = os.path.join(out, "vocab")
        if os.path.isdir(vocab_dir):
            tokenizer = load_tokenizer(vocab_dir)
        else:
            log.info("training a %d-token WordPiece vocab on %s", vocab_size, split_train)
            tokenizer = train_vocab(
                [split_train],
                kind="wordpiece",
                vocab_size=vocab_size,
                out_dir=vocab_dir,
                do_lower_case=do_lower_case,
            )
    common = dict(
        max_seq_length=max_seq_length,
        max_predictions_per_seq=max_predictions_per_seq,
        masked_lm_prob=masked_lm_prob,
        short_seq_prob=short_seq_prob,
        do_whole_word_mask=do_whole_word_mask,
        dynamic_masking=dynamic_masking,
        overwrite=True,
    )
    create_pretraining_data(
        [split_train],
        tokenizer,
        train_dir,
        dupe_factor=dupe_factor,
        random_seed=seed + TRAIN_SEED_OFFSET,
        **common,
    )
    if every:
        create_pretraining_data(
            [split_eval],
            tokenizer,
            eval_dir,
            dupe_factor=1,
            random_seed=seed + EVAL_SEED_OFFSET,
            **common,
        )
    return train_dir, eval_dir
