"""The type of a refresher database connection, for annotations (no imports beyond psycopg)."""

from __future__ import annotations

from typing import TypeAlias

import psycopg
from psycopg.rows import DictRow

#: Every refresher connection has dict rows (:func:`iati_refresher.db.connection.connect`).
Db: TypeAlias = psycopg.Connection[DictRow]
