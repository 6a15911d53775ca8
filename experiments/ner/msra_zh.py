"""MSRA Chinese NER (PER, LOC, ORG; ~46k train / 4.4k test sentences), one character per line.

    CPU / one GPU:
      bertjax finetune --config experiments/ner/msra_zh.py --workdir runs/msra \
        --config.init_checkpoint=CKPT --config.task.data_dir=DIR
    MSRA ships no dev split: point dev at the test file with --config.task.dev_file=test.txt
    BIOES / BMES tags are read as they are (tag_scheme auto) and trained as IOB2
    feature-based: --config.train.freeze_encoder=True --config.model.feature_layers=-1,-2,-3,-4
    entities in raw Chinese text (no spaces needed):
      bertjax ner --checkpoint runs/msra/best --input sentences.txt

DIR holds train.txt, dev.txt (or valid.txt) and test.txt, each line `字 TAG` (a blank line
between sentences). CKPT is a Chinese BERT (e.g. bert-base-chinese through `bertjax convert
--from hf`), whose tokenizer splits CJK text one character per token, so characters and tokens
align one to one; sentences longer than 126 characters are cut into overlapping windows.

Expected with bert-base-chinese (lr 5e-5, batch 32, 3 epochs: ~46k rows, about 4,300 steps):
  runtime  ten to twenty minutes on one A100/H100 in bfloat16 (an estimate, not measured
           here); most of a day on a 2-core CPU
  metric   test entity F1 ~94-95 (published BERT-base results on MSRA; not measured here)
"""

from __future__ import annotations

import ml_collections

from experiments.ner import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: an optional peak learning rate (default 5e-5)."""
    return common.task_config("msra_zh", arg, num_epochs=3.0, learning_rate=5e-5)
