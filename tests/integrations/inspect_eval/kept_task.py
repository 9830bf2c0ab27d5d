"""A two-sample Inspect task for the ``inspect eval`` command line, no model needed:

    inspect eval kept_task.py --model mockllm/model --sandbox commandlab [--no-sandbox-cleanup]

Each sample writes its input into ``/tmp/sample`` of its sandbox and answers what it reads
back, so a sandbox kept after the run shows which sample it was.
"""

from __future__ import annotations

from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.scorer import includes
from inspect_ai.solver import Generate, Solver, TaskState, solver
from inspect_ai.util import sandbox


@solver
def write_and_read() -> Solver:
    async def solve(state: TaskState, generate: Generate) -> TaskState:
        command = f"printf %s {state.input_text} > /tmp/sample && cat /tmp/sample"
        result = await sandbox().exec(["sh", "-c", command])
        state.output.completion = result.stdout
        return state

    return solve


@task
def kept_by_inspect() -> Task:
    return Task(
        dataset=[Sample(input=word, target=word) for word in ("first", "second")],
        solver=write_and_read(),
        scorer=includes(),
    )
