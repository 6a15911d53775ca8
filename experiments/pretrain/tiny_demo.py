"""Tiny demo: pre-train a 2-layer BERT on Python's own documentation, offline, on CPU.

The default job of `make run`. The corpus is the text that ships with CPython
(pydoc topics and standard-library docstrings); a WordPiece vocab is trained on it and
examples are prepared into WORKDIR/data on the first run. Every 50th document is held out
(11 documents, 191 examples): the evaluations read the first 160 of them, each once.

    CPU:       bertjax train --config experiments/pretrain/tiny_demo.py --workdir runs/demo
    one GPU:   bertjax train --config experiments/pretrain/tiny_demo.py --workdir runs/demo \
                 --config.model.dtype=bfloat16 --config.train.batch_size=256
    TPU slice: not useful at this size; see bert_base.py.

Expected (measured, 2 CPU cores): about 3 minutes, data preparation included; held-out
masked-LM accuracy 20–21%, against 3.5% for always guessing the most frequent masked token
(`mlm_majority_baseline`); NSP accuracy 71–73%, against 59–61% for always answering the more
frequent label (`nsp_majority_baseline`: short documents get more random next segments).
The run ends with the summary every pre-training run prints and the model's top 5 for
a masked word in 3 held-out sentences.

How this was tuned, each change measured on the same held-out examples at about the same
CPU time: no dropout (a 1M-parameter model that sees the corpus ~5 times underfits);
a 2,048-token vocab instead of 4,096 (+0.5-1 point, 12% less time); batch 32 for 2,500
steps instead of 64 for 1,000. Learning rates 1e-3, 1.5e-3 and 3e-3 did worse than 2e-3;
4 heads, 4 narrower layers, a 256-wide MLP, sequences of 128 and a 1,024-token vocab
did no better. Held-out accuracy stays near 18% until the model starts to use its
context, which takes ~2,000 steps at batch 32; the config before (dropout 0.1, vocab 4,096,
batch 64, 1,000 steps) ended at 16.5% in the same time, and 4,000 steps reach 23%.
"""

from __future__ import annotations

from experiments.pretrain import common


def get_config(arg: str | None = None):
    del arg
    c = common.get_config()
    c.seed = 0
    c.model.size = "tiny"
    c.model.max_position_embeddings = 128
    c.model.hidden_dropout_rate = 0.0
    c.model.attention_dropout_rate = 0.0
    c.data.corpus = "embedded"
    c.data.vocab_size = 2048
    c.data.max_seq_length = 64
    c.data.max_predictions_per_seq = 10
    c.data.dupe_factor = 2
    c.data.eval_fraction = 0.02
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 250
    c.optim.weight_decay = 0.01
    c.train.num_steps = 2500
    c.train.batch_size = 32
    c.train.log_every = 25
    c.train.eval_every = 500
    c.train.eval_steps = 5  # 160 of the 191 held-out examples: none read twice
    c.train.checkpoint_every = 500
    c.eval.fill_mask_examples = 3
    return c
