-- Migration 3: document publisher fk.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
ALTER TABLE public.document ADD COLUMN publisher varchar;
ALTER TABLE public.document ADD CONSTRAINT refresher_publisher_fkey
    FOREIGN KEY (publisher) REFERENCES public.publisher (org_id) ON DELETE CASCADE;

-- +down
ALTER TABLE public.document DROP CONSTRAINT refresher_publisher_fkey;
ALTER TABLE public.document DROP COLUMN publisher;
