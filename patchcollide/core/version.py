"""The package's version (one place: the CLI, report footers and every ``versions()`` record read it)."""

__version__ = "0.1.0"
