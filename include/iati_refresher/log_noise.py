"""The loggers too loud for task logs, quietened in one place (task processes and workers)."""

from __future__ import annotations

import logging

#: The Azure SDK logs every request and response header at INFO, httpx and httpcore one line
#: per request (downloads, Solr, the validator, the blob service).
NOISY_LOGGERS = ("azure", "httpx", "httpcore")


def quiet_noisy_loggers() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
