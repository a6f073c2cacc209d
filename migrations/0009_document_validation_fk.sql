-- Migration 9: document validation fk.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
ALTER TABLE public.document ADD COLUMN validation integer;
ALTER TABLE public.document ADD CONSTRAINT document_validation_fkey
    FOREIGN KEY (validation) REFERENCES public.validation (id);

-- +down
ALTER TABLE public.document DROP CONSTRAINT document_validation_fkey;
ALTER TABLE public.document DROP COLUMN validation;
