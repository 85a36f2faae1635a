"""The GLUE tasks we fine-tune on, by name. Adding one (RTE, SST-2) is one more small module
like glue/cola.py and one more entry here."""
from glue.cola import COLA
from glue.mrpc import MRPC
from glue.stsb import STSB
from glue.task import Task

TASKS: dict[str, Task] = {task.name: task for task in (MRPC, COLA, STSB)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: allowed {sorted(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "Task", "get_task"]
