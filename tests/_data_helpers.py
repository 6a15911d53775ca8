"""Small corpora and vocabularies for the data-pipeline tests.

Text words are stems optionally followed by a suffix ("cats" = "cat" + "##s"), so the
WordPiece tokenizer splits some words into a stem and a "##" piece (whole-word masking)
and never produces [UNK].
"""

from __future__ import annotations

import os
import random

STEMS = (
    "the a cat dog sat mat run jump walk talk read write model data text token word "
    "piece train test fast slow big small good bad red blue green tree house car road "
    "river stone light dark cold warm old new long short high low open close left right "
    "north south east west"
).split()
SUFFIXES = ("s", "ing", "ed", "er", "ly")
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def vocab_tokens() -> list[str]:
    return [*SPECIALS, ".", ",", *STEMS, *(f"##{s}" for s in SUFFIXES)]


def write_vocab(directory: str | os.PathLike) -> str:
    path = os.path.join(str(directory), "vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(vocab_tokens()) + "\n")
    return path


def make_documents(
    num_docs: int, *, seed: int = 0, min_sents: int = 3, max_sents: int = 12
) -> list[list[str]]:
    """Documents of sentences of 4..14 words, ending with "."."""
    rnd = random.Random(seed)
    docs = []
    for _ in range(num_docs):
        doc = []
        for _ in range(rnd.randint(min_sents, max_sents)):
            words = []
            for _ in range(rnd.randint(4, 14)):
                w = rnd.choice(STEMS)
                if rnd.random() < 0.3:
                    w += rnd.choice(SUFFIXES)
                words.append(w)
            doc.append(" ".join(words) + " .")
        docs.append(doc)
    return docs


def write_corpus(path: str | os.PathLike, documents: list[list[str]]) -> str:
    """Writes documents in the BERT text format (one sentence a line, blank line between)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n\n".join("\n".join(doc) for doc in documents) + "\n")
    return str(path)


def model_batch(vocab_size: int, b: int = 2, t: int = 12, p: int = 3, seed: int = 0) -> dict:
    """A small model input batch: two segments, the second row padded after 7 tokens."""
    import numpy as np

    rng = np.random.default_rng(seed)
    mask = np.ones((b, t), np.int32)
    mask[1, 7:] = 0
    return {
        "input_ids": rng.integers(1, vocab_size, (b, t)).astype(np.int32) * mask,
        "input_mask": mask,
        "segment_ids": (np.arange(t)[None] >= 4).astype(np.int32) * mask,
        "masked_lm_positions": rng.integers(1, 7, (b, p)).astype(np.int32),
    }
