"""tools/import_cycles.py: the import-graph checker on small packages written for the test (a
cycle through a deferred import is found, a TYPE_CHECKING import is not an edge, a parent
package's `__init__` counts), then the project's own rules: no import cycle in `src/`, and no
module over 500 lines. Cycles make import order matter and break partial imports; long modules
hide them.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "import_cycles.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("import_cycles", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_cycles"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


tool = load_tool()


def write(src: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return src


@pytest.fixture
def pkg(tmp_path):
    """pkg.a -> pkg.b at module level, pkg.b -> pkg.a inside a function (a real cycle);
    pkg.c -> pkg.d at module level, pkg.d -> pkg.c only for type checkers (no cycle)."""
    return write(
        tmp_path / "src",
        {
            "pkg/__init__.py": "",
            "pkg/a.py": """
                from . import b

                value = 1
            """,
            "pkg/b.py": """
                def f():
                    from .a import value

                    return value
            """,
            "pkg/c.py": """
                from pkg.d import D
            """,
            "pkg/d.py": """
                from __future__ import annotations

                import typing
                from typing import TYPE_CHECKING

                if TYPE_CHECKING:
                    from pkg.c import D as Again
                if typing.TYPE_CHECKING:
                    import pkg.c


                class D:
                    pass
            """,
        },
    )


def test_cycle_through_a_function_import_is_found(pkg):
    graph = tool.build_graph(pkg, ("pkg",))
    assert sorted(graph.modules) == ["pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d"]
    assert tool.find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]
    (ab,) = graph.edges[("pkg.a", "pkg.b")]
    (ba,) = graph.edges[("pkg.b", "pkg.a")]
    assert (ab.file.name, ab.line, ab.deferred) == ("a.py", 1, False)
    assert (ba.file.name, ba.line, ba.deferred) == ("b.py", 2, True)


def test_type_checking_imports_are_not_edges(pkg):
    graph = tool.build_graph(pkg, ("pkg",))
    assert ("pkg.c", "pkg.d") in graph.edges
    assert ("pkg.d", "pkg.c") not in graph.edges
    assert sorted(graph.edges) == [("pkg.a", "pkg.b"), ("pkg.b", "pkg.a"), ("pkg.c", "pkg.d")]


def test_main_prints_the_cycle_with_file_and_line_and_fails(pkg, capsys):
    assert tool.main(["--src", str(pkg), "pkg"]) == 1
    out = capsys.readouterr().out
    assert "pkg.a -> pkg.b -> pkg.a" in out
    assert "pkg.a -> pkg.b  src/pkg/a.py:1\n" in out
    assert "pkg.b -> pkg.a  src/pkg/b.py:2  (inside a function)\n" in out
    assert "pkg.c" not in out


def test_main_passes_without_cycles(pkg, capsys):
    (pkg / "pkg" / "b.py").write_text("def f():\n    return 1\n")
    assert tool.main(["--src", str(pkg), "pkg"]) == 0
    assert capsys.readouterr().out == "no import cycles (5 modules, 2 edges)\n"


def test_importing_a_submodule_runs_its_parent_package(tmp_path):
    """pkg.top imports pkg.sub.leaf, which runs pkg/sub/__init__.py, which imports pkg.top."""
    src = write(
        tmp_path / "src",
        {
            "pkg/__init__.py": "",
            "pkg/top.py": "import pkg.sub.leaf\n",
            "pkg/sub/__init__.py": "from pkg import top\n",
            "pkg/sub/leaf.py": "from pkg.sub import other\n",
            "pkg/sub/other.py": "X = 1\n",
        },
    )
    graph = tool.build_graph(src, ("pkg",))
    assert tool.find_cycles(graph) == [["pkg.sub", "pkg.top", "pkg.sub"]]
    # a submodule's own package is already running when it runs: no edge back to it
    assert sorted(b for a, b in graph.edges if a == "pkg.sub.leaf") == ["pkg.sub.other"]


def test_max_lines_lists_long_modules(pkg, capsys):
    (pkg / "pkg" / "b.py").write_text("def f():\n    return 1\n")
    (pkg / "pkg" / "c.py").write_text("x = 1\n" * 20)  # d.py has 13 lines
    assert tool.main(["--src", str(pkg), "--max-lines", "19", "pkg"]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[1:] == [
        "1 module(s) over 19 lines:",
        "    pkg.c  src/pkg/c.py  20 lines",
    ]
    assert tool.main(["--src", str(pkg), "--max-lines", "20", "pkg"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["no module over 20 lines"]


def test_src_has_no_import_cycles(capsys):
    code = tool.main([])
    assert code == 0, capsys.readouterr().out


def test_src_has_no_module_over_500_lines():
    long = tool.long_modules(tool.build_graph(), 500)
    assert long == [], f"modules over 500 lines: {long}"
