-- Migration 4: flatten columns.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
ALTER TABLE public.document ADD COLUMN flatten_start timestamp;
ALTER TABLE public.document ADD COLUMN flatten_end timestamp;
ALTER TABLE public.document ADD COLUMN flatten_api_error integer;
ALTER TABLE public.document ADD COLUMN flattened_activities jsonb;

-- +down
ALTER TABLE public.document DROP COLUMN flattened_activities;
ALTER TABLE public.document DROP COLUMN flatten_api_error;
ALTER TABLE public.document DROP COLUMN flatten_end;
ALTER TABLE public.document DROP COLUMN flatten_start;
