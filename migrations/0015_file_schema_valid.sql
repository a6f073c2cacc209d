-- Migration 15: file schema valid.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
ALTER TABLE public.document ADD COLUMN file_schema_valid boolean;

-- +down
ALTER TABLE public.document DROP COLUMN file_schema_valid;
