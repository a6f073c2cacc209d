"""The package as an Airflow provider: its connection types, hooks and operators.

Registered by the ``apache_airflow_provider`` entry point in ``pyproject.toml``, so the
Airflow UI offers the refresher's connection types with their fields and a Test button
(with ``[core] test_connection = Enabled``).  The blob storage (``refresher_blob``) is a
``wasb`` connection of the Azure provider and the refresher database (``refresher_db``) a
``postgres`` connection of the postgres provider: their forms and tests are theirs.
"""

from __future__ import annotations

from typing import Any

from iati_refresher import __version__

_OPTIONAL_TEXT = {"type": ["string", "null"]}


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "iati-refresher",
        "name": "IATI Refresher",
        "description": "The IATI Refresher pipeline: the IATI Validator API, Solr for the IATI datastore, the "
        "IATI registry (Bulk Data Service or CKAN), and the refresher's blob storage.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "IATI Refresher",
                "external-doc-url": "https://github.com/IATI/refresher",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": "IATI Refresher",
                "python-modules": [
                    "iati_refresher.hooks.validator",
                    "iati_refresher.hooks.solr",
                    "iati_refresher.hooks.registry",
                    "iati_refresher.hooks.blob",
                    "iati_refresher.hooks.database",
                    "iati_refresher.hooks.commshub",
                ],
            }
        ],
        "operators": [
            {
                "integration-name": "IATI Refresher",
                "python-modules": [
                    "iati_refresher.operators.validator",
                    "iati_refresher.operators.solr",
                    "iati_refresher.operators.blob",
                ],
            }
        ],
        "connection-types": [
            {
                "connection-type": "iati_validator",
                "hook-class-name": "iati_refresher.hooks.validator.IatiValidatorHook",
                "hook-name": "IATI Validator API",
                "conn-fields": {
                    "key_name": {
                        "label": "Key header",
                        "schema": {**_OPTIONAL_TEXT, "default": "x-functions-key"},
                        "description": "the header that carries the API key",
                    },
                    "schema_path": {"label": "Schema validation path", "schema": _OPTIONAL_TEXT},
                    "validate_path": {"label": "Validation path", "schema": _OPTIONAL_TEXT},
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["login"],
                    "relabeling": {"host": "Validator API base URL", "password": "API key", "schema": "Base path"},
                    "placeholders": {
                        "host": "https://api.iatistandard.org",
                        "schema": "validator",
                        "password": "the key (kept secret)",
                    },
                },
            },
            {
                "connection-type": "iati_solr",
                "hook-class-name": "iati_refresher.hooks.solr.SolrHook",
                "hook-name": "Solr (IATI datastore)",
                "ui-field-behaviour": {
                    "hidden-fields": ["extra"],
                    "relabeling": {
                        "host": "Solr base URL",
                        "schema": "Path (when the URL has none)",
                        "login": "User (basic auth, optional)",
                        "password": "Password (optional)",
                    },
                    "placeholders": {"host": "http://solr:8983/solr"},
                },
            },
            {
                "connection-type": "iati_registry",
                "hook-class-name": "iati_refresher.hooks.registry.IatiRegistryHook",
                "hook-name": "IATI Registry (Bulk Data Service or CKAN)",
                "conn-fields": {
                    "dataset_index_path": {
                        "label": "Dataset index path (BDS)",
                        "schema": {**_OPTIONAL_TEXT, "default": "/datasets-minimal"},
                    },
                    "reporting_org_index_path": {
                        "label": "Reporting-org index path (BDS)",
                        "schema": {**_OPTIONAL_TEXT, "default": "/reporting-orgs"},
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["login", "password", "schema"],
                    "relabeling": {"host": "Registry base URL"},
                    "placeholders": {"host": "https://bulk-data.iatistandard.org"},
                },
            },
            {
                "connection-type": "iati_commshub",
                "hook-class-name": "iati_refresher.hooks.commshub.CommsHubHook",
                "hook-name": "IATI Communications Hub",
                "conn-fields": {
                    "key_name": {
                        "label": "Key header",
                        "schema": {**_OPTIONAL_TEXT, "default": "x-functions-key"},
                        "description": "the header that carries the function key",
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["login"],
                    "relabeling": {
                        "host": "Notification endpoint URL",
                        "password": "Function key",
                        "schema": "Path (when the URL has none)",
                    },
                    "placeholders": {"host": "https://commshub.example.org/api/notify"},
                },
            },
        ],
    }
