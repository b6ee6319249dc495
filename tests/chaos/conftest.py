"""The chaos suite prints one figure table per scenario at the end of the run (also under -q)."""

from __future__ import annotations

import pytest

TABLES: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TABLES:
        terminalreporter.section("chaos figures")
        for table in TABLES:
            terminalreporter.write_line(table)
            terminalreporter.write_line("")
