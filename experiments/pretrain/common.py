"""Defaults shared by every pre-training experiment; each experiment file edits a copy.

Fields that scripts and docs rely on keep their names: seed, model.size, train.num_steps,
train.batch_size (global), train.log_every, train.eval_every, train.checkpoint_every,
mesh.data, mesh.fsdp, mesh.tensor, init_checkpoint.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def mesh_config() -> ml_collections.ConfigDict:
    """The `mesh` group every experiment (pre-training, GLUE, SQuAD) shares."""
    m = ml_collections.ConfigDict()
    m.data = -1  # data-parallel axis (-1 = the devices the other axes leave)
    m.fsdp = 1  # parameter/optimizer-state sharding axis (ZeRO-3)
    m.tensor = 1  # tensor-parallel axis (heads, mlp, vocab)
    m.rules = (  # logical axis -> mesh axes, in order of precedence
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("heads", "tensor"),
        ("mlp", "tensor"),
        ("vocab", "tensor"),
        ("kv", None),
        ("length", None),
        ("layers", None),
    )
    return m


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # drives initialisation, dropout and data order
    c.init_checkpoint = ""  # bertjax checkpoint dir to start from (e.g. an imported Google BERT)

    c.model = ml_collections.ConfigDict()
    c.model.size = "base"  # tiny | mini | small | medium | base | large | custom
    c.model.vocab_size = config_dict.placeholder(int)  # None: from the prepared data's vocab
    c.model.num_layers = config_dict.placeholder(int)  # None: from the size table (L)
    c.model.hidden_size = config_dict.placeholder(int)  # None: from the size table (H)
    c.model.num_heads = config_dict.placeholder(int)  # None: from the size table (A)
    c.model.intermediate_size = config_dict.placeholder(int)  # None: from the size table (4H)
    c.model.max_position_embeddings = 512  # learned positions; phase 2 uses all 512
    c.model.hidden_dropout_rate = 0.1  # dropout on embeddings and sub-layer outputs
    c.model.attention_dropout_rate = 0.1  # dropout on attention probabilities (0 = fused kernel)
    c.model.dtype = "float32"  # compute dtype; bfloat16 on GPU/TPU
    c.model.param_dtype = "float32"  # master weights stay fp32
    c.model.remat = False  # recompute layers in the backward pass to save memory
    c.model.remat_policy = "nothing_saveable"  # with remat: what to keep (config.REMAT_POLICIES)
    c.model.scan_layers = False  # nn.scan over the layers: one compiled body, faster compiles

    c.data = ml_collections.ConfigDict()
    c.data.train_dir = ""  # shards written by `bertjax prepare`; '' = prepare data.corpus
    c.data.eval_dir = ""  # held-out shards for evaluation; '' = none (or the prepared split)
    c.data.corpus = ""  # text to prepare into WORKDIR/data: 'embedded' or a glob of BERT text
    c.data.vocab = ""  # vocab.txt / SentencePiece model / checkpoint dir; '' = train one
    c.data.vocab_size = 8192  # size of a vocab trained on data.corpus
    c.data.do_lower_case = True  # uncased model
    c.data.max_seq_length = 128  # tokens per example (phase 1: 128, phase 2: 512)
    c.data.max_predictions_per_seq = 20  # masked positions per example (20 at 128, 80 at 512)
    c.data.masked_lm_prob = 0.15  # share of tokens masked
    c.data.dupe_factor = 5  # passes over the corpus with different masks
    c.data.short_seq_prob = 0.1  # share of examples with a shorter target length
    c.data.do_whole_word_mask = False  # mask all pieces of a word together
    c.data.dynamic_masking = False  # mask on the fly with a per-epoch seed (RoBERTa)
    c.data.eval_fraction = 0.02  # share of documents held out when preparing data.corpus
    c.data.num_workers = 0  # grain worker processes (0 = in the training process)
    c.data.packing = False  # pack several sentence pairs per row, NSP kept per pair
    c.data.max_sequences_per_pack = 3  # pairs per packed row at most

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # adamw | lamb
    c.optim.learning_rate = 1e-4  # peak learning rate
    c.optim.warmup_steps = 10_000  # linear warmup from 0
    c.optim.decay = "linear"  # linear | cosine | constant after warmup
    c.optim.end_learning_rate = 0.0  # value at the last step
    c.optim.beta1 = 0.9  # Adam beta1
    c.optim.beta2 = 0.999  # Adam beta2
    c.optim.eps = 1e-6  # Adam epsilon (BERT's)
    c.optim.weight_decay = 0.01  # decoupled, not on LayerNorm or biases
    c.optim.clip_grad_norm = 1.0  # global-norm clipping (0 = off)
    c.optim.grad_accum_steps = 1  # micro-batches per step, accumulated inside the jitted step

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 1_000_000  # optimizer steps
    c.train.batch_size = 256  # global batch (sequences), split over processes and devices
    c.train.log_every = 100  # steps between metric fetches / log lines
    c.train.eval_every = 10_000  # steps between evaluations on the held-out shards
    c.train.eval_steps = 20  # batches per evaluation
    c.train.checkpoint_every = 10_000  # steps between checkpoints
    c.train.keep_checkpoints = 3  # newest checkpoints kept
    c.train.async_checkpointing = True  # write checkpoints in the background
    c.train.nan_policy = "skip"  # non-finite loss/grad: 'skip' the update (counted) or 'stop'
    c.train.max_nonfinite_steps = 100  # with 'skip': stop after this many skipped updates
    c.train.prng_impl = "threefry2x32"  # RNG of the dropout seeds (masks are index hashes)
    c.train.profile_start = 10  # first step traced with jax.profiler (after compilation)
    c.train.profile_steps = 0  # steps traced into WORKDIR/profile (0 = no trace)

    c.eval = ml_collections.ConfigDict()
    c.eval.fill_mask_examples = 0  # held-out sentences whose fill-mask top 5 ends the run

    c.mesh = mesh_config()
    return c
