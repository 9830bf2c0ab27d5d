"""An Inspect eval that uses ``computer()`` in a commandlab desktop sandbox, driven by
Inspect's mock model.

    python computer_task.py RUN_ID LOG_DIR

A solver starts an xterm whose every typed byte goes to a file; the scripted model takes
a screenshot, clicks into the xterm, presses ctrl+a, types, presses Return and asks where
the pointer is; the scorer reads what the app received.  Prints one JSON line: the eval's
status, the sample's error and score, and each tool result (its error, its text, the
size of each image).
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Any

from inspect_ai import Task, eval, task
from inspect_ai.dataset import Sample
from inspect_ai.log import resolve_sample_attachments
from inspect_ai.model import ChatMessageTool, ContentImage, ModelOutput, ModelUsage, get_model
from inspect_ai.scorer import CORRECT, INCORRECT, Score, Scorer, Target, accuracy, scorer
from inspect_ai.solver import Generate, Solver, TaskState, generate, solver, use_tools
from inspect_ai.tool import computer
from inspect_ai.util import sandbox

from commandlab_async import DESKTOP_IMAGE
from commandlab_async.daemon import png
from commandlab_async.integrations.inspect_sandbox import CommandLabSandboxConfig

APP = Path(__file__).parents[2] / "desktop" / "apps" / "typed.py"
RECORD = "/tmp/rec/typed"
TYPED = "Inspect typed: héllo 漢字 ✓"
CALLS: list[dict[str, Any]] = [
    {"action": "screenshot"},
    {"action": "left_click", "coordinate": [200, 100]},
    {"action": "key", "text": "ctrl+a"},
    {"action": "type", "text": TYPED},
    {"action": "key", "text": "Return"},
    {"action": "cursor_position"},
]


@solver
def xterm_recording_keys() -> Solver:
    """Start an xterm whose every typed byte goes to RECORD (tests/desktop/apps/typed.py)."""

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        box = sandbox()
        await box.write_file("/tmp/apps/typed.py", APP.read_bytes())
        xterm = "xterm -u8 -fa Monospace -geometry 80x20+0+0 -e python3 /tmp/apps/typed.py"
        xterm += f" {RECORD} {RECORD}.ready </dev/null >/dev/null 2>&1"  # it outlives exec
        started = await box.exec(
            ["sh", "-c", f"mkdir -p /tmp/rec && setsid -f {xterm}"], env={"LANG": "C.UTF-8"}
        )
        assert started.success, started.stderr
        for _ in range(200):
            if (await box.exec(["test", "-e", f"{RECORD}.ready"])).success:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # mapped and focused
        return state

    return solve


@scorer(metrics=[accuracy()])
def received_by_the_app() -> Scorer:
    """Correct when the app in the sandbox received exactly the target's text."""

    async def score(state: TaskState, target: Target) -> Score:
        received = ""
        for _ in range(100):
            received = await sandbox().read_file(RECORD)
            if len(received) >= len(target.text):
                break
            await asyncio.sleep(0.1)
        return Score(value=CORRECT if received == target.text else INCORRECT, answer=received)

    return score


@task
def type_into_an_xterm(run_id: str) -> Task:
    # 1366x768: the screen Inspect tells models with native computer use about.
    config = CommandLabSandboxConfig(
        image=DESKTOP_IMAGE, screen=(1366, 768), labels={"computer-run": run_id}
    )
    return Task(
        dataset=[Sample(id="xterm", input="Type into the terminal.", target=f"\x01{TYPED}\n")],
        solver=[xterm_recording_keys(), use_tools(computer()), generate()],
        scorer=received_by_the_app(),
        sandbox=("commandlab", config),
    )


def scripted_model():  # type: ignore[no-untyped-def]
    outputs = [ModelOutput.for_tool_call("mockllm/model", "computer", call) for call in CALLS]
    outputs.append(ModelOutput.from_content("mockllm/model", "Done."))
    for output in outputs:
        # Usage given: the mock would otherwise count tokens with tiktoken, which downloads.
        output.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
    return get_model("mockllm/model", custom_outputs=outputs)


def image_size(image: ContentImage) -> list[int]:
    data = base64.b64decode(image.image.removeprefix("data:image/png;base64,"))
    width, height, _rgb = png.decode(data)
    return [width, height]


def main() -> None:
    run_id, log_dir = sys.argv[1], sys.argv[2]
    (log,) = eval(
        type_into_an_xterm(run_id), model=scripted_model(), log_dir=log_dir, display="none"
    )
    report: dict[str, Any] = {"status": log.status, "error": str(log.error or "") or None}
    for sample in log.samples or []:
        sample = resolve_sample_attachments(sample)  # the images, not their hashes
        score = sample.scores["received_by_the_app"] if sample.scores else None
        report["sample_error"] = str(sample.error) if sample.error else None
        report["score"] = score.value if score else None
        report["answer"] = score.answer if score else None
        report["tools"] = [
            {
                "function": message.function,
                "error": message.error.message if message.error else None,
                "text": message.text,
                "images": [
                    image_size(c)
                    for c in (message.content if isinstance(message.content, list) else [])
                    if isinstance(c, ContentImage)
                ],
            }
            for message in sample.messages
            if isinstance(message, ChatMessageTool)
        ]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
