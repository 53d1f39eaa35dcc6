-- 0003: recurring schedules. A schedule is declared in code and mirrored here, so that every
-- node fires it (no leader) and operators can see and pause it. Each fire time becomes at most
-- one job: the firing node holds the schedule's row lock while it inserts, and the unique index
-- on (schedule, fire_at) holds the line even against a node with a stale view.

CREATE TABLE {t}schedules (
    name            text PRIMARY KEY,
    paused          boolean NOT NULL DEFAULT false,
    fired           bigint NOT NULL DEFAULT 0,    -- runs inserted
    missed          bigint NOT NULL DEFAULT 0,    -- fire times not run because nobody was up
    skipped         bigint NOT NULL DEFAULT 0,    -- fire times not run because of overlap
    last_fire_at    timestamptz,                  -- the latest fire time handled (run or not)
    next_fire_at    timestamptz,                  -- for display: the next fire time expected
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    job             text NOT NULL,
    spec            text NOT NULL,                -- "cron 0 * * * * Europe/Paris" or "every 3600"
    definition      jsonb NOT NULL                -- the rest, as declared: queue, args, policies
);

ALTER TABLE {t}jobs
    ADD COLUMN schedule text,                     -- the schedule that fired this job, if any
    ADD COLUMN fire_at timestamptz;               -- and the fire time it ran for

CREATE UNIQUE INDEX {prefix}jobs_schedule_fire ON {t}jobs (schedule, fire_at)
    WHERE schedule IS NOT NULL;
