-- Migration 1: validation request columns.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
ALTER TABLE public.refresher ADD COLUMN validation_request timestamp;
ALTER TABLE public.refresher ADD COLUMN validation_api_error integer;

-- +down
ALTER TABLE public.refresher DROP COLUMN validation_api_error;
ALTER TABLE public.refresher DROP COLUMN validation_request;
