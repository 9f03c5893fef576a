"""The config error of every linetap program (device and head office)."""

from __future__ import annotations

from sealedrec.errors import LinetapError


class ConfigError(LinetapError, ValueError):
    """The configuration file is missing, unreadable or invalid.

    ``problems`` holds one human-readable line per problem
    (``file:line: key: what is wrong; how to fix``).
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
