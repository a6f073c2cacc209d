-- Migration 22: drop activity level validation columns.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
ALTER TABLE public.document DROP COLUMN alv_start;
ALTER TABLE public.document DROP COLUMN alv_end;
ALTER TABLE public.document DROP COLUMN alv_error;

-- +down
ALTER TABLE public.document ADD COLUMN alv_start timestamp;
ALTER TABLE public.document ADD COLUMN alv_end timestamp;
ALTER TABLE public.document ADD COLUMN alv_error varchar;
