-- Migration 6: regenerate validation report.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
ALTER TABLE public.document ADD COLUMN regenerate_validation_report boolean NOT NULL DEFAULT false;

-- +down
ALTER TABLE public.document DROP COLUMN regenerate_validation_report;
