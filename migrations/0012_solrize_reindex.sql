-- Migration 12: solrize reindex.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
ALTER TABLE public.document ADD COLUMN solrize_reindex boolean NOT NULL DEFAULT false;

-- +down
ALTER TABLE public.document DROP COLUMN solrize_reindex;
