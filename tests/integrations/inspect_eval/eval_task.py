"""A small tool-using Inspect eval on commandlab sandboxes, driven by Inspect's mock model.

    python eval_task.py RUN_ID SLEEP LOG_DIR

Each of 10 samples asks for i * 7; the mock model answers by calling the bash tool in
the sample's sandbox (which also sleeps SLEEP seconds), then repeats what it printed.
Prints one JSON line: the eval's status and each sample's id, score, error and times.
"""

from __future__ import annotations

import json
import re
import sys

from inspect_ai import Task, eval, task
from inspect_ai.dataset import Sample
from inspect_ai.model import (
    ChatMessage,
    ChatMessageTool,
    GenerateConfig,
    ModelOutput,
    ModelUsage,
    get_model,
)
from inspect_ai.scorer import includes
from inspect_ai.solver import generate, use_tools
from inspect_ai.tool import ToolChoice, ToolInfo, bash

from commandlab_async.integrations.inspect_sandbox import CommandLabSandboxConfig


@task
def multiply(run_id: str, sleep: float) -> Task:
    samples = [Sample(id=i, input=f"What is {i} times 7?", target=str(i * 7)) for i in range(10)]
    config = CommandLabSandboxConfig(user="computer", labels={"eval-run": run_id})
    return Task(
        dataset=samples,
        solver=[use_tools(bash()), generate()],
        scorer=includes(),
        sandbox=("commandlab", config),
    )


def mock_model(sleep: float):  # type: ignore[no-untyped-def]
    def answer(
        messages: list[ChatMessage], tools: list[ToolInfo], choice: ToolChoice, cfg: GenerateConfig
    ) -> ModelOutput:
        last = messages[-1]
        if isinstance(last, ChatMessageTool):
            output = ModelOutput.from_content("mockllm/model", f"The answer is {last.text.strip()}")
        else:
            i = int(re.search(r"What is (\d+)", messages[0].text).group(1))  # type: ignore[union-attr]
            command = f"sleep {sleep}; expr {i} \\* 7"
            output = ModelOutput.for_tool_call("mockllm/model", "bash", {"command": command})
        # Usage given: the mock would otherwise count tokens with tiktoken, which downloads.
        output.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
        return output

    return get_model("mockllm/model", custom_outputs=answer)


def main() -> None:
    run_id, sleep, log_dir = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    (log,) = eval(
        multiply(run_id, sleep),
        model=mock_model(sleep),
        max_samples=10,
        log_dir=log_dir,
        display="none",
    )
    samples = [
        {
            "id": s.id,
            "score": s.scores["includes"].value if s.scores else None,
            "error": str(s.error) if s.error else None,
            "started_at": s.started_at,
            "completed_at": s.completed_at,
        }
        for s in log.samples or []
    ]
    print(json.dumps({"status": log.status, "samples": samples}))


if __name__ == "__main__":
    main()
