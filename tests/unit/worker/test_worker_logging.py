"""The Celery worker logs JSON lines through common/logs.py (its setup_logging hook)."""
from __future__ import annotations

import json
import logging

from common.logs import log_context


def test_celerys_logging_setup_gives_the_worker_json_lines(tmp_path):
    from worker.celery_app import celery_app

    root = logging.getLogger()
    level, before = root.level, list(root.handlers)
    logfile = tmp_path / "worker.log"
    try:
        # What `celery worker --logfile ...` runs at start: our signal replaces Celery's setup.
        celery_app.log.already_setup = False
        celery_app.log.setup_logging_subsystem(loglevel="INFO", logfile=str(logfile))
        with log_context(job_id="j-7", attempt=1):
            logging.getLogger("worker.supervisor").info("job j-7: attempt 1 started child pid 99")
    finally:
        for h in root.handlers[:]:
            if h not in before:
                root.removeHandler(h)
                h.close()
        root.setLevel(level)
        celery_app.log.already_setup = False
    (line,) = [json.loads(x) for x in logfile.read_text().splitlines()]
    assert line["service"] == "worker" and line["job_id"] == "j-7" and line["attempt"] == 1
    assert line["message"] == "job j-7: attempt 1 started child pid 99"
