"""bertjax: BERT pre-training and fine-tuning in JAX/Flax on device meshes."""

__version__ = "0.1.0"
