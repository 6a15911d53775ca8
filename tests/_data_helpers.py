"""Small corpora, vocabularies and model configs for the tests.

Text words are stems optionally followed by a suffix ("cats" = "cat" + "##s"), so the
WordPiece tokenizer splits some words into a stem and a "##" piece (whole-word masking)
and never produces [UNK].
"""

from __future__ import annotations

import os
import pathlib
import random

from data_pipelines import features as F

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


def example_params(tok, **kwargs):
    """ExampleParams for the tokenizer: 64 tokens, 10 predictions, dupe 3, seed 7 by default."""
    from data_pipelines.pretraining_data import ExampleParams

    kwargs.setdefault("max_seq_length", 64)
    kwargs.setdefault("max_predictions_per_seq", 10)
    kwargs.setdefault("dupe_factor", 3)
    kwargs.setdefault("random_seed", 7)
    return ExampleParams.from_tokenizer(tok, **kwargs)


def unmasked_ids(ex: dict):
    """input_ids with the masked positions restored to their original ids."""
    import numpy as np

    ids = ex[F.INPUT_IDS].copy()
    rows, cols = np.nonzero(ex[F.MASKED_LM_WEIGHTS])
    ids[rows, ex[F.MASKED_LM_POSITIONS][rows, cols]] = ex[F.MASKED_LM_IDS][rows, cols]
    return ids


def tiny_model_config(**overrides):
    """A 2-layer, 32-wide, 4-head ModelConfig over a 64-token vocab; fields may be overridden."""
    from bertjax.config import ModelConfig

    shape = dict(
        vocab_size=64,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return ModelConfig(**{**shape, **overrides})


def model_batch(vocab_size: int, b: int = 2, t: int = 12, p: int = 3, seed: int = 0) -> dict:
    """A small model input batch: two segments, the second row padded after 7 tokens."""
    import numpy as np

    rng = np.random.default_rng(seed)
    mask = np.ones((b, t), np.int32)
    mask[1, 7:] = 0
    return {
        F.INPUT_IDS: rng.integers(1, vocab_size, (b, t)).astype(np.int32) * mask,
        F.INPUT_MASK: mask,
        F.SEGMENT_IDS: (np.arange(t)[None] >= 4).astype(np.int32) * mask,
        F.MASKED_LM_POSITIONS: rng.integers(1, 7, (b, p)).astype(np.int32),
    }


# Tokenizer corner cases: accents, case, CJK, control, zero-width and odd whitespace
# characters, words of 100+ characters, special-token literals, punctuation, a BOM.
TRICKY_TEXT = [
    "Héllo Wörld",
    "naïve café",
    "NAÏVE CAFÉ",
    "我爱北京天安门",
    "hello我world",
    "don't!!?...",
    "\x00 \t\u200b",
    "x\x00y\ufffdz\u200bw",
    "a" * 100,
    "a" * 101,
    "hello " + "a" * 101 + " world",
    "MiXeD CaSe",
    "unaffable UnAffable",
    "12 34 1234 3.14 1,234",
    "emoji 😀 x😀y 😀😀",
    "",
    "   ",
    "\n\r\t\u00a0\u3000",
    "hello\u00a0world\u2028x\u0085y\x0bz\x0cw\u3000e",
    "e\u0301 cafe\u0301",
    "İstanbul Straße STRASSE",
    "[CLS] hello [SEP] [MASK]x [cls] [unused0]",
    "(hello) {world} <x> @y #the $1 %a ^e &t *h +n =c |w ~x `y",
    "\u201chello\u201d \u2014 world\u2026 \u00bfcaf\u00e9?",
    "\ufeffhello",
]

SYLLABLES = ["ka", "to", "ri", "mu", "sen", "la", "po", "vi", "dra", "quo", "ne", "sh", "el", "tur"]


def syllable_corpus(path: str | os.PathLike, lines: int = 1500, seed: int = 0) -> pathlib.Path:
    """`lines` sentences of 4-14 words made of 1-4 syllables, and a few capitalised words;
    returns the path."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(300)]
    words += ["Capital", "Words", "Here"] * 20
    path = pathlib.Path(path)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(lines):
            f.write(" ".join(rng.choices(words, k=rng.randint(4, 14))) + ".\n")
    return path


def wide_masked_rows(seq_len: int):
    """Three rows of `seq_len` ids, two above 65,535 (records need int32 ids), with static
    masking (P = 5 slots; the third row has no predictions): (ids [3, T], MaskedExamples)."""
    import numpy as np

    from data_pipelines.masking import MaskedExamples

    ids = np.zeros((3, seq_len), np.int32)
    ids[:, :6] = [[2, 70_000, 3, 65_536, 99_999, 3], [2, 5, 3, 6, 7, 3], [2, 8, 3, 9, 10, 3]]
    masked = MaskedExamples(
        ids,
        np.array([[1, 4, 0, 0, 0], [3, 0, 0, 0, 0], [0] * 5], np.int32),
        np.array([[70_000, 99_999, 0, 0, 0], [6, 0, 0, 0, 0], [0] * 5], np.int32),
        np.array([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0] * 5], np.float32),
    )
    return ids, masked
