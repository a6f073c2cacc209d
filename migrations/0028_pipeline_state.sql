-- Migration 28: pipeline state of the Airflow refresher (our first addition to the reference schema).
-- Other IATI services read document/publisher/validation; they ignore these new columns and tables.

-- +up
ALTER TABLE public.document ADD COLUMN source_etag varchar;
ALTER TABLE public.document ADD COLUMN source_last_modified varchar;
ALTER TABLE public.document ADD COLUMN source_bytes bigint;
ALTER TABLE public.document ADD COLUMN source_encoding varchar;
ALTER TABLE public.document ADD COLUMN activity_count integer;
ALTER TABLE public.document ADD COLUMN solr_indexed_hash varchar;
ALTER TABLE public.document ADD COLUMN solr_activity_count integer;

-- One row per document and stage: the last outcome, attempts, when to try again, and
-- whether the pipeline gave up.  Deleted when the document's hash changes.
CREATE TABLE public.document_stage (
    document_id varchar NOT NULL REFERENCES public.document (id) ON DELETE CASCADE,
    stage varchar NOT NULL,
    outcome varchar NOT NULL CHECK (outcome IN ('ok', 'skipped', 'failed', 'gave_up')),
    code varchar,
    message text,
    attempts integer NOT NULL DEFAULT 0,
    first_attempt_at timestamp,
    last_attempt_at timestamp,
    next_attempt_at timestamp,
    run_id varchar,
    PRIMARY KEY (document_id, stage)
);
CREATE INDEX document_stage_waiting ON public.document_stage (stage, next_attempt_at)
    WHERE outcome IN ('failed', 'skipped', 'gave_up');

-- A lease on a document while a worker processes it; an expired lease is free again.
CREATE TABLE public.document_claim (
    document_id varchar NOT NULL REFERENCES public.document (id) ON DELETE CASCADE,
    stage varchar NOT NULL,
    owner varchar NOT NULL,
    claimed_at timestamp NOT NULL,
    expires_at timestamp NOT NULL,
    PRIMARY KEY (document_id)
);

-- +down
DROP TABLE public.document_claim;
DROP TABLE public.document_stage;
ALTER TABLE public.document DROP COLUMN solr_activity_count;
ALTER TABLE public.document DROP COLUMN solr_indexed_hash;
ALTER TABLE public.document DROP COLUMN activity_count;
ALTER TABLE public.document DROP COLUMN source_encoding;
ALTER TABLE public.document DROP COLUMN source_bytes;
ALTER TABLE public.document DROP COLUMN source_last_modified;
ALTER TABLE public.document DROP COLUMN source_etag;
