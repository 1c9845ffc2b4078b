"""Build paysim's hot modules with Cython into the venv (paysim/infra/compiled.py says why and
how they load). Run by scripts/setup.sh; by hand: .venv/bin/python scripts/compile_modules.py.

Only modules whose source changed since their build are compiled again; builds of sources that
are gone are removed. A module Cython or the C compiler refuses stays pure Python, and is named.
Exit status 0 unless nothing could be built at all.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from paysim.infra.compiled import (
    BUILD_SUFFIX,
    PAYSIM_ROOT,
    CompiledModule,
    compiled_modules,
    default_build_dir,
)


def say(message: str) -> None:
    print(f"compile: {message}", flush=True)


def missing_toolchain() -> str | None:
    """What stops a build on this machine, or None."""
    try:
        import Cython  # noqa: F401
        import setuptools  # noqa: F401
    except ImportError as error:
        return f"{error.name} is not installed in this venv"
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not header.exists():
        return f"no {header} (install python3-dev)"
    if shutil.which(sysconfig.get_config_var("CC").split()[0] or "cc") is None:
        return "no C compiler (install gcc)"
    return None


def build(
    modules: list[CompiledModule], build_dir: Path, jobs: int = 2, root: Path = PAYSIM_ROOT
) -> list[str]:
    """Compile modules (of the package whose folder is root) into build_dir; returns the names
    of those that failed."""
    with tempfile.TemporaryDirectory(prefix="paysim-compile-") as scratch:
        # A copy of the package tree, so that the generated C and objects stay out of the
        # checkout and each module gets its dotted name from the __init__.py files around it.
        tree = Path(scratch) / root.name
        shutil.copytree(root, tree, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        sources = {m.name: tree / m.source.relative_to(root) for m in modules}
        with _in_directory(Path(scratch)):
            failed = _cythonize_and_compile(modules, sources, jobs)
        build_dir.mkdir(parents=True, exist_ok=True)
        for module in modules:
            if module.name in failed:
                continue
            built = sources[module.name].with_name(sources[module.name].stem + BUILD_SUFFIX)
            if not built.exists():
                say(f"{module.name}: no build came out; stays pure Python")
                failed.append(module.name)
                continue
            shutil.move(built, build_dir / module.build_name())
    return failed


def _cythonize_and_compile(
    modules: list[CompiledModule], sources: dict[str, Path], jobs: int
) -> list[str]:
    """In the copy's folder: C from each module, then the extensions; returns what failed."""
    from Cython.Build import cythonize
    from setuptools import Distribution

    failed = []
    extensions = []
    for module in modules:
        try:
            extensions += cythonize(
                [str(sources[module.name].relative_to(Path.cwd()))],
                language_level=3,
                quiet=True,
                # Annotations stay hints, as in CPython: a typed argument would otherwise
                # reject what Python accepts (a bool for an int, a subclass of str).
                compiler_directives={"annotation_typing": False, "binding": True},
            )
        except Exception as error:  # Cython's own errors have no common base class
            say(f"{module.name}: Cython refused it ({type(error).__name__}); stays pure Python")
            failed.append(module.name)
    if not extensions:
        return failed
    for extension in extensions:
        extension.extra_compile_args.append("-w")  # warnings on Cython's generated C: noise
    distribution = Distribution({"ext_modules": extensions, "script_name": "compile"})
    command = distribution.get_command_obj("build_ext")
    command.inplace = True
    command.parallel = jobs
    command.ensure_finalized()
    try:
        # The compiler's command lines are noise; its errors come back in the exception.
        with contextlib.redirect_stdout(io.StringIO()):
            command.run()
    except Exception as error:
        say(f"the C compiler failed: {error}")
        return [m.name for m in modules]
    return failed


@contextlib.contextmanager
def _in_directory(directory: Path) -> Iterator[None]:
    here = Path.cwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(here)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", type=Path, default=default_build_dir())
    parser.add_argument("--jobs", type=int, default=2)
    options = parser.parse_args(argv)
    modules = compiled_modules()
    wanted = {m.build_name() for m in modules}
    build_dir: Path = options.build_dir
    if build_dir.exists():
        for old in build_dir.iterdir():
            if old.name not in wanted:
                old.unlink()
    todo = [m for m in modules if not (build_dir / m.build_name()).exists()]
    if not todo:
        say(f"{len(modules)} modules compiled, all current")
        return 0
    problem = missing_toolchain()
    if problem:
        say(f"not compiling: {problem}; paysim runs as pure Python")
        return 1
    say(f"compiling {len(todo)} of {len(modules)} modules with Cython (one or two seconds each)")
    started = time.monotonic()
    failed = build(todo, build_dir, options.jobs)
    done = len(todo) - len(failed)
    say(f"compiled {done} in {time.monotonic() - started:.0f} s into {build_dir}")
    return 0 if done or len(failed) < len(modules) else 1


if __name__ == "__main__":
    sys.exit(main())
