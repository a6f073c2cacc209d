-- Migration 11: document indexes.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
CREATE INDEX fki_file_id ON public.document (id);
CREATE INDEX fki_file_hash ON public.document (hash);
CREATE INDEX fki_file_url ON public.document (url);
CREATE INDEX fki_publisher ON public.document (publisher);

-- +down
DROP INDEX public.fki_publisher;
DROP INDEX public.fki_file_url;
DROP INDEX public.fki_file_hash;
DROP INDEX public.fki_file_id;
