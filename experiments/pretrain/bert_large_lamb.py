"""BERT-large with LAMB at a large batch (You et al., 2019: BERT in 76 minutes).

Phase 1: batch 65,536 at sequence 128 for 7,038 steps (lr 6e-3, warmup 2,000);
phase 2: batch 32,768 at sequence 512 for 1,561 steps (lr 4e-3, warmup 200), from phase 1.
The global batch is reached with gradient accumulation where the devices cannot hold it.

    CPU (smoke):  bertjax train --config experiments/pretrain/bert_large_lamb.py:phase1 --workdir runs/lamb1 \
                    --config.data.train_dir=data/wiki128 --config.train.batch_size=4 \
                    --config.optim.grad_accum_steps=1
    one GPU:      bertjax train --config experiments/pretrain/bert_large_lamb.py:phase1 --workdir runs/lamb1 \
                    --config.data.train_dir=data/wiki128 --config.model.dtype=bfloat16 \
                    --config.model.remat=True --config.optim.grad_accum_steps=1024
    TPU v3-1024 pod slice (bertjax installed and the data bucket mounted with gcsfuse at ~/gcs
    on every worker; README, "Running on a TPU pod / GPU cluster"):
        gcloud compute tpus tpu-vm ssh bert-v3-1024 --zone=europe-west4-a --worker=all --command='
          bertjax train --config bert_large_lamb:phase1 --workdir gs://b/lamb1 \
            --config.data.train_dir=$HOME/gcs/wiki128 --config.model.dtype=bfloat16 \
            --config.mesh.fsdp=16'
    SLURM, 16 nodes x 8 GPUs (sbatch --nodes=16 --ntasks-per-node=1 --gpus-per-node=8):
        srun bertjax train --config bert_large_lamb:phase1 --workdir /shared/runs/lamb1 \
          --config.data.train_dir=/shared/data/wiki128 --config.model.dtype=bfloat16 \
          --config.model.remat=True --config.optim.grad_accum_steps=8

Expected: SQuAD v1.1 F1 ~91 after phase 2 (paper); 76 minutes on a TPUv3 pod (1024 chips).
"""

from __future__ import annotations

from experiments.pretrain import bert_base


def get_config(arg: str | None = None):
    phase = arg or "phase1"
    c = bert_base.get_config(phase)
    c.model.size = "large"
    c.optim.name = "lamb"
    c.optim.weight_decay = 0.01
    if phase == "phase1":
        c.train.batch_size = 65_536
        c.train.num_steps = 7_038
        c.optim.learning_rate = 6e-3
        c.optim.warmup_steps = 2_000
        c.optim.grad_accum_steps = 8
    else:
        c.train.batch_size = 32_768
        c.train.num_steps = 1_561
        c.optim.learning_rate = 4e-3
        c.optim.warmup_steps = 200
        c.optim.grad_accum_steps = 16
    c.train.checkpoint_every = 500
    c.train.eval_every = 1_000
    return c
