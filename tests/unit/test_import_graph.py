"""The shape of the code, read from the source with `ast`: no import cycle among the modules of
`herd/`, `notifier/` and `web/`; the notifier and the web use the herd only through `herd.api`
(and `herd.config`, for the wiring); the pure modules reach no I/O library, directly or through
what they import.

Only imports that run count: those under `if TYPE_CHECKING:` are for the type checker."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]
PACKAGES: Final = ("herd", "notifier", "web")

PURE: Final = (
    "herd.wire",  # and, as a package, every module in it
    "herd.geo",
    "herd.places.answers",
    "herd.places.venue_files",
    "herd.places.ranking",
    "herd.ops",
    "herd.views",
    "herd.state",
    "herd.rules",
    "herd.tokens",
    "herd.zones",
    "herd.venues",
    "herd.records",
    "herd.backoff",
    "herd.offload",
    "herd.errors",
    "herd.fairness",
    "herd.logrules",
    "herd.changes",
    "herd.leases",
    "herd.slices",
    "herd.clock",
    "herd.upview",
    "herd.api",
    "herd.clients.talk_core",
    "notifier.render",
    "notifier.event_views",
    "notifier.digest",
    "notifier.held_digests",
    "notifier.duties",
    "notifier.routing",
    "notifier.message",
    "notifier.naturaltime",
    "notifier.errors",
    "notifier.chat",  # the bot's conversation: every module in it
    "notifier.mime",
    "notifier.stanza",
    "notifier.contacts",
    "herd.clients.demoscript",
    "web.model",
    "web.svg",
    "web.rules",
    "web.templates",
    "web.host",
    "web.links",
    "web.shapes",
    "web.status",
    "web.live",
    "web.prefs",
    "web.mine",
)

IO: Final = frozenset({"twisted", "asyncio", "sqlite3", "socket", "slixmpp", "aiosmtplib"})
NOTIFIER_MAY_USE: Final = frozenset({"herd.api", "herd.config"})
"""What of the herd the notifier and the web may import."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement but those under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in _runtime_imports_of(child))
            continue
        yield from _runtime_imports_of(node)


def _runtime_imports_of(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    else:
        yield from _runtime_imports(node)


@cache
def imports(module: str) -> frozenset[str]:
    """The full names `module` imports when it runs: `from a.b import c` is `a.b.c` when that
    is a module of ours, else `a.b`."""
    path = modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            full = f"{base}.{alias.name}"
            names.add(full if full in modules() else base)
    return frozenset(names)


def ours(module: str) -> frozenset[str]:
    return frozenset(name for name in imports(module) if name in modules())


def reached(module: str) -> set[str]:
    """`module` and every module of ours it imports, directly or not."""
    seen, todo = {module}, [module]
    while todo:
        for name in ours(todo.pop()):
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def pure_modules() -> list[str]:
    found = []
    for name in PURE:
        within = [m for m in modules() if m == name or m.startswith(name + ".")]
        assert within, f"{name} is listed as pure but does not exist"
        found.extend(within)
    return found


def test_no_import_cycle() -> None:
    """Depth-first search: a module met again while still on the path closes a cycle."""
    done: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append([*path[path.index(module) :], module])
            return
        if module in done:
            return
        for name in sorted(ours(module)):
            visit(name, [*path, module])
        done.add(module)

    for module in sorted(modules()):
        visit(module, [])
    assert cycles == []


def test_the_notifier_uses_only_the_herds_public_interface() -> None:
    reaching_in = {
        module: sorted(name for name in imports(module) if name.split(".")[0] == "herd")
        for module in modules()
        if module.split(".")[0] == "notifier"
    }
    assert {
        module: names for module, names in reaching_in.items() if not set(names) <= NOTIFIER_MAY_USE
    } == {}


def test_the_web_uses_only_the_herds_public_interface() -> None:
    """Like the notifier: `herd.api` (and `herd.config`); nothing of the notifier either."""
    reaching_in = {
        module: sorted(
            name for name in imports(module) if name.split(".")[0] in ("herd", "notifier")
        )
        for module in modules()
        if module.split(".")[0] == "web"
    }
    assert reaching_in, "the web package is not seen"
    assert {
        module: names for module, names in reaching_in.items() if not set(names) <= NOTIFIER_MAY_USE
    } == {}


def test_pure_modules_reach_no_io() -> None:
    """Through every module of ours they import: a pure module importing one that imports
    Twisted would bring the reactor in all the same."""
    pure = pure_modules()
    assert "herd.api" in pure and "notifier.render" in pure
    found = {
        module: sorted(
            f"{inner} imports {name}"
            for inner in reached(module)
            for name in imports(inner)
            if name.split(".")[0] in IO
        )
        for module in pure
    }
    assert {module: names for module, names in found.items() if names} == {}


def test_the_graph_is_read_from_the_source() -> None:
    """The checks above would pass on an empty graph: make sure they see the edges."""
    assert "herd.api" in ours("notifier.feed")
    assert "twisted" in {name.split(".")[0] for name in imports("herd.server")}
    assert "herd.ops" not in ours("herd.changes")  # under TYPE_CHECKING only


HERD_MAY_USE_THE_NOTIFIER: Final = frozenset(
    {"herd.service", "herd.cli", "herd.localdev", "herd.up", "herd.clients.demo"}
)
"""The wiring, which builds the notifier and its local services, and the demo, which reads the
mail sink's files to show what the get-together sent."""


def test_the_herd_imports_the_notifier_only_in_the_wiring() -> None:
    reaching_out = {
        module
        for module in modules()
        if module.split(".")[0] == "herd"
        and any(name.split(".")[0] == "notifier" for name in imports(module))
    }
    assert "herd.service" in reaching_out
    assert reaching_out <= HERD_MAY_USE_THE_NOTIFIER, sorted(reaching_out)
