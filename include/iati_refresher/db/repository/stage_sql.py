"""The SQL of each stage (the stages themselves: :mod:`iati_refresher.stage_specs`).

Every stage has an entry in ``READY``, ``REVIVED_BY``, ``START_COLUMN`` and ``RESET_FROM``
(``tests/unit/test_stage_specs.py`` checks it), and may have one in ``ORDER`` and
``REQUEST_FLAGS``.  Literal strings only: statements are built from module constants
(``tests/unit/test_security.py``)."""

from __future__ import annotations

# What makes a document ready for each stage (before retry/claim gating).
READY = {
    "download": "d.downloaded IS NULL",
    "validate": """d.downloaded IS NOT NULL AND d.download_error IS NULL AND d.hash <> ''
        AND (d.validation IS NULL OR d.regenerate_validation_report)
        AND NOT (COALESCE(d.file_schema_valid, true) = false
                 AND (d.downloaded > {now} - make_interval(secs => %(safety_period_s)s)
                      OR p.black_flag IS NOT NULL))""",
    "clean": "d.downloaded IS NOT NULL AND d.hash <> '' AND d.validation IS NOT NULL AND d.clean_end IS NULL",
    "flatten": "d.downloaded IS NOT NULL AND d.clean_end IS NOT NULL AND d.flatten_end IS NULL",
    "lakify": "d.downloaded IS NOT NULL AND d.clean_end IS NOT NULL AND d.lakify_end IS NULL",
    "index": """d.downloaded IS NOT NULL AND d.hash <> '' AND d.flatten_end IS NOT NULL
        AND d.lakify_end IS NOT NULL AND (d.solrize_end IS NULL OR d.solrize_reindex)""",
}


# When another service resets a stage (datastore-services clears flatten or lakify, sets
# solrize_reindex; validator-services sets regenerate_validation_report), a parked document
# comes back to life.
REVIVED_BY = {
    "download": "false",
    "validate": "d.regenerate_validation_report",
    "clean": "false",
    "flatten": "d.flatten_api_error IS NULL",
    "lakify": "d.lakify_error IS NULL",
    "index": "d.solrize_reindex",
}


ORDER = {
    "download": "COALESCE(d.modified, d.first_seen), d.id",
    "validate": "d.regenerate_validation_report DESC, d.downloaded, d.id",
}


START_COLUMN = {
    "validate": None,
    "download": None,
    "clean": "clean_start",
    "flatten": "flatten_start",
    "lakify": "lakify_start",
    "index": "solrize_start",
}


# Operator resets: what each "from stage" clears (the stage's markers and everything after).
RESET_FROM = {
    "download": [
        "downloaded",
        "download_error",
        "source_etag",
        "source_last_modified",
        "source_bytes",
        "source_encoding",
    ],
    "validate": ["validation", "validation_request", "validation_api_error", "file_schema_valid"],
    "clean": ["clean_start", "clean_end", "clean_error"],
    "flatten": ["flatten_start", "flatten_end", "flatten_api_error", "flattened_activities", "activity_count"],
    "lakify": ["lakify_start", "lakify_end", "lakify_error"],
    "index": ["solrize_start", "solrize_end", "solr_api_error"],
}


# The flag another IATI service sets to ask for a stage again (see REVIVED_BY).
REQUEST_FLAGS = {"validate": "regenerate_validation_report", "index": "solrize_reindex"}
