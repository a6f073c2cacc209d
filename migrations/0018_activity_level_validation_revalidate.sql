-- Migration 18: activity level validation revalidate.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
ALTER TABLE public.document ADD COLUMN alv_revalidate boolean NOT NULL DEFAULT false;

-- +down
ALTER TABLE public.document DROP COLUMN alv_revalidate;
