"""Tests for data_pipelines.masking: the reference's masking rules, seeded per example."""

from __future__ import annotations

import numpy as np
import pytest
from _data_helpers import example_params, unmasked_ids

from data_pipelines import features as F
from data_pipelines import masking
from data_pipelines.pretraining_data import create_examples


@pytest.fixture(scope="module")
def examples(tok, token_docs):
    """Statically masked examples, as create_pretraining_data writes them."""
    return create_examples(token_docs, example_params(tok))


def test_masking_statistics(tok, examples):
    weights = examples[F.MASKED_LM_WEIGHTS]
    positions = examples[F.MASKED_LM_POSITIONS]
    labels = examples[F.MASKED_LM_IDS]
    ids = examples[F.INPUT_IDS]
    lengths = examples[F.INPUT_MASK].sum(1)
    num_pred = weights.sum(1).astype(int)
    # Exactly min(P, max(1, round(len * 0.15))) predictions (Python's round: half to even).
    expected = [min(10, max(1, round(n * 0.15))) for n in lengths]
    assert num_pred.tolist() == expected
    assert abs(num_pred.sum() / lengths.sum() - 0.15) < 0.01
    # Weights are 1 for the first num_pred slots; padding slots are zero.
    assert all(
        (w[:k] == 1).all() and (w[k:] == 0).all() for w, k in zip(weights, num_pred, strict=True)
    )
    assert (positions[weights == 0] == 0).all() and (labels[weights == 0] == 0).all()
    # Positions ascending and unique, inside the sequence, never [CLS]/[SEP]/[PAD].
    for p, k, length in zip(positions, num_pred, lengths, strict=True):
        assert (np.diff(p[:k]) > 0).all() and (p[:k] < length).all()
    real = weights == 1
    assert not np.isin(labels[real], [tok.cls_id, tok.sep_id, tok.pad_id]).any()
    # 80% [MASK], 10% unchanged, 10% random.
    rows, cols = np.nonzero(real)
    at = ids[rows, positions[rows, cols]]
    lab = labels[rows, cols]
    n = len(at)
    assert n > 10_000
    frac_mask = (at == tok.mask_id).mean()
    frac_same = (at == lab).mean()
    frac_other = 1 - frac_mask - frac_same
    assert abs(frac_mask - 0.8) < 0.02
    assert abs(frac_same - 0.1) < 0.015  # includes random draws equal to the label (~1/57)
    assert abs(frac_other - 0.1) < 0.015
    # Random replacements are never special tokens.
    replaced = at[(at != tok.mask_id) & (at != lab)]
    assert not np.isin(replaced, list(tok.special_ids())).any()
    # Unmasked positions keep their ids.
    orig = unmasked_ids(examples)
    changed = orig != ids
    assert changed.sum() == (at != lab).sum()


def test_max_predictions_cap(tok, token_docs):
    ex = create_examples(token_docs[:60], example_params(tok, max_predictions_per_seq=3))
    num_pred = ex[F.MASKED_LM_WEIGHTS].sum(1)
    assert ex[F.MASKED_LM_POSITIONS].shape[1] == 3
    assert num_pred.max() == 3 and (num_pred <= 3).all()


def _words(ids, cont, specials):
    """Lists of positions forming whole words (a piece and its "##" continuations)."""
    words, current = [], []
    for i, t in enumerate(ids):
        if t in specials:
            if current:
                words.append(current)
            current = []
        elif cont[t] and current:
            current.append(i)
        else:
            if current:
                words.append(current)
            current = [i]
    if current:
        words.append(current)
    return words


def _split_words(tok, ex):
    """Number of words with some but not all pieces masked."""
    cont = tok.continuation_mask()
    specials = {tok.cls_id, tok.sep_id, tok.pad_id}
    orig = unmasked_ids(ex)
    split = multi = 0
    for i in range(len(orig)):
        k = int(ex[F.MASKED_LM_WEIGHTS][i].sum())
        masked = set(ex[F.MASKED_LM_POSITIONS][i, :k].tolist())
        for word in _words(orig[i], cont, specials):
            hit = sum(p in masked for p in word)
            split += 0 < hit < len(word)
            multi += len(word) > 1 and hit == len(word)
    return split, multi


def test_whole_word_masking_never_splits_a_word(tok, token_docs):
    wwm = create_examples(token_docs[:150], example_params(tok, do_whole_word_mask=True))
    split, multi = _split_words(tok, wwm)
    assert split == 0 and multi > 50
    num_pred = wwm[F.MASKED_LM_WEIGHTS].sum(1)
    assert (num_pred <= 10).all() and num_pred.mean() > 5
    # Without whole-word masking, pieces of a word are masked independently.
    plain = create_examples(token_docs[:150], example_params(tok))
    assert _split_words(tok, plain)[0] > 50


def test_mask_example_is_pure_and_seeded(tok):
    spec = masking.MaskingSpec.from_tokenizer(tok, max_predictions_per_seq=8)
    ids = np.array([tok.cls_id, *range(10, 40), tok.sep_id, *range(40, 55), tok.sep_id] + [0] * 16)
    length = 48
    a = masking.mask_example(ids, length, spec, seed=(1, 2, 3))
    b = masking.mask_example(ids, length, spec, rng=masking.example_rng(1, 2, 3))
    c = masking.mask_example(ids, length, spec, rng=masking.example_rng(1, 2, 3))
    d = masking.mask_example(ids, length, spec, rng=masking.example_rng(1, 3, 3))
    for x, y in zip(b, c, strict=True):
        np.testing.assert_array_equal(x, y)
    assert a.masked_lm_weights.sum() == min(8, round(48 * 0.15))
    assert not np.array_equal(b.masked_lm_positions, d.masked_lm_positions)
    assert ids[16] == 25 and a.input_ids.shape == ids.shape  # the input is not modified


@pytest.mark.parametrize("whole_words", [False, True])
def test_mask_rows_is_mask_example_row_after_row(tok, token_docs, whole_words):
    """Row i of mask_rows is mask_example(row i, rng=rngs[i]); rows sharing a generator
    take its numbers in turn, as successive mask_example calls do."""
    spec = masking.MaskingSpec.from_tokenizer(
        tok, max_predictions_per_seq=6, do_whole_word_mask=whole_words
    )
    ex = create_examples(token_docs[:40], example_params(tok, dynamic_masking=True))
    ids, lengths = ex[F.INPUT_IDS], ex[F.INPUT_MASK].sum(1)
    groups = [masking.example_rng(4, 0, g) for g in range(len(ids))]
    rngs = [groups[i // 3] for i in range(len(ids))]  # three rows per generator
    got = masking.mask_rows(ids, lengths, spec, rngs)
    again = [masking.example_rng(4, 0, g) for g in range(len(ids))]
    for i in range(len(ids)):
        want = masking.mask_example(ids[i], int(lengths[i]), spec, rng=again[i // 3])
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a[i], b)
    assert len({got.masked_lm_positions[i].tobytes() for i in range(3)}) == 3
    with pytest.raises(ValueError, match="generators"):
        masking.mask_rows(ids, lengths, spec, rngs[:-1])


@pytest.mark.parametrize("whole_words", [False, True])
def test_spec_round_trips_through_json(tok, whole_words):
    spec = masking.MaskingSpec.from_tokenizer(
        tok, max_predictions_per_seq=7, do_whole_word_mask=whole_words
    )
    data = spec.to_json()
    assert ("continuation_ids" in data) == whole_words
    again = masking.MaskingSpec.from_json(data)
    assert again.to_json() == data
    if whole_words:
        np.testing.assert_array_equal(again.continuation_mask, tok.continuation_mask())
    ids = np.array([tok.cls_id, *range(10, 40), tok.sep_id] + [0] * 8)
    a = masking.mask_example(ids, 32, spec, seed=5)
    b = masking.mask_example(ids, 32, again, seed=5)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
