"""Persistence: the schema, its migrations, and the repositories that hold every query."""
