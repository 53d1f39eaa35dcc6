-- 0008: jobs waiting for their dependencies, by queue, so that `app.counts()` counts every
-- unfinished state through a partial index, and `app.purge()` finds waiting jobs without a
-- scan of the history. Only waiting jobs (workflow steps, jobs enqueued with after=, runs a
-- schedule holds back) pay for it, once as they are written.

CREATE INDEX {prefix}jobs_waiting ON {t}jobs (queue) WHERE state = 'waiting';
