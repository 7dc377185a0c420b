"""Registry of benchmark tasks: name -> lazily imported task class.

Each task lives in its own module and may need an optional dependency (gymnasium,
transformers, a Debian dataset). Importing only on request keeps a missing dependency
local to the task that needs it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from lrfree.bench.tasks.base import Task


@dataclass(frozen=True)
class TaskInfo:
    """Where a task's class lives and how to label it without importing it."""

    target: str  # "module:Class"
    family: str
    metric: str
    higher_is_better: bool


TASKS: dict[str, TaskInfo] = {
    "logreg": TaskInfo("lrfree.bench.tasks.convex:LogRegTask", "convex", "suboptimality", False),
    "resnet20": TaskInfo("lrfree.bench.tasks.image:ResNet20Task", "image", "test_acc", True),
    "vgg": TaskInfo("lrfree.bench.tasks.image:VGGTask", "image", "test_acc", True),
    "vit": TaskInfo("lrfree.bench.tasks.vit:ViTTask", "vit", "test_acc", True),
    "segmentation": TaskInfo(
        "lrfree.bench.tasks.segmentation:UNetSegTask", "segmentation", "mIoU", True
    ),
    "simclr": TaskInfo("lrfree.bench.tasks.ssl:SimCLRTask", "ssl", "probe_acc", True),
    "sac-hopper": TaskInfo("lrfree.bench.tasks.rl_sac:SACHopperTask", "rl", "return", True),
    "minilm-wordnet": TaskInfo(
        "lrfree.bench.tasks.finetune:MiniLMWordNetTask", "finetune", "test_acc", True
    ),
    "effnet-fashion": TaskInfo(
        "lrfree.bench.tasks.finetune_vision:EffNetFashionTask", "finetune", "test_acc", True
    ),
}


def task_names() -> list[str]:
    """All registered task names, in registry order."""
    return list(TASKS)


def is_user_task(name: str) -> bool:
    """Whether `name` names the user's own task (`module:function`, `file.py:function`)."""
    return ":" in name and name not in TASKS


def get_task(name: str) -> Task:
    """Import and construct the task registered under `name`, or the user task it names.

    Raises KeyError for an unknown name; an ImportError from the task's own module
    (a missing optional dependency) propagates unchanged so its message says what to install.
    """
    if is_user_task(name):
        from lrfree.bench.tasks.user import UserTask

        return UserTask(name)
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(TASKS)}, or your own as "
                       "module:function (see docs/your_model.md)")
    module_name, class_name = TASKS[name].target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls()
