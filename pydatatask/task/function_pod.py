"""The body of a function task for one key, run in this process: what a pod of the
pipeline's image runs when a function task's executor is Kubernetes.

The pipeline script's hidden command ``_call-function TASK KEY``
(:data:`~pydatatask.executor.kubernetes.FUNCTION_COMMAND`) calls :func:`call_function`: it
reads the job's input values, calls the function and writes what it returned to the
outputs. It takes no claim and writes no record: the scheduler that started the pod does
those, from the pod's end. A batched function task (``batch > 1``) does not run in a pod:
its pod fails, naming why.
"""

from __future__ import annotations

from ..errors import ConfigurationError
from .base import JobContext, Task
from .function import FunctionTask

__all__ = ("call_function",)


async def call_function(task: Task, key: str) -> str:
    """Run the function of ``task`` (a task with a ``func``) for ``key`` here, with the
    task's links; return the job's log lines. Raises what the function raised."""
    func = getattr(task, "func", None)
    if not callable(func):
        raise ConfigurationError(
            f"task {task.name!r} runs no function: only function tasks run in a function pod"
        )
    if task.batch > 1:
        # the pod is given one key: run for the batch's first key only, the other keys of
        # the batch would be recorded as done with nothing written for them
        raise ConfigurationError(
            f"task {task.name!r}: a function task with batch={task.batch} cannot run its function "
            "in a pod (a function pod runs one key): give it batch=1 or another executor"
        )
    body = FunctionTask(task.name, func)  # on this process's own in-loop executor
    body.links = task.links  # the same repositories as the scheduler's task
    body.check_parameters()
    job = JobContext(body, key, 1)
    try:
        await body.run_here(job)
    finally:
        body.close()
    return job.log_text
