"""``python -m common.store.migrations <alembic command> ...``: Alembic's command line on the
job store named by TEACHER_DATABASE_URL, configured from code (there is no alembic.ini)."""
from __future__ import annotations

import sys

from alembic.config import CommandLine


def main(argv: list[str] | None = None) -> None:
    from common.store.db import alembic_config, make_engine

    cli = CommandLine(prog="python -m common.store.migrations")
    options = cli.parser.parse_args(argv if argv is not None else sys.argv[1:])
    if not hasattr(options, "cmd"):
        cli.parser.error("too few arguments")
    engine = make_engine()
    try:
        with engine.begin() as conn:
            cli.run_cmd(alembic_config(conn), options)
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
