-- Migration 16: clean columns.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
ALTER TABLE public.document ADD COLUMN clean_start timestamp;
ALTER TABLE public.document ADD COLUMN clean_end timestamp;
ALTER TABLE public.document ADD COLUMN clean_error varchar;

-- +down
ALTER TABLE public.document DROP COLUMN clean_error;
ALTER TABLE public.document DROP COLUMN clean_end;
ALTER TABLE public.document DROP COLUMN clean_start;
