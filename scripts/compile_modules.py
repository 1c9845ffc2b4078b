"""Build paysim's hot modules with Cython into the venv (paysim/infra/compiled.py says why and
how they load). Run by scripts/setup.sh; by hand: .venv/bin/python scripts/compile_modules.py.

Only modules whose source changed since their build are compiled again; builds of sources that
are gone are removed, and all of them when the recipe (Cython's version, its directives, this
script) changed. A module Cython or the C compiler refuses stays pure Python and is named, and
the exit status is then 1.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import re
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from paysim.infra.compiled import (
    BUILD_SUFFIX,
    PAYSIM_ROOT,
    CompiledModule,
    build_file_name,
    compiled_modules,
    default_build_dir,
    source_digest,
)

# Annotations stay hints, as in CPython: typed arguments would otherwise reject what Python
# accepts (a bool for an int, a subclass of str). Unreachable code is on purpose where it is
# (a bare `yield` after `return` makes a generator).
DIRECTIVES = {"annotation_typing": False, "binding": True, "warn.unreachable": False}
# No debug information (it made the builds 66 MB), and no warnings about Cython's generated C.
COMPILE_ARGS = ["-g0", "-w"]
RECIPE_FILE = "recipe"
BUILD_FILE = re.compile(r"paysim\.[\w.]+\.[0-9a-f]{20}" + re.escape(BUILD_SUFFIX))


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
        major, minor = sys.version_info[:2]
        return f"no {header} (install python{major}.{minor}-dev)"
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
    if not compiler or shutil.which(compiler[0]) is None:
        return "no C compiler (install gcc)"
    return None


def recipe() -> str:
    """What a build depends on besides its source."""
    import Cython

    script = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:20]
    return f"cython {Cython.__version__}; {sorted(DIRECTIVES.items())}; {script}\n"


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
        with contextlib.chdir(scratch):
            failed = _cythonize_and_compile(modules, sources, jobs)
        build_dir.mkdir(parents=True, exist_ok=True)
        for module in modules:
            if module.name in failed:
                continue
            source = sources[module.name]
            built = source.with_name(source.stem + BUILD_SUFFIX)
            if not built.exists():
                failed.append(module.name)
                continue
            # Named by the bytes compiled, not the checkout's file, which may have changed
            # meanwhile; copied under a temporary name and renamed, so that a process
            # starting now never finds half a build.
            final = build_dir / build_file_name(module.name, source_digest(source.read_bytes()))
            partial = build_dir / f".{final.name}.partial"
            shutil.copyfile(built, partial)
            os.replace(partial, final)
    return failed


def _cythonize_and_compile(
    modules: list[CompiledModule], sources: dict[str, Path], jobs: int
) -> list[str]:
    """In the copy's folder: C from each module, then the extensions; returns what Cython
    refused (what the C compiler refused has no build afterwards)."""
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
                compiler_directives=DIRECTIVES,
            )
        except Exception as error:  # Cython's own errors have no common base class
            say(f"{module.name}: Cython refused it ({type(error).__name__})")
            failed.append(module.name)
    if not extensions:
        return failed
    for extension in extensions:
        extension.extra_compile_args += COMPILE_ARGS
        # One module the compiler refuses leaves the others' builds: setuptools warns and
        # goes on with an optional extension.
        extension.optional = True
    distribution = Distribution({"ext_modules": extensions, "script_name": "compile"})
    command = distribution.get_command_obj("build_ext")
    command.inplace = True
    command.parallel = jobs
    command.ensure_finalized()
    # setuptools' command lines are noise; the compiler's errors go to stderr.
    with contextlib.redirect_stdout(io.StringIO()):
        command.run()
    return failed


def remove_old_builds(build_dir: Path, wanted: set[str], current_recipe: str) -> None:
    """Builds of sources that are gone, or all of them when the recipe changed; no other file."""
    recipe_file = build_dir / RECIPE_FILE
    try:
        same_recipe = recipe_file.read_text() == current_recipe
    except OSError:
        same_recipe = False
    for old in build_dir.iterdir():
        stale = not same_recipe or old.name not in wanted
        if stale and old.is_file() and BUILD_FILE.fullmatch(old.name):
            old.unlink()
    recipe_file.write_text(current_recipe)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", type=Path, default=default_build_dir())
    parser.add_argument("--jobs", type=int, default=2)
    options = parser.parse_args(argv)
    problem = missing_toolchain()
    if problem:
        say(f"not compiling: {problem}; paysim runs as pure Python")
        return 1
    modules = compiled_modules()
    build_dir: Path = options.build_dir
    build_dir.mkdir(parents=True, exist_ok=True)
    build_names = {m.name: m.build_name() for m in modules}  # each source read once
    remove_old_builds(build_dir, set(build_names.values()), recipe())
    todo = [m for m in modules if not (build_dir / build_names[m.name]).exists()]
    if not todo:
        say(f"{len(modules)} modules compiled, all current")
        return 0
    say(f"compiling {len(todo)} of {len(modules)} modules with Cython (one or two seconds each)")
    started = time.monotonic()
    failed = build(todo, build_dir, options.jobs)
    say(f"compiled {len(todo) - len(failed)} in {time.monotonic() - started:.0f} s into "
        f"{build_dir}")
    if failed:
        say(f"pure Python, as no build came out: {', '.join(sorted(failed))}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
