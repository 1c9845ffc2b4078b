"""What the stack manager needs to know of each local service it runs."""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from paysim.infra.config import StackSettings
from paysim.stack.logs import tail_lines
from paysim.stack.prerequisites import Missing

Announce = Callable[[str], None]


class Component(ABC):
    """One local service: where it lives on disk, how to start it and how to ask if it is up."""

    name: str

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings

    @property
    def home(self) -> Path:
        """Config, logs and pid record of this component."""
        return self.settings.dir / self.name

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def record_path(self) -> Path:
        return self.home / "pid.json"

    @property
    def output_path(self) -> Path:
        """The process's stdout and stderr."""
        return self.home / f"{self.name}.out"

    @property
    @abstractmethod
    def port(self) -> int: ...

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @abstractmethod
    def missing_programs(self) -> list[Missing]:
        """What must be installed before this component can start."""

    @abstractmethod
    def prepare(self, announce: Announce) -> None:
        """Write configs and initialise storage; called before every start."""

    @abstractmethod
    def command(self) -> list[str]: ...

    @abstractmethod
    def version(self) -> str: ...

    @abstractmethod
    def answers(self, address: str, timeout: float) -> bool:
        """True when the service at ``address`` answers a real request (metadata, PING)."""

    def wipe(self) -> None:
        """Delete everything the component stored, so the next start is a first start."""
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def ports(self) -> list[int]:
        """Every port the component listens on."""
        return [self.port]

    @property
    def port_flags(self) -> str:
        """The flags that move it to other ports, for error messages."""
        return f"--{self.name}-port"

    def log_paths(self) -> list[Path]:
        return [self.output_path]

    def log_sizes(self) -> dict[Path, int]:
        """Where each log ends now, so a later tail shows only what came after."""
        return {path: path.stat().st_size if path.exists() else 0 for path in self.log_paths()}

    def log_tail(self, since: dict[Path, int] | None = None) -> list[str]:
        lines: list[str] = []
        for path in self.log_paths():
            tail = tail_lines(path, start=(since or {}).get(path, 0))
            if tail:
                lines.append(f"--- {path} (last {len(tail)} lines)")
                lines.extend(tail)
        return lines or [f"(nothing new in the logs under {self.home})"]
