"""bertjax: BERT pre-training and fine-tuning in JAX/Flax on device meshes.

From Python, `bertjax.load(path)` gives a checkpoint with its tokenizer (`bertjax.api.Bert`:
encode, embed, hidden_states, fill_mask, predict); see bertjax/api.py.
"""

import importlib

__version__ = "0.1.0"

__all__ = ["Bert", "load"]


def __getattr__(name: str):
    # Imported on first use, so `import bertjax.storage` (and the CLI) stays light.
    if name in (*__all__, "api"):
        api = importlib.import_module("bertjax.api")
        return api if name == "api" else getattr(api, name)
    raise AttributeError(f"module 'bertjax' has no attribute {name!r}")
