"""The library install stays lean: `import transport` pulls in no harness module, and the harness says
what to install when its extra is missing (instead of a bare ImportError in a trainer's pytest)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

HARNESS_MODULES = (
    "chaos",
    "matplotlib",
    "aiohttp",
    "jinja2",
    "pydantic",
    "rich",
    "click",
    "yaml",
    "toxiproxy",
)


def _run(code: str, *, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env_path = f"import sys; sys.path.insert(0, {str(path)!r}); " if path is not None else ""
    return subprocess.run(
        [sys.executable, "-c", env_path + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _loaded_after(code: str) -> set[str]:
    """Top-level names of every module loaded after `code` ran in a fresh interpreter."""
    done = _run(textwrap.dedent(code) + "\nimport json, sys; print(json.dumps(sorted(sys.modules)))")
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_import_transport_loads_no_harness_module() -> None:
    loaded = _loaded_after(
        """
        import transport
        from transport import Consumer, Producer, SlotDescriptor, fetch_batch, DataPackerMixin
        """
    )
    top = {m.split(".")[0] for m in loaded}
    assert "transport" in top and "numpy" in top  # the probe did import the library
    assert not top & set(HARNESS_MODULES), sorted(top & set(HARNESS_MODULES))


def test_every_library_module_imports_without_the_harness() -> None:
    """Each module of `transport` (the facade, client, server, serve, ...) loads no harness library and
    no benchmark: the bench lives in `chaos.bench`, so a trainer never imports it."""
    loaded = _loaded_after(
        """
        import importlib, pkgutil, transport
        for info in pkgutil.walk_packages(transport.__path__, "transport."):
            importlib.import_module(info.name)
        """
    )
    assert {"transport.facade", "transport.client", "transport.serve"} <= loaded  # the walk found them
    top = {m.split(".")[0] for m in loaded}
    assert not top & set(HARNESS_MODULES), sorted(top & set(HARNESS_MODULES))
    assert not [m for m in loaded if "bench" in m], sorted(m for m in loaded if "bench" in m)


def _fake_install(tmp_path: Path, requirement: str) -> Path:
    """A slotwire distribution whose `chaos` extra asks for `requirement`, first on sys.path."""
    info = tmp_path / "slotwire-9.9.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: slotwire\nVersion: 9.9\n"
        f'Requires-Dist: numpy\nProvides-Extra: chaos\nRequires-Dist: {requirement} ; extra == "chaos"\n'
    )
    return tmp_path


def test_extra_requirements_come_from_the_installed_metadata() -> None:
    done = _run("from chaos.extra import extra_requirements, missing; print(extra_requirements(), missing())")
    assert done.returncode == 0, done.stderr
    assert "click" in done.stdout and "matplotlib" in done.stdout and done.stdout.rstrip().endswith("[]")


def test_launcher_names_the_missing_extra(tmp_path: Path) -> None:
    path = _fake_install(tmp_path, "no-such-dist-slotwire-test>=1")
    done = _run("from chaos.launcher import main; main()", path=path)
    assert done.returncode == 3
    assert "no-such-dist-slotwire-test" in done.stderr
    assert "pip install 'slotwire[chaos]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_pytest_entry_stays_inert_without_the_extra(tmp_path: Path) -> None:
    path = _fake_install(tmp_path, "no-such-dist-slotwire-test>=1")
    probe = "import chaos.pytest_entry as e; print(sorted(n for n in vars(e) if n.startswith('pytest_')))"
    without = _run(probe, path=path)
    assert without.returncode == 0, without.stderr
    assert without.stdout.strip() == "[]"
    with_extra = _run(probe)
    assert with_extra.returncode == 0, with_extra.stderr
    assert "pytest_addoption" in with_extra.stdout and "pytest_collect_file" in with_extra.stdout
