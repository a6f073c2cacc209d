-- Migration 29: run telemetry (one row per run, stage and batch) and the registry change log.

-- +up
CREATE TABLE public.run_stage_telemetry (
    run_id varchar NOT NULL,
    dag_id varchar NOT NULL,
    stage varchar NOT NULL,
    batch varchar NOT NULL DEFAULT '',
    started_at timestamp NOT NULL,
    finished_at timestamp NOT NULL,
    documents_in integer NOT NULL DEFAULT 0,
    documents_ok integer NOT NULL DEFAULT 0,
    documents_skipped integer NOT NULL DEFAULT 0,
    documents_failed integer NOT NULL DEFAULT 0,
    activities integer NOT NULL DEFAULT 0,
    bytes bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, stage, batch)
);

CREATE TABLE public.registry_change (
    id bigserial PRIMARY KEY,
    run_id varchar,
    changed_at timestamp NOT NULL,
    document_id varchar NOT NULL,
    document_name varchar,
    publisher varchar,
    change varchar NOT NULL CHECK (change IN ('added', 'updated', 'removed')),
    old_hash varchar,
    new_hash varchar
);
CREATE INDEX registry_change_document ON public.registry_change (document_id, changed_at);
CREATE INDEX registry_change_changed_at ON public.registry_change (changed_at);

-- +down
DROP TABLE public.registry_change;
DROP TABLE public.run_stage_telemetry;
