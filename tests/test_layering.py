"""The core points one way: nothing under ``scoreboard/`` imports a process package.

``scoreboard/`` is what ingest, the workers and the broadcaster share; each of
them may import it, never the reverse (README, Layout). Every import statement
counts, those inside functions too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.servers import PROJECT_DIR

PROCESS_PACKAGES = ("ingest", "workers", "broadcaster")


def imported_modules(path: Path) -> list[str]:
    """Every module an ``import`` or ``from ... import`` of ``path`` names."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(node.module)
    return found


def test_nothing_under_scoreboard_imports_a_process_package() -> None:
    sources = sorted((PROJECT_DIR / "scoreboard").rglob("*.py"))
    assert len(sources) > 20  # the core was found
    wrong = [f"{path.relative_to(PROJECT_DIR)}: {module}" for path in sources
             for module in imported_modules(path)
             if module.split(".")[0] in PROCESS_PACKAGES]
    assert wrong == []


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    from workers.leaderboard import rebuild_board\n"
                      "import ingest.app\n")
    assert sorted(imported_modules(source)) == ["ingest.app", "workers.leaderboard"]
