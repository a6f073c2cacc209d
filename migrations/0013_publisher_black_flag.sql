-- Migration 13: publisher black flag.
-- Part of the reconstructed history whose end state (27) is the reference schema.

-- +up
ALTER TABLE public.publisher ADD COLUMN black_flag timestamp;
ALTER TABLE public.publisher ADD COLUMN black_flag_notified boolean;

-- +down
ALTER TABLE public.publisher DROP COLUMN black_flag_notified;
ALTER TABLE public.publisher DROP COLUMN black_flag;
