"""Every downstream task of the fine-tuning engine, picked by `config.task.name`.

The engine (finetune.py) runs a task family it is given and imports none; each task module
builds on the engine's interface (finetune_task.py) and exports its `FAMILY`: squad.py
(squad_v1, squad_v2), ner.py (conll2003, msra_zh, ner, ner_<name>) and glue_task.py (the
rest: GLUE task names). This module sits above them all, for callers that take any
fine-tuning config (`bertjax finetune`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from bertjax import finetune as engine
from bertjax import glue_task, ner, squad
from bertjax.config import check_config_kind
from bertjax.finetune_task import TaskFamily


def task_family(config: Any) -> TaskFamily:
    """The family of `config.task.name`: SQuAD (squad_v1, squad_v2), NER (ner.py's task
    names) or GLUE (the rest; an unknown name is then an error of `glue_task.GlueConfig`).

    Raises ValueError for a config without a task group (a pre-training config)."""
    check_config_kind(config, fine_tuning=True)
    if squad.is_squad_config(config):
        return squad.FAMILY
    if ner.is_ner_config(config):
        return ner.FAMILY
    return glue_task.FAMILY


def finetune(
    config_dict: Any, workdir: str, *, devices: Sequence[jax.Device] | None = None
) -> dict[str, Any]:
    """`finetune.finetune` with the family of `config_dict` (its doc gives what is written,
    returned and raised)."""
    return engine.finetune(task_family(config_dict), config_dict, workdir, devices=devices)
