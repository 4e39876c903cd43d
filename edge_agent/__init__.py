"""accessctl edge agent: the standalone program for door devices (never imports Django)."""

__version__ = "0.1.0"
