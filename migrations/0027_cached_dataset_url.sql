-- Migration 27: cached dataset url.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
ALTER TABLE public.document RENAME COLUMN bds_cache_url TO cached_dataset_url;

-- +down
ALTER TABLE public.document RENAME COLUMN cached_dataset_url TO bds_cache_url;
