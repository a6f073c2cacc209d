-- Migration 7: lakify columns.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
ALTER TABLE public.document ADD COLUMN lakify_start timestamp;
ALTER TABLE public.document ADD COLUMN lakify_end timestamp;
ALTER TABLE public.document ADD COLUMN lakify_error varchar;

-- +down
ALTER TABLE public.document DROP COLUMN lakify_error;
ALTER TABLE public.document DROP COLUMN lakify_end;
ALTER TABLE public.document DROP COLUMN lakify_start;
