"""Text -> BERT batches: tokenizers, corpora, pre-training examples, input pipelines.

This package knows nothing of the model; it produces batches keyed by the feature
names in `data_pipelines.features`.
"""
