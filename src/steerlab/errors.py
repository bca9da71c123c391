"""The two kinds of failure a run reports in one line (`steerlab: error: ...`, exit 2).

A `ConfigError` is the user's input: caught before any model loads where it can be, and a
trial that raises one counts toward `search.n_trials` (it would fail again). An `InfraError`
is the world around the run (judge endpoint down, tracking store broken, disk full): the
trials in flight are given back to the study and re-tried by the next run, never counted.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value that cannot work; names the value and what would be valid."""


class InfraError(RuntimeError):
    """A service or resource the run depends on failed; nothing about the configuration."""


def first_line(e: BaseException, default: str | None = None) -> str:
    """An error message's first line (a database error goes on with its SQL and parameters);
    `default`, else the error's type name, when it has none."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else (type(e).__name__ if default is None else default)
