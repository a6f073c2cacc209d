-- Migration 20: adhoc validation session.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
ALTER TABLE public.adhoc_validation ADD COLUMN session_id varchar;

-- +down
ALTER TABLE public.adhoc_validation DROP COLUMN session_id;
