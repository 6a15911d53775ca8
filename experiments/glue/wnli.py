"""WNLI (635 train / 71 dev examples), BERT-base, lr 2e-5, batch 32, 3 epochs = 60 steps:
    bertjax finetune --config experiments/glue/wnli.py --workdir runs/wnli --config.init_checkpoint=CKPT --config.task.data_dir=glue_data
runtime under 1 minute on one A100/H100 in bfloat16 (estimated), hours on CPU; metric accuracy ~56.3 dev, the majority class (BERT does not beat it; the paper leaves WNLI out) (sources, other learning rates, bfloat16, TFDS: common.py).
"""

from __future__ import annotations

from experiments.glue import common


def get_config(arg: str | None = None):
    return common.task_config("wnli", arg)  # arg: another peak learning rate (default 2e-5)
