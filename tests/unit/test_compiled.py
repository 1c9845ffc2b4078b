"""The compiled hot path (paysim/infra/compiled.py, scripts/compile_modules.py): a build loads
only while its module's source is the one it was built from, and setup built every hot module."""

from __future__ import annotations

import importlib
import importlib.util
import linecache
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from paysim.infra import compiled
from paysim.infra.compiled import BUILD_SUFFIX, BuildFinder, CompiledModule

ROOT = Path(__file__).resolve().parents[2]


def _compile_script():
    spec = importlib.util.spec_from_file_location(
        "compile_modules", ROOT / "scripts" / "compile_modules.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def probe_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A package `cyprobe` with one module, importable from tmp_path."""
    package = tmp_path / "src" / "cyprobe"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(package.parent))
    yield package
    for name in [n for n in sys.modules if n.startswith("cyprobe")]:
        del sys.modules[name]


def _import_with(finder: BuildFinder, name: str):
    sys.modules.pop(name, None)
    sys.meta_path.insert(0, finder)
    try:
        return importlib.import_module(name)
    finally:
        sys.meta_path.remove(finder)


def test_a_build_loads_while_its_source_is_unchanged_and_not_after(
    probe_package: Path, tmp_path: Path
) -> None:
    source = probe_package / "mod.py"
    module = CompiledModule("cyprobe.mod", source)
    build_dir = tmp_path / "builds"
    assert _compile_script().build([module], build_dir, root=probe_package) == []
    builds = [p.name for p in build_dir.iterdir()]
    assert builds == [module.build_name()]

    finder = BuildFinder(build_dir, builds)
    loaded = _import_with(finder, "cyprobe.mod")
    assert loaded.__file__.endswith(BUILD_SUFFIX)
    assert loaded.double(21) == 42
    assert finder.loaded == {"cyprobe.mod"} and finder.stale == set()

    source.write_text("def double(x):\n    return x + x + 1\n")
    edited = _import_with(finder, "cyprobe.mod")
    assert edited.__file__ == str(source)
    assert edited.double(21) == 43
    assert finder.stale == {"cyprobe.mod"}

    # A reload goes through the source, whatever there is to load.
    source.write_text("def double(x):\n    return 2 * x\n")
    assert importlib.reload(edited).__file__ == str(source)


def test_a_traceback_through_a_build_shows_its_source_lines(
    probe_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = probe_package / "fails.py"
    source.write_text("def check(x):\n    assert x > 0, 'not positive'\n")
    module = CompiledModule("cyprobe.fails", source)
    build_dir = tmp_path / "builds"
    assert _compile_script().build([module], build_dir, root=probe_package) == []
    loaded = _import_with(BuildFinder(build_dir, [module.build_name()]), "cyprobe.fails")
    assert loaded.__file__.endswith(BUILD_SUFFIX)
    # Away from the folder it was compiled in: its recorded file name leads nowhere there.
    monkeypatch.chdir(tmp_path)
    linecache.clearcache()
    with pytest.raises(AssertionError) as raised:
        loaded.check(-1)
    frames = traceback.extract_tb(raised.value.__traceback__)
    assert frames[-1].lineno == 2
    assert frames[-1].line == "assert x > 0, 'not positive'"


def test_a_module_cython_refuses_stays_pure_python(probe_package: Path, tmp_path: Path) -> None:
    broken = probe_package / "broken.py"
    broken.write_text("def f(:\n")
    failed = _compile_script().build(
        [CompiledModule("cyprobe.broken", broken)], tmp_path / "builds", root=probe_package)
    assert failed == ["cyprobe.broken"]


def test_no_builds_are_loaded_when_pure_python_is_asked_for_or_there_are_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / f"paysim.domain.money.0{BUILD_SUFFIX}").write_bytes(b"")
    monkeypatch.setenv(compiled.PURE_ENV, "1")
    assert compiled.install(tmp_path) is None
    assert compiled.build_state(tmp_path).describe().startswith("pure Python (PAYSIM_PURE")
    monkeypatch.delenv(compiled.PURE_ENV)
    assert compiled.install(tmp_path / "missing") is None
    assert compiled.build_state(tmp_path / "missing").current == 0


def test_old_builds_are_removed_and_nothing_else(tmp_path: Path) -> None:
    script = _compile_script()
    current = f"paysim.domain.money.{'a' * 20}{BUILD_SUFFIX}"
    old = f"paysim.domain.money.{'b' * 20}{BUILD_SUFFIX}"
    for name in (current, old, "notes.txt"):
        (tmp_path / name).write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "recipe").write_text("recipe 1\n")
    script.remove_old_builds(tmp_path, {current}, "recipe 1\n")
    assert {p.name for p in tmp_path.iterdir()} == {current, "notes.txt", "recipe", "sub"}
    script.remove_old_builds(tmp_path, {current}, "recipe 1\n")
    assert (tmp_path / current).exists()
    script.remove_old_builds(tmp_path, {current}, "recipe 2\n")  # another Cython, say
    assert {p.name for p in tmp_path.iterdir()} == {"notes.txt", "recipe", "sub"}


@pytest.fixture(scope="module")
def current_builds() -> None:
    """Every hot module built from its source as it is now: scripts/setup.sh did it (test.sh
    runs it first); after an edit without it, the script compiles the changed modules here."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "compile_modules.py")],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_hot_module_compiles(current_builds: None) -> None:
    """A module Cython or the C compiler refuses fails here, named."""
    build_dir = compiled.default_build_dir()
    modules = compiled.compiled_modules()
    assert [m.name for m in modules if not (build_dir / m.build_name()).exists()] == []
    assert len(modules) > 50
    assert compiled.build_state().current == len(modules)


def test_paysim_loads_its_builds_in_a_new_process(current_builds: None) -> None:
    code = ("import paysim.pipeline.processor as p, paysim.infra.compiled as c; "
            "print(p.__file__); print(c.__file__)")
    env = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60, env=env)
    processor_file, compiled_file = done.stdout.split()
    assert processor_file.endswith(BUILD_SUFFIX)
    assert compiled_file.endswith("compiled.py")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60, env={**env, compiled.PURE_ENV: "1"})
    assert done.stdout.split()[0].endswith("processor.py")
