-- Migration 2: rename refresher to document.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
ALTER TABLE public.refresher RENAME TO document;

-- +down
ALTER TABLE public.document RENAME TO refresher;
