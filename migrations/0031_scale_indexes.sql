-- Migration 31: indexes for the queries that grow with history rather than with the registry.
--
-- * validation (document_hash, id): validate looks up the newest report for each batch's
--   content hashes (report reuse for identical content).  The table gains a row per
--   validated version, so without it each batch scanned every report ever stored.
-- * run_stage_telemetry (finished_at): the status page and `refresher status` find the
--   latest run; the table gains a row per batch of every run.
-- The stage predicates on `document` need none: the table holds one row per registry
-- dataset (~10^4), and selecting a stage's ready documents is a sequential scan of a few
-- milliseconds (BENCHMARKS.md).

-- +up
CREATE INDEX validation_document_hash_id ON public.validation (document_hash, id);
CREATE INDEX run_stage_telemetry_finished_at ON public.run_stage_telemetry (finished_at);

-- +down
DROP INDEX public.run_stage_telemetry_finished_at;
DROP INDEX public.validation_document_hash_id;
