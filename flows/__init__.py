"""Prefect orchestration of the DVC pipeline: DVC is the cache, Prefect schedules and shows.

Importing this package keeps Prefect's database inside the project and turns analytics
off, so nobody has to export anything before ``python -m flows ...``. Values already set
in the environment win (``setdefault``), which is how tests point Prefect elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""The repository that holds ``dvc.yaml``; the default DVC workspace of every flow run."""

PROJECT_ENV: dict[str, str] = {
    "PREFECT_HOME": str(PROJECT_ROOT / ".prefect"),  # git- and dvc-ignored
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
}


def configure_environment() -> None:
    """Apply :data:`PROJECT_ENV` to ``os.environ`` without overriding explicit settings.

    Must run before ``prefect`` is imported: Prefect reads ``PREFECT_HOME`` once.
    """
    for key, value in PROJECT_ENV.items():
        os.environ.setdefault(key, value)


configure_environment()
