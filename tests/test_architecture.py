"""The import rules of the package, checked on its real import graph, read from the source."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

import preview_worker

PACKAGE = Path(preview_worker.__file__).resolve().parent
ROOT_NAME = "preview_worker"
RENDER = "preview_worker.render"
# The modules a worker process runs; none may bring Flask in, however indirectly.
WORKER_SIDE = [
    "preview_worker.jobs",
    "preview_worker.worker",
    "preview_worker.hooks",
    "preview_worker.previews",
    "preview_worker.progress",
    "preview_worker.recovery",
    "preview_worker.supervisor",
    "preview_worker.logs",
    "preview_worker.store",
    "preview_worker.observe.outcomes",
    "preview_worker.webhooks.delivery",
    "preview_worker.webhooks.notices",
]


def module_name(path: Path) -> str:
    """Return the dotted name of a module file of the package."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=1)
def modules() -> dict[str, Path]:
    """Return every module of the package by dotted name."""
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def parents(name: str) -> list[str]:
    """Return the packages Python imports before a module: a, a.b for a.b.c."""
    parts = name.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def imported_by(name: str) -> set[str]:
    """Return what a module imports anywhere in it, at the top or inside a function."""
    path = modules()[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # "from package import module" imports the module too.
            found.update(f"{base}.{alias.name}" for alias in node.names
                         if f"{base}.{alias.name}" in modules())
    return {each for each in found if each}


def reachable(start: str, skip: frozenset[str] = frozenset()) -> set[str]:
    """Return every module a module brings in, directly or through the package's modules."""
    seen: set[str] = set(skip)
    todo = [start, *parents(start)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in modules():
            for each in imported_by(name):
                todo.extend([each, *parents(each)])
    return seen - {start} - skip


def third_party(names: set[str]) -> set[str]:
    """Return the top-level distributions among imported names, the package's own left out."""
    return {name.split(".")[0] for name in names if not name.startswith(ROOT_NAME)}


def test_the_checker_sees_the_imports_it_judges() -> None:
    """The graph is real: the factory reaches Flask and the worker reaches RQ through it."""
    assert "flask" in third_party(reachable("preview_worker.web.app"))
    assert "rq" in third_party(reachable("preview_worker.worker"))
    assert "preview_worker.web.api" in reachable("preview_worker.web.app")
    assert "jsonschema" in third_party(reachable(RENDER))  # through the schema's defaults


@pytest.mark.parametrize("name", sorted(name for name in modules() if name.startswith(RENDER)))
def test_the_render_core_knows_no_queue_redis_or_web(name: str) -> None:
    """Nothing of render/ brings in rq, redis or flask, however indirectly."""
    assert third_party(reachable(name)) & {"rq", "redis", "flask", "werkzeug"} == set()


@pytest.mark.parametrize("name", WORKER_SIDE)
def test_the_worker_side_never_imports_flask(name: str) -> None:
    """Jobs, workers, hooks, previews, the store and the recorders bring in no web framework."""
    assert third_party(reachable(name)) & {"flask", "werkzeug", "rq_dashboard"} == set()


def test_the_blueprint_never_imports_the_factory() -> None:
    """The blueprint and its shared helpers reach no app factory; only entry points do."""
    for name in ("preview_worker.web.api", "preview_worker.web.shared",
                 "preview_worker.web.dashboard"):
        assert "preview_worker.web.app" not in reachable(name), name
    importers = {name for name in modules() if "preview_worker.web.app" in imported_by(name)}
    assert importers <= {"preview_worker.cli", "preview_worker.web.server"}


STORE_MODULES = sorted(name for name in modules() if name.startswith("preview_worker.store"))


@pytest.mark.parametrize("name", STORE_MODULES)
def test_the_store_knows_no_payload(name: str) -> None:
    """The artifact store imports nothing of rendering, payloads, previews or queues."""
    forbidden = {"preview_worker.render", "preview_worker.schema", "preview_worker.previews",
                 "preview_worker.queueing", "preview_worker.web"}
    # The package's own __init__ re-exports validate_payload for library users; leave it out.
    brought = reachable(name, skip=frozenset({ROOT_NAME}))
    assert not {each for each in brought for bad in forbidden if each.startswith(bad)}


def test_no_module_imports_another_that_imports_it_back() -> None:
    """The package's import graph, top-level and lazy imports alike, has no cycle of two."""
    own = {name: {each for each in imported_by(name) if each in modules()} for name in modules()}
    pairs = {tuple(sorted((a, b))) for a, edges in own.items() for b in edges
             if a in own.get(b, set()) and a != b}
    # A package importing its own submodule is how a package re-exports; not a loop.
    assert {pair for pair in pairs if not pair[1].startswith(pair[0] + ".")} == set()


def test_a_worker_process_loads_no_flask() -> None:
    """Given a fresh interpreter, importing the worker, jobs and hooks loads no Flask at all."""
    code = (
        "import json, sys\n"
        "import preview_worker.worker, preview_worker.jobs, preview_worker.hooks\n"
        "import preview_worker.supervisor, preview_worker.recovery\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('flask', 'werkzeug', 'rq_dashboard'))))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert json.loads(loaded) == []
