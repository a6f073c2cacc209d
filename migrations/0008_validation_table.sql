-- Migration 8: validation table.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
CREATE TABLE public.validation (
    document_hash varchar NOT NULL,
    document_id varchar NOT NULL,
    document_url varchar NOT NULL,
    created timestamp NOT NULL,
    valid boolean NOT NULL,
    report jsonb NOT NULL,
    id serial,
    CONSTRAINT validation_pkey PRIMARY KEY (id)
);

-- +down
DROP TABLE public.validation;
