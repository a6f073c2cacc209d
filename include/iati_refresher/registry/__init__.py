"""Registry sources (IATI Bulk Data Service, IATI Registry CKAN) returning plain records."""
