"""MNLI (392,702 train / 9,815 + 9,832 dev examples), BERT-base, lr 2e-5, batch 32, 3 epochs = 36,816 steps:
    bertjax finetune --config experiments/glue/mnli.py --workdir runs/mnli --config.init_checkpoint=CKPT --config.task.data_dir=glue_data
runtime about 30 minutes on one A100/H100 in bfloat16 (estimated), hours on CPU; metric accuracy ~83.9 matched / ~84.1 mismatched dev; paper test 84.6/83.4 (sources, other learning rates, bfloat16, TFDS: common.py).

The run also predicts the diagnostic set AX (diagnostic/diagnostic.tsv) with the best MNLI
parameters and writes AX.tsv next to MNLI-m.tsv and MNLI-mm.tsv.
"""

from __future__ import annotations

from experiments.glue import common


def get_config(arg: str | None = None):
    return common.task_config("mnli", arg)  # arg: another peak learning rate (default 2e-5)
