-- Migration 5: solrize columns.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
ALTER TABLE public.document ADD COLUMN solrize_start timestamp;
ALTER TABLE public.document ADD COLUMN solrize_end timestamp;
ALTER TABLE public.document ADD COLUMN solr_api_error integer;

-- +down
ALTER TABLE public.document DROP COLUMN solr_api_error;
ALTER TABLE public.document DROP COLUMN solrize_end;
ALTER TABLE public.document DROP COLUMN solrize_start;
