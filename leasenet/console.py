"""What the CLI's commands share below the CLI itself: the one-line error a command raises for
the user. `leasenet.cli` turns it into `leasenet: <message>` and exit status 1."""

from __future__ import annotations


class CliError(Exception):
    """A one-line message for the user."""
