-- Migration 30: what the last registry sync saw (ETag of the index, index run), so an
-- unchanged index is skipped cheaply across runs and workers.

-- +up
CREATE TABLE public.registry_state (
    source varchar PRIMARY KEY,
    etag varchar,
    index_created bigint,
    checked_at timestamp,
    synced_at timestamp,
    last_result text
);

-- +down
DROP TABLE public.registry_state;
