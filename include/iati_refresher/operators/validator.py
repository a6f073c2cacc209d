"""Validate one IATI file with the IATI Validator API."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator, Context

from iati_refresher.connections import BLOB_STORAGE, VALIDATOR


class IatiValidatorOperator(BaseOperator):
    """Validate a file, a blob or a URL; the task's result (XCom) is the Validator's answer.

    The result: ``{"status": <HTTP status or None>, "report": <the report or None>,
    "error": <what went wrong, or None>, "valid": <bool or None>}``.  The Validator's report
    statuses (200 valid, 422 schema errors, 400 not XML, 413 too large) are results, not
    failures; a Validator that cannot be reached fails the task (Airflow retries it).  As in
    the pipeline, a file with a DOCTYPE or entities, or above ``REFRESHER_VALIDATOR_MAX_BYTES``,
    is not sent: its result has no report and ``error`` says why.

    :param source: the URL, blob name or local path (templated).
    :param source_type: ``url`` (downloaded with the pipeline's safe downloader: size cap,
        no private addresses), ``blob`` (from ``container`` of the refresher's storage) or
        ``file`` (a path this worker can read).
    :param container: the blob container (templated; default the ad-hoc container).
    :param meta: ask for the per-activity list (``meta=true``).
    :param validator_conn_id: the ``iati_validator`` connection (``REFRESHER_VALIDATOR_BACKEND=builtin``
        or an embedded run without it: the built-in schema validator).
    :param blob_conn_id: the blob storage connection (``wasb``), for ``source_type="blob"``.
    :param fail_on_fetch_error: raise when the file cannot be fetched (else it is the result's ``error``).
    """

    template_fields: Sequence[str] = ("source", "source_type", "container")
    ui_color = "#dbeafe"

    def __init__(
        self,
        *,
        source: str,
        source_type: str = "url",
        container: str | None = None,
        meta: bool = True,
        validator_conn_id: str = VALIDATOR,
        blob_conn_id: str = BLOB_STORAGE,
        fail_on_fetch_error: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source, self.source_type, self.container, self.meta = source, source_type, container, meta
        self.validator_conn_id, self.blob_conn_id = validator_conn_id, blob_conn_id
        self.fail_on_fetch_error = fail_on_fetch_error

    def execute(self, context: Context) -> dict[str, Any]:
        from iati_refresher.clients import validator_for
        from iati_refresher.operators._connections import as_roles
        from iati_refresher.settings import get_settings
        from iati_refresher.stages.download import fetch_to_file
        from iati_refresher.stages.validate import not_sent_reason
        from iati_refresher.storage import blob_store

        if self.source_type not in ("url", "blob", "file"):
            raise ValueError(f"source_type must be url, blob or file, not {self.source_type!r}")
        settings = get_settings()
        with (
            as_roles(**{VALIDATOR: self.validator_conn_id, BLOB_STORAGE: self.blob_conn_id}),
            tempfile.TemporaryDirectory(prefix="validate-") as tmp,
        ):
            path = Path(tmp) / "file.xml"
            if self.source_type == "url":
                fetched = fetch_to_file(self.source, str(path), settings)
                if fetched.download_error is not None:
                    error = f"download_error {fetched.download_error}: {fetched.message}"
                    if self.fail_on_fetch_error:
                        raise RuntimeError(f"could not fetch {self.source}: {error}")
                    return {"status": None, "report": None, "error": error, "valid": None}
            elif self.source_type == "blob":
                with blob_store(settings) as store:
                    store.get_to_file(self.container or settings.adhoc_container, self.source, path)
            else:
                path = Path(self.source)
            refused = not_sent_reason(path, settings)
            if refused is not None:  # the pipeline's rule: DOCTYPEs and oversize files are never sent
                self.log.warning("not validated: %s %s: %s", self.source_type, self.source, refused.message)
                return {
                    "status": refused.api_error,
                    "report": None,
                    "error": f"{refused.code}: {refused.message}",
                    "valid": None,
                }
            with validator_for(settings) as validator:
                response = validator.validate(path, meta=self.meta)
        report = response.body if response.body is not None and "valid" in response.body else None
        self.log.info(
            "validated %s %s: HTTP %s, valid %s",
            self.source_type,
            self.source,
            response.status,
            report.get("valid") if report else None,
        )
        return {
            "status": response.status,
            "report": report,
            "error": None if report is not None else str(response.status or response.error),
            "valid": bool(report["valid"]) if report is not None else None,
        }
