-- Migration 19: validation publisher.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
ALTER TABLE public.validation ADD COLUMN publisher varchar;

-- +down
ALTER TABLE public.validation DROP COLUMN publisher;
