"""Operators of the IATI Refresher provider, usable in any DAG:

* :class:`~iati_refresher.operators.validator.IatiValidatorOperator` — validate a file,
  blob or URL with the IATI Validator API; the report is the task's result;
* :class:`~iati_refresher.operators.solr.SolrIndexOperator` — index or remove datasets in
  Solr with the no-gap rule, recording each outcome in the refresher database;
* :class:`~iati_refresher.operators.blob.RefresherBlobOperator` — fetch, store or remove
  blobs of the refresher's storage.
"""

from iati_refresher.operators.blob import RefresherBlobOperator
from iati_refresher.operators.solr import SolrIndexOperator
from iati_refresher.operators.validator import IatiValidatorOperator

__all__ = ["IatiValidatorOperator", "RefresherBlobOperator", "SolrIndexOperator"]
