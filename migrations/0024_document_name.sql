-- Migration 24: document name.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
ALTER TABLE public.document ADD COLUMN name varchar;

-- +down
ALTER TABLE public.document DROP COLUMN name;
