-- 0006: the recent failures, for `asyncjobs status` (and the dashboard): a partial index of
-- failed and lost jobs by when they ended. Only failing jobs pay for it, and it stays as
-- small as the failures the retention period keeps.

CREATE INDEX {prefix}jobs_failures ON {t}jobs (finished_at DESC)
    WHERE state IN ('failed', 'lost');
