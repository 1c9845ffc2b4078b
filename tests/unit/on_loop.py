"""Running work that answers through a callback on an event loop of a test's own (as the
server runs POST /authorize: paysim.edge.steps.LoopRunner)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from paysim.edge.steps import LoopRunner, Steps

DEADLINE_S = 5.0
Start = Callable[[Callable[[Any], None]], None]  # starts the work, given what takes its answer


def run_on_loop(starts: list[Start], between: Callable[[], None] = lambda: None) -> list[Any]:
    """Start every one in the same pass of a new loop; their answers once all are in.
    ``between`` runs each pass meanwhile: a poller's work."""
    answers: dict[int, Any] = {}

    async def main() -> None:
        for n, start in enumerate(starts):
            start(lambda answer, n=n: answers.__setitem__(n, answer))
        deadline = asyncio.get_running_loop().time() + DEADLINE_S
        while len(answers) < len(starts):
            assert asyncio.get_running_loop().time() < deadline, answers
            between()
            await asyncio.sleep(0.001)

    asyncio.run(main())
    return [answers[n] for n in range(len(starts))]


def steps_on_loop(runner: LoopRunner, all_steps: list[Steps[Any]],
                  between: Callable[[], None] = lambda: None) -> list[Any]:
    """Each one's answer, or "raised <error>"; the runner closed after."""
    try:
        return run_on_loop([
            lambda done, steps=steps: runner.start(steps, done,
                                                   lambda exc: done(f"raised {exc}"))
            for steps in all_steps], between)
    finally:
        runner.close()
