"""The joints of the code, read from its imports: what each layer may import, and no cycle.

Every import counts (module level, function level, under ``TYPE_CHECKING``): a cycle hidden
in a function still makes the next change harder.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

BOT = Path(__file__).resolve().parent.parent / "bot"

# Libraries that do I/O or speak a provider's protocol: the domain knows none of them.
IO_LIBRARIES = frozenset(
    {
        "aiohttp",
        "aiosmtplib",
        "aiosqlite",
        "asyncpg",
        "httpx",
        "multidict",
        "prometheus_client",
        "requests",
        "slack_bolt",
        "slack_sdk",
        "telegram",
        "typer",
        "yaml",
    }
)
# Known exceptions, each with its reason; the test fails when one is no longer needed.
DOMAIN_EXCEPTIONS = {
    # The renderer reads the wording files (claims.<locale>.yaml, labels.<locale>.yaml)
    # shipped beside the templates.
    ("bot.domain.rendering", "yaml"),
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in BOT.rglob("*.py"):
        parts = list(path.relative_to(BOT.parent).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[str]:
    """Every module named by an import in ``path`` (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _internal(imported: str) -> str | None:
    """The module of ``bot`` an import names (its longest known prefix), or None."""
    while imported and imported not in MODULES:
        imported = imported.rpartition(".")[0]
    return imported or None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        targets = {_internal(i) for i in _imports(name, path)}
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import themselves through the others."""
    reach: dict[str, set[str]] = {}
    for start in graph:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        reach[start] = seen
    groups, placed = [], set()
    for module in sorted(graph):
        if module in placed:
            continue
        group = sorted(
            m for m in graph if m == module or (m in reach[module] and module in reach[m])
        )
        placed.update(group)
        if len(group) > 1:
            groups.append(group)
    return groups


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _violations(package: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list:
    found = []
    for name, path in sorted(MODULES.items()):
        if not _within(name, package) or name in allowed:
            continue
        for imported in _imports(name, path):
            target = _internal(imported) or imported
            if any(_within(target, f) for f in forbidden):
                found.append((name, imported))
    return sorted(set(found))


def test_the_graph_sees_every_kind_of_import() -> None:
    # A function-level import (bot.interfaces.cli → bot.app) and a package's relative
    # imports are edges like any other.
    graph = _graph()
    assert "bot.app" in graph["bot.interfaces.cli"]
    assert "bot.domain.models" in graph["bot.domain.errors"] | graph["bot.domain.services"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_domain_imports_no_adapter_store_interface_or_io_library() -> None:
    outward = ("bot.app", "bot.runtime", "bot.channels", "bot.store", "bot.interfaces")
    assert _violations("bot.domain", (*outward, "bot.delivery", "bot.config")) == []
    libraries = {
        (name, imported.partition(".")[0])
        for name, path in MODULES.items()
        if _within(name, "bot.domain")
        for imported in _imports(name, path)
        if imported.partition(".")[0] in IO_LIBRARIES
    }
    assert libraries == DOMAIN_EXCEPTIONS


def test_the_engine_imports_no_interface() -> None:
    assert _violations("bot.delivery", ("bot.interfaces", "bot.app", "bot.runtime")) == []


def test_the_interfaces_never_import_the_composition_root() -> None:
    # The CLI is the process's entry point: it may call the composition root.
    entry = tuple(n for n in MODULES if n.startswith("bot.interfaces.cli"))
    assert entry  # the exception names modules that exist
    assert _violations("bot.interfaces", ("bot.app",), allowed=entry) == []


def test_adapters_never_import_interfaces() -> None:
    assert _violations("bot.channels", ("bot.interfaces", "bot.app", "bot.runtime")) == []


def test_no_import_cycle_in_bot() -> None:
    # Every import counts: TYPE_CHECKING and function-local ones too.
    assert _cycles(_graph()) == []
