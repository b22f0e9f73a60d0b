"""The ``crucible`` command line (console script ``services.cli:app``).

``common`` holds the Typer app, its command groups and the helpers every command uses; each
other module adds the commands of one concern to them, so importing them all registers the
whole command tree."""

# isort: off
# The order of these imports is the order `crucible --help` lists the top-level commands in.
from services.cli.common import app
from services.cli import stack  # noqa: F401  (up, api, demo, db upgrade)
from services.cli import jobs  # noqa: F401  (datasets, submit, jobs)
from services.cli import serving  # noqa: F401  (feedback, promote, rollback, predict, endpoints)
from services.cli import audit  # noqa: F401  (audit show)
from services.cli import scoring  # noqa: F401  (score, scoring)
from services.cli import identity  # noqa: F401  (tokens, users, audit-log)
# isort: on

__all__ = ["app"]
from services.cli import projects  # noqa: F401  (projects)
