"""BERT-large pre-training as in the paper: L=24, H=1024, A=16, same recipe as base.

    CPU (smoke):  bertjax train --config experiments/pretrain/bert_large.py:phase1 --workdir runs/large1 \
                    --config.data.train_dir=data/wiki128 --config.train.batch_size=2
    one GPU:      bertjax train --config experiments/pretrain/bert_large.py:phase1 --workdir runs/large1 \
                    --config.data.train_dir=data/wiki128 --config.model.dtype=bfloat16 \
                    --config.model.remat=True --config.optim.grad_accum_steps=16
    TPU v4-64:    bertjax train --config experiments/pretrain/bert_large.py:phase1 --workdir gs://b/large1 \
                    --config.data.train_dir=gs://b/wiki128 --config.model.dtype=bfloat16 \
                    --config.mesh.fsdp=8   (run on every host)
    phase 2:      ... bert_large.py:phase2 --config.init_checkpoint=runs/large1 --config.data.train_dir=data/wiki512

Expected: GLUE average ~82 (paper); about 4 days on 64 TPU v3 chips.
"""

from __future__ import annotations

from experiments.pretrain import bert_base


def get_config(arg: str | None = None):
    c = bert_base.get_config(arg)
    c.model.size = "large"
    return c
