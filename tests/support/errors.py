"""What a command prints when it refuses: one ``streamtrain: error:`` line, never a traceback."""

from __future__ import annotations


def the_error_line(stderr: str) -> str:
    """The one error line of ``stderr`` (progress bars of libraries may come before it)."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("streamtrain: error: "), stderr
    return errors[0]
