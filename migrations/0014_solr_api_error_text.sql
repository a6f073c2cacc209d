-- Migration 14: solr api error text.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
ALTER TABLE public.document ALTER COLUMN solr_api_error TYPE text USING solr_api_error::text;

-- +down
ALTER TABLE public.document ALTER COLUMN solr_api_error TYPE integer
    USING CASE WHEN solr_api_error ~ '^[0-9]+$' THEN solr_api_error::integer ELSE 1 END;
