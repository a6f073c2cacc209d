-- Migration 25: last solrize end.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
ALTER TABLE public.document ADD COLUMN last_solrize_end timestamp;

-- +down
ALTER TABLE public.document DROP COLUMN last_solrize_end;
