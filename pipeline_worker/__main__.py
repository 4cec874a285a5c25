"""`python -m pipeline_worker`: run an arq worker for pipeline jobs."""

from __future__ import annotations

import logging

from mlops_core.settings import get_settings
from pipeline_worker.reconnecting import ReconnectingWorker
from pipeline_worker.worker import WorkerSettings


def main() -> None:
    logging.basicConfig(
        level=get_settings().log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # NOTE: papermill warns about every injected parameter a notebook does not declare, and
    # SAMPLE_INPUT_PATH is optional by design; its real failures reach us as exceptions.
    logging.getLogger("papermill").setLevel(logging.ERROR)
    ReconnectingWorker.from_settings(WorkerSettings).run()


if __name__ == "__main__":
    main()
