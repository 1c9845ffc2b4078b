"""Free local ports for private stacks (the tests' and the benchmark's)."""

from __future__ import annotations

import random
import socket

# Below Linux's ephemeral range (32768-60999): a client reconnecting to a dead broker on an
# ephemeral port can be given that very port as its own and connect to itself, and the
# restarted broker then finds its port taken.
PORT_RANGE = (20000, 32767)


def bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    for _ in range(1000):
        port = random.randint(*PORT_RANGE)
        if bindable(port):
            return port
    raise RuntimeError("no free port below the ephemeral range")


def private_stack_flags(stack_dir: str) -> dict[str, object]:
    """Flags for a stack of its own: a folder and free ports."""
    return {
        "stack.dir": stack_dir,
        "stack.kafka_port": free_port(),
        "stack.controller_port": free_port(),
        "stack.redis_port": free_port(),
    }
