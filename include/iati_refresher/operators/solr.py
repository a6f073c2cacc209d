"""Index or remove datasets in Solr, with the no-gap rule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context

from iati_refresher.connections import BLOB_STORAGE, REFRESHER_DB, SOLR


class SolrIndexOperator(BaseOperator):
    """Index datasets' current versions into Solr, or remove datasets from it.

    ``index``: for each dataset ready for indexing (flattened and in the activity lake), its
    activity, transaction and budget documents are added first and the previous version's
    left-over documents deleted only afterwards, so the dataset never leaves search; a
    failure keeps the previous version.  Each outcome is recorded in the refresher database
    (the reference's ``solrize_*`` columns and ``document_stage``), exactly as the
    ``iati_refresh`` index stage records it — that stage *is* this operator, mapped over its
    batches.  Returns the batch's counts.

    ``remove``: the datasets' documents are deleted from all three collections and the
    database forgets their indexed version.  Returns how many documents went.

    :param batch: ``{"stage": "index", "ids": [...], "label": ..., "key": ...}`` as
        ``plan_index`` cuts them (templated), or
    :param dataset_ids: the datasets (templated).
    :param solr_conn_id: the Solr connection (type ``iati_solr``).
    :param blob_conn_id: the blob storage (type ``wasb``) holding the flat files and the lake.
    :param refresher_db_conn_id: the refresher database (type ``postgres``).
    """

    template_fields: Sequence[str] = ("batch", "dataset_ids")
    ui_color = "#fef3c7"

    def __init__(
        self,
        *,
        action: str = "index",
        batch: dict[str, Any] | None = None,
        dataset_ids: Sequence[str] | None = None,
        solr_conn_id: str = SOLR,
        blob_conn_id: str = BLOB_STORAGE,
        refresher_db_conn_id: str = REFRESHER_DB,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if action not in ("index", "remove"):
            raise ValueError(f"action must be index or remove, not {action!r}")
        if batch is None and dataset_ids is None:
            raise ValueError("give a batch or dataset_ids")
        self.action, self.batch, self.dataset_ids = action, batch, list(dataset_ids) if dataset_ids else None
        self.solr_conn_id, self.blob_conn_id = solr_conn_id, blob_conn_id
        self.refresher_db_conn_id = refresher_db_conn_id

    def execute(self, context: Context) -> Any:
        from iati_refresher import pipeline
        from iati_refresher.operators._connections import as_roles

        batch = self.batch or {
            "stage": "index",
            "ids": list(self.dataset_ids or []),
            "label": "selected",
            "key": f"op-{context['ti'].map_index}",
        }
        context["batch_label"] = batch.get("label", "")  # type: ignore[typeddict-unknown-key]
        ti = context["ti"]
        with as_roles(
            **{SOLR: self.solr_conn_id, BLOB_STORAGE: self.blob_conn_id, REFRESHER_DB: self.refresher_db_conn_id}
        ):
            if self.action == "remove":
                return pipeline.remove_from_index(batch["ids"])
            return pipeline.run_batch(
                {**batch, "stage": "index"},
                run_id=context["run_id"],
                dag_id=ti.dag_id,
                final_try=pipeline.is_final_try(ti),
                task_label=f"{ti.task_id}[{ti.map_index}: {batch.get('label', '')}]",
            )
