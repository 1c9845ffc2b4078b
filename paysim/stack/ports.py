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


# Every port this process has handed out. Picks made before any of them is bound must not
# collide: a cluster's Redis run and its controllers' run, both free when picked, once shared
# a port, and the broker that came second could not bind it.
_handed_out: set[int] = set()


def free_port_run(count: int, step: int = 1) -> int:
    """A port p with p, p+step, ... p+(count-1)*step all free and none handed out before
    by this process (a multi-node stack's nodes); they count as handed out from now on."""
    highest_base = PORT_RANGE[1] - (count - 1) * step
    for _ in range(1000):
        base = random.randint(PORT_RANGE[0], highest_base)
        run = range(base, base + count * step, step)
        if _handed_out.isdisjoint(run) and all(bindable(port) for port in run):
            _handed_out.update(run)
            return base
    raise RuntimeError(f"no run of {count} free ports below the ephemeral range")


def free_port() -> int:
    """A free port not handed out before by this process."""
    return free_port_run(1)


def private_stack_flags(stack_dir: str) -> dict[str, object]:
    """Flags for a stack of its own: a folder and free ports."""
    return {
        "stack.dir": stack_dir,
        "stack.kafka_port": free_port(),
        "stack.controller_port": free_port(),
        "stack.redis_port": free_port(),
    }
