"""Control plane of Crucible: API, store, orchestration, serving, CLI and SDK."""

__version__ = "0.1.0"
