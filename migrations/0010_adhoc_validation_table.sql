-- Migration 10: adhoc validation table.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
CREATE TABLE public.adhoc_validation (
    id serial,
    guid varchar,
    filename varchar,
    user_email varchar,
    created timestamp,
    validated timestamp,
    validation_api_error integer,
    valid boolean,
    report jsonb,
    CONSTRAINT adhoc_validation_pkey PRIMARY KEY (id)
);

-- +down
DROP TABLE public.adhoc_validation;
