-- Migration 21: validation publisher name.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
ALTER TABLE public.validation ADD COLUMN publisher_name varchar;

-- +down
ALTER TABLE public.validation DROP COLUMN publisher_name;
