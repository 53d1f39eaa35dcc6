-- 0009: durable jobs. A job's steps (ctx.step) are rows of job_steps, keyed by the job and
-- the order of the call; a step that completed is never run again, and one that was running
-- when its node died is in doubt (see reap in queries.sql). A durable job parked in
-- ctx.sleep is a scheduled job; one parked in ctx.wait_for waits, in state waiting, for the
-- job named in wake_on to end, and that job's row is flagged awaited so that its end (any
-- terminal state, or its deletion by a purge) queues the parked ones again, through a
-- trigger whose WHEN clause every other row passes by without calling it. Which job names
-- are durable is what the node that ran them declared (nodes.durable).

ALTER TABLE {t}jobs
    ADD COLUMN awaited boolean NOT NULL DEFAULT false,  -- a parked job waits for its end
    ADD COLUMN wake_on uuid;                             -- parked: the job whose end resumes it

-- The parked jobs each ending job resumes. Partial: only parked jobs enter it.
CREATE INDEX {prefix}jobs_wake_on ON {t}jobs (wake_on) WHERE wake_on IS NOT NULL;

ALTER TABLE {t}nodes ADD COLUMN durable text[] NOT NULL DEFAULT '{}';  -- its durable job names

-- One row per step of a job: written before a step that is not idempotent runs (running),
-- and when any step ends. Fixed-width columns first.
CREATE TABLE {t}job_steps (
    job_id      uuid NOT NULL,
    seq         integer NOT NULL,          -- 1 for the job's first step call, 2 for the next...
    attempt     integer NOT NULL,          -- the attempt that ran it (with node_id, its fence)
    idempotent  boolean NOT NULL,
    started_at  timestamptz,
    finished_at timestamptz,
    node_id     uuid,
    kind        text NOT NULL,             -- call, sleep or wait
    state       text NOT NULL,             -- running, succeeded or failed
    name        text NOT NULL,
    digest      bytea,                     -- of the step's arguments: a replay must match it
    call        text,                      -- the arguments, as far as a message shows them
    result      jsonb,
    error       jsonb,                     -- {type, message, traceback}
    PRIMARY KEY (job_id, seq)
);

-- Queues the jobs parked until the job in NEW (or OLD, deleted) ended, and wakes the nodes.
CREATE FUNCTION {t}wake_parked() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    v_id uuid := CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END;
    v_queue text;
BEGIN
    FOR v_queue IN
        WITH woken AS (
            UPDATE {t}jobs SET state = 'queued', wake_on = NULL, run_at = now()
            WHERE wake_on = v_id AND state = 'waiting'
            RETURNING queue
        )
        SELECT DISTINCT queue FROM woken
    LOOP
        PERFORM pg_notify('{channel}', 'q:' || v_queue);
    END LOOP;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER {prefix}jobs_wake_parked_on_end
    AFTER UPDATE OF state ON {t}jobs
    FOR EACH ROW
    WHEN (NEW.awaited AND NEW.state IN ('succeeded', 'failed', 'cancelled', 'lost'))
    EXECUTE FUNCTION {t}wake_parked();

CREATE TRIGGER {prefix}jobs_wake_parked_on_delete
    AFTER DELETE ON {t}jobs
    FOR EACH ROW
    WHEN (OLD.awaited AND OLD.state NOT IN ('succeeded', 'failed', 'cancelled', 'lost'))
    EXECUTE FUNCTION {t}wake_parked();
