"""The compiled hot path: Cython builds of paysim's modules, used only while their source is
unchanged.

`scripts/compile_modules.py` (run by `scripts/setup.sh`) builds the modules of
`COMPILED_PACKAGES` into `<venv>/paysim-compiled/<module>.<digest><suffix>`, the digest that of
the source it was built from. `install()` puts a finder first on `sys.meta_path` that loads a
build only when the module's source file still has that digest: a module edited since the last
build runs as written, never stale. `PAYSIM_PURE_PYTHON=1` loads no build at all (py-spy,
debuggers and coverage see inside source modules only). The builds are the same code: Cython
compiles the `.py` files as they are, without type declarations, so only the interpreter's
dispatch is gone.

This module is never compiled itself: the finder has to exist before the builds can load.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

COMPILED_PACKAGES = (
    "paysim.domain",
    "paysim.edge",
    "paysim.infra",
    "paysim.load",
    "paysim.pipeline",
)
NOT_COMPILED = frozenset({__name__})
PURE_ENV = "PAYSIM_PURE_PYTHON"
BUILD_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
PAYSIM_ROOT = Path(__file__).resolve().parent.parent


def default_build_dir() -> Path:
    """Beside the interpreter's packages: a venv made again starts without builds."""
    return Path(sys.prefix) / "paysim-compiled"


def source_digest(source: bytes) -> str:
    return hashlib.sha256(source).hexdigest()[:20]


def build_file_name(module: str, digest: str) -> str:
    return f"{module}.{digest}{BUILD_SUFFIX}"


@dataclass(frozen=True)
class CompiledModule:
    """One module that may be compiled: its dotted name and its source file."""

    name: str
    source: Path

    def digest(self) -> str:
        return source_digest(self.source.read_bytes())

    def build_name(self) -> str:
        return build_file_name(self.name, self.digest())


def compiled_modules(root: Path = PAYSIM_ROOT) -> list[CompiledModule]:
    """The modules directly in COMPILED_PACKAGES under root (the `paysim` package's folder);
    subpackages (load/targets) are not hot."""
    found = []
    for package in COMPILED_PACKAGES:
        folder = root.joinpath(*package.split(".")[1:])
        for source in sorted(folder.glob("*.py")):
            if source.stem == "__init__":
                continue
            name = f"{package}.{source.stem}"
            if name not in NOT_COMPILED:
                found.append(CompiledModule(name, source))
    return found


class BuildLoader(importlib.machinery.ExtensionFileLoader):
    """Loads a build, and gives its module's source to whoever asks (linecache, for the
    source lines of a traceback through compiled code: the build records its file as a path
    relative to the folder it was compiled in, which is found only from the checkout)."""

    def __init__(self, fullname: str, build: str,
                 source: importlib.machinery.SourceFileLoader) -> None:
        super().__init__(fullname, build)
        self.source = source

    def get_source(self, fullname: str) -> str | None:
        return self.source.get_source(fullname)


class BuildFinder(importlib.abc.MetaPathFinder):
    """Finds a module's build when one was made from the source as it is now."""

    def __init__(self, build_dir: Path, build_names: Sequence[str]) -> None:
        self._build_dir = build_dir
        self._builds: dict[str, set[str]] = {}
        for build_name in build_names:
            module = build_name.removesuffix(BUILD_SUFFIX).rsplit(".", 1)[0]
            self._builds.setdefault(module, set()).add(build_name)
        self.loaded: set[str] = set()
        self.stale: set[str] = set()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        builds = self._builds.get(fullname)
        if not builds or target is not None:
            return None  # importlib.reload goes through the source: a build cannot run again
        source_spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if source_spec is None or not (source_spec.origin or "").endswith(".py"):
            return None
        try:
            digest = source_digest(Path(source_spec.origin).read_bytes())
        except OSError:
            return None
        build = self._build_dir / build_file_name(fullname, digest)
        if build.name not in builds or not build.exists():
            self.stale.add(fullname)
            return None  # the source loads as usual
        self.loaded.add(fullname)
        build = str(build)
        loader = BuildLoader(fullname, build,
                             importlib.machinery.SourceFileLoader(fullname, source_spec.origin))
        return importlib.util.spec_from_file_location(fullname, build, loader=loader)


def install(build_dir: Path | None = None) -> BuildFinder | None:
    """Load builds from now on, unless PAYSIM_PURE_PYTHON is set or there are none."""
    if pure_python_asked():
        return None
    if any(isinstance(finder, BuildFinder) for finder in sys.meta_path):
        return None
    build_dir = build_dir or default_build_dir()
    try:
        build_names = [p.name for p in build_dir.iterdir() if p.name.endswith(BUILD_SUFFIX)]
    except OSError:
        return None
    if not build_names:
        return None
    finder = BuildFinder(build_dir, build_names)
    sys.meta_path.insert(0, finder)
    return finder


@dataclass(frozen=True)
class BuildState:
    """How many of the compilable modules have a build matching their source."""

    current: int
    total: int
    pure_python: bool

    def describe(self) -> str:
        if self.pure_python:
            return f"pure Python ({PURE_ENV} set)"
        if self.current == 0:
            return "pure Python (no builds: bash scripts/setup.sh makes them)"
        return f"{self.current} of {self.total} modules compiled"


def build_state(build_dir: Path | None = None) -> BuildState:
    """What a process started now from this venv runs (not what one running already loaded)."""
    build_dir = build_dir or default_build_dir()
    modules = compiled_modules()
    current = sum((build_dir / m.build_name()).exists() for m in modules)
    return BuildState(current, len(modules), pure_python_asked())


def pure_python_asked() -> bool:
    """PAYSIM_PURE_PYTHON set to anything but empty or 0."""
    return os.environ.get(PURE_ENV, "") not in ("", "0")
