"""RTE (2,490 train / 277 dev examples), BERT-base, lr 2e-5, batch 32, 3 epochs = 234 steps:
    bertjax finetune --config experiments/glue/rte.py --workdir runs/rte --config.init_checkpoint=CKPT --config.task.data_dir=glue_data
runtime under 1 minute on one A100/H100 in bfloat16 (estimated), hours on CPU; metric accuracy ~65.7 dev; paper test 66.4 (small and unstable: try several seeds) (sources, other learning rates, bfloat16, TFDS: common.py).
"""

from __future__ import annotations

from experiments.glue import common


def get_config(arg: str | None = None):
    return common.task_config("rte", arg)  # arg: another peak learning rate (default 2e-5)
