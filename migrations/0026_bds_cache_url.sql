-- Migration 26: bds cache url.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
ALTER TABLE public.adhoc_validation ALTER COLUMN validation_api_error TYPE varchar USING validation_api_error::varchar;
ALTER TABLE public.document ADD COLUMN bds_cache_url varchar;

-- +down
ALTER TABLE public.document DROP COLUMN bds_cache_url;
ALTER TABLE public.adhoc_validation ALTER COLUMN validation_api_error TYPE integer
    USING CASE WHEN validation_api_error ~ '^[0-9]+$' THEN validation_api_error::integer END;
