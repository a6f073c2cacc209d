-- Migration 0: initial.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
CREATE TABLE public.publisher (
    org_id varchar NOT NULL,
    name varchar NOT NULL,
    description varchar,
    title varchar NOT NULL,
    state varchar,
    image_url varchar,
    country_code varchar,
    created timestamp NOT NULL,
    last_seen timestamp NOT NULL,
    package_count integer,
    iati_id varchar,
    CONSTRAINT "Publisher_pkey" PRIMARY KEY (org_id)
);
CREATE TABLE public.refresher (
    id varchar NOT NULL,
    hash varchar NOT NULL,
    url varchar NOT NULL,
    first_seen timestamp NOT NULL,
    last_seen timestamp NOT NULL,
    modified timestamp,
    downloaded timestamp,
    download_error integer,
    CONSTRAINT refresher_pkey PRIMARY KEY (id)
);
CREATE TABLE public.version (
    number varchar NOT NULL,
    migration integer NOT NULL
);
INSERT INTO public.version (number, migration) VALUES ('0.1.0', 0);

-- +down
DROP TABLE public.version;
DROP TABLE public.refresher;
DROP TABLE public.publisher;
