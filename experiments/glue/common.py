"""Defaults shared by every GLUE fine-tuning experiment; each task file edits a copy.

The BERT paper's recipe: AdamW with peak learning rate in {5e-5, 4e-5, 3e-5, 2e-5} (best on
dev), linear warmup over the first 10% of steps then linear decay to 0, weight decay 0.01,
batch 32, 3 epochs, dropout 0.1, sequences of 128 tokens.

    bertjax finetune --config experiments/glue/mrpc.py --workdir runs/mrpc \
      --config.init_checkpoint=CKPT --config.task.data_dir=glue_data
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from data_pipelines.bucketing import DEFAULT_MULTIPLE
from experiments.pretrain.common import mesh_config


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # drives the classifier head's initialisation, dropout and example order
    c.init_checkpoint = ""  # required: bertjax model dir or pre-training workdir

    c.task = ml_collections.ConfigDict()
    c.task.name = ""  # cola | sst2 | mrpc | stsb | qqp | mnli | qnli | rte | wnli
    c.task.data_dir = ""  # GLUE root (CoLA/, SST-2/, ..., diagnostic/) or 'tfds'
    c.task.tfds_data_dir = ""  # with data_dir='tfds': TFDS data dir ('' = TFDS's default)
    c.task.max_train_examples = 0  # train on the first N examples only (0 = all)
    c.task.max_eval_examples = 0  # evaluate on the first N dev examples only (0 = all)
    c.task.max_seq_length = 128  # tokens per example ([CLS] a [SEP] b [SEP], truncated)

    c.model = ml_collections.ConfigDict()
    c.model.hidden_dropout_rate = 0.1  # dropout on embeddings, sub-layers and the pooled vector
    c.model.attention_dropout_rate = 0.1  # dropout on attention probabilities (0 = fused kernel)
    c.model.dtype = config_dict.placeholder(str)  # compute dtype (None = checkpoint's; bfloat16)
    c.model.param_dtype = config_dict.placeholder(str)  # master weights (None = checkpoint's)
    c.model.remat = config_dict.placeholder(bool)  # recompute layers (None = checkpoint)
    c.model.remat_policy = config_dict.placeholder(str)  # with remat: what to keep (None = ckpt)
    c.model.scan_layers = False  # nn.scan over the layers: one compiled body, faster compiles

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # adamw | lamb
    c.optim.learning_rate = 2e-5  # peak learning rate (paper grid: 5e-5, 4e-5, 3e-5, 2e-5)
    c.optim.warmup_fraction = 0.1  # linear warmup over this share of the steps
    c.optim.decay = "linear"  # linear | cosine | constant after warmup
    c.optim.end_learning_rate = 0.0  # value at the last step
    c.optim.beta1 = 0.9  # Adam beta1
    c.optim.beta2 = 0.999  # Adam beta2
    c.optim.eps = 1e-6  # Adam epsilon (BERT's)
    c.optim.weight_decay = 0.01  # decoupled, not on LayerNorm or biases
    c.optim.clip_grad_norm = 1.0  # global-norm clipping (0 = off)
    c.optim.grad_accum_steps = 1  # micro-batches per step, accumulated inside the jitted step

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32  # global batch (sequences), split over processes and devices
    c.train.eval_batch_size = 0  # batch for evaluation and prediction (0 = train.batch_size)
    c.train.num_epochs = 3.0  # passes over the examples (fractions allowed; 0 = only evaluate)
    c.train.eval_every_epoch = True  # evaluate after every epoch (else only at the end)
    c.train.log_every = 50  # steps between metric fetches / log lines
    c.train.predict_test = True  # predict the test splits with the best params (submission)
    c.train.checkpoint_every = 1000  # steps between resume checkpoints (and one at SIGTERM)
    c.train.keep_checkpoints = 2  # newest resume checkpoints kept (all removed once complete)

    c.data = ml_collections.ConfigDict()
    c.data.bucket_multiple = DEFAULT_MULTIPLE  # pad batches to a multiple of it (0 = max_seq_len)
    c.data.packing = True  # several examples per row of max_seq_length (replaces buckets)
    c.data.packed_shapes = 2  # with packing: the most row counts (compiled train-step shapes)

    c.mesh = mesh_config()  # data / fsdp / tensor axes and the logical-axis rules
    return c


def task_config(
    task: str, arg: str | None, *, learning_rate: float = 2e-5
) -> ml_collections.ConfigDict:
    """The defaults with task.name set; `arg` (the text after ':' in --config) is a learning
    rate, e.g. `experiments/glue/rte.py:3e-5`."""
    c = get_config()
    c.task.name = task
    c.optim.learning_rate = float(arg) if arg else learning_rate
    return c


def fine_tuning_optim(*, learning_rate: float) -> ml_collections.ConfigDict:
    """The `optim` group of `get_config` (AdamW, warmup + linear decay, weight decay 0.01,
    clipping at 1.0) with its peak `learning_rate`: every fine-tuning config's optimizer."""
    optim = get_config().optim
    optim.learning_rate = learning_rate
    return optim
