"""Find import cycles among the project's own modules (and, optionally, over-long modules).

Builds the import graph of every module under `src/steerlab/` and `src/hydra_plugins/`: module
level imports and imports inside functions count (a deferred import still runs when the function
does); imports under `if TYPE_CHECKING:` do not (they never execute). `from pkg.x import y` points
at `pkg.x.y` when that is a module, else at `pkg.x`; importing `pkg.x.y` also runs the `__init__`
of `pkg` and `pkg.x`, so those get an edge too (except the importer itself and its ancestors,
which Python has always started before the importer). Every strongly connected component of more
than one module, and every self-import, is printed as cycles `a -> b -> a` with the file:line of
each edge.

    python tools/import_cycles.py                 # exit 1 if there is a cycle
    python tools/import_cycles.py --max-lines 500 # also exit 1 if a module is over 500 lines

Standard library only.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGES = ("steerlab", "hydra_plugins")


@dataclass(frozen=True)
class Edge:
    """One import statement of `source` that makes `target` execute."""

    source: str
    target: str
    file: Path
    line: int
    deferred: bool  # inside a function: runs when the function is called


@dataclass
class Graph:
    modules: dict[str, Path] = field(default_factory=dict)  # dotted name -> file
    edges: dict[tuple[str, str], list[Edge]] = field(default_factory=dict)

    def successors(self, name: str) -> list[str]:
        return sorted({b for a, b in self.edges if a == name})

    @property
    def n_edges(self) -> int:
        return len(self.edges)


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def discover(src: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Every `.py` file under src/<package> for each package, by dotted module name."""
    found: dict[str, Path] = {}
    for pkg in packages:
        for path in sorted((src / pkg).rglob("*.py")):
            found[module_name(path, src)] = path
    return found


def is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def import_nodes(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Import statements that can execute, each with whether it sits inside a function."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []
    stack: list[tuple[ast.AST, bool]] = [(tree, False)]
    while stack:
        node, deferred = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append((node, deferred))
            continue
        if isinstance(node, ast.If) and is_type_checking(node.test):
            children: list[ast.AST] = list(node.orelse)  # the body only runs for type checkers
        else:
            children = list(ast.iter_child_nodes(node))
        inner = deferred or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        stack.extend((c, inner) for c in children)
    return sorted(found, key=lambda item: item[0].lineno)


def longest_known(name: str, modules: dict[str, Path]) -> str | None:
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in modules:
            return ".".join(parts[:k])
    return None


def targets(
    node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, modules: dict[str, Path]
) -> list[str]:
    """Project modules an import statement names directly."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
        return [t for t in (longest_known(n, modules) for n in names) if t]
    if node.level:
        base = importer.split(".")
        if not is_package:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
        stem = ".".join(base + ([node.module] if node.module else []))
    else:
        stem = node.module or ""
    found = []
    for alias in node.names:
        full = f"{stem}.{alias.name}"
        found.append(full if full in modules else longest_known(stem, modules))
    return [t for t in found if t]


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def build_graph(src: Path = SRC, packages: tuple[str, ...] = PACKAGES) -> Graph:
    graph = Graph(modules=discover(src, packages))
    for name, path in graph.modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        own = {name, *ancestors(name)}  # already running when this module runs
        for node, deferred in import_nodes(tree):
            direct = targets(node, name, path.name == "__init__.py", graph.modules)
            runs = direct + [a for t in direct for a in ancestors(t) if a not in own]
            for target in dict.fromkeys(runs):
                if target not in graph.modules:
                    continue
                edge = Edge(name, target, path, node.lineno, deferred)
                graph.edges.setdefault((name, target), []).append(edge)
    return graph


def components(graph: Graph) -> list[list[str]]:
    """Strongly connected components (iterative Tarjan), each sorted, in a stable order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(graph.successors(root)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph.successors(child))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                found.append(sorted(comp))
    return sorted(found)


def shortest_path(graph: Graph, start: str, goal: str, within: set[str]) -> list[str]:
    """Breadth-first path start -> ... -> goal inside `within` (exists in an SCC)."""
    prev: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            break
        for nxt in graph.successors(node):
            if nxt in within and nxt not in prev:
                prev[nxt] = node
                queue.append(nxt)
    path, node = [], goal
    while node is not None:
        path.append(node)
        node = prev[node]
    return path[::-1]


def find_cycles(graph: Graph) -> list[list[str]]:
    """Cycles covering every edge inside every cyclic SCC, plus self-imports; each cycle is a
    list of modules whose last element repeats the first, rotated to start at its least name."""
    cycles: dict[tuple[str, ...], list[str]] = {}
    for comp in components(graph):
        members = set(comp)
        for a, b in sorted(graph.edges):
            if a not in members or b not in members:
                continue
            if a == b:
                ring = [a]
            elif len(comp) > 1:
                ring = [a, *shortest_path(graph, b, a, members)[:-1]]
            else:
                continue
            k = ring.index(min(ring))
            ring = ring[k:] + ring[:k]
            cycles.setdefault(tuple(ring), ring + [ring[0]])
    return [cycles[k] for k in sorted(cycles)]


def long_modules(graph: Graph, max_lines: int) -> list[tuple[str, int]]:
    sizes = {
        name: len(path.read_text(encoding="utf-8").splitlines())
        for name, path in graph.modules.items()
    }
    return sorted((n, k) for n, k in sizes.items() if k > max_lines)


def describe(graph: Graph, cycle: list[str], root: Path) -> list[str]:
    lines = [" -> ".join(cycle)]
    for a, b in zip(cycle, cycle[1:], strict=False):
        for e in graph.edges[(a, b)]:
            where = e.file.relative_to(root) if e.file.is_relative_to(root) else e.file
            note = "  (inside a function)" if e.deferred else ""
            lines.append(f"    {a} -> {b}  {where}:{e.line}{note}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=SRC, help="folder holding the packages")
    parser.add_argument("--max-lines", type=int, default=None, help="also flag longer modules")
    parser.add_argument("packages", nargs="*", default=list(PACKAGES))
    args = parser.parse_args(argv)
    src = args.src.resolve()
    graph = build_graph(src, tuple(args.packages))
    root = src.parent
    failed = False
    cycles = find_cycles(graph)
    if cycles:
        failed = True
        print(f"{len(cycles)} import cycle(s) among {len(graph.modules)} modules:")
        for cycle in cycles:
            print("\n".join(describe(graph, cycle, root)))
    else:
        print(f"no import cycles ({len(graph.modules)} modules, {graph.n_edges} edges)")
    if args.max_lines is not None:
        long = long_modules(graph, args.max_lines)
        if long:
            failed = True
            print(f"{len(long)} module(s) over {args.max_lines} lines:")
            for name, n in long:
                print(f"    {name}  {graph.modules[name].relative_to(root)}  {n} lines")
        else:
            print(f"no module over {args.max_lines} lines")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
