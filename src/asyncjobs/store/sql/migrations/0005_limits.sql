-- 0005: concurrency keys and rate limits (asyncjobs.limits), enforced where jobs are claimed.
--
-- A job may carry a concurrency key and a limit: it starts only while fewer than its limit
-- jobs with that key run. The running count is never stored, so nothing can leak: the claim
-- counts the running jobs of each key through a partial index, after taking a transaction
-- advisory lock on the key, in a statement whose snapshot follows the lock. Two nodes racing
-- for a key's last slot therefore take turns, and the second sees the first's claim.
--
-- A job may carry a rate bucket and a limit (count per period). The bucket's starts are
-- spaced evenly, period / count apart (the generic cell rate algorithm with no burst), so no
-- window of one period ever holds more than count of them. A claim books start times up to
-- two seconds ahead under the bucket's lock, moves the bucket's next free time (tat) past
-- them, and tells the node how long each job must wait before it starts.

ALTER TABLE {t}jobs
    ADD COLUMN concurrency_key   text,
    ADD COLUMN concurrency_limit integer,
    ADD COLUMN rate_key          text,
    ADD COLUMN rate_count        integer,
    ADD COLUMN rate_period       float8;        -- seconds

-- The running jobs of each key: what a claim counts. Partial: other jobs never enter it.
CREATE INDEX {prefix}jobs_running_key ON {t}jobs (concurrency_key)
    WHERE state = 'running' AND concurrency_key IS NOT NULL;

-- Per rate bucket, the earliest time the next start may be booked.
CREATE TABLE {t}rate_buckets (
    key      text PRIMARY KEY,
    tat      timestamptz NOT NULL,
    starts   integer NOT NULL,                  -- the rate last booked with, for display
    period   float8 NOT NULL
);

-- Claims at most p_limits[i] ready jobs from queue p_queues[i] for node p_node, highest
-- priority first, then oldest; never one another node holds (SKIP LOCKED), never for a
-- reaped node. Each claim bumps the attempt: (attempt, node) is the fencing token.
--
-- Step 1 picks and locks the candidates, passing over jobs whose key looks full or whose
-- bucket looks booked up in the statement's snapshot (an optimisation: it keeps them from
-- filling the batch). If some candidates have a key or a bucket, step 2 takes the advisory
-- lock of each (in hash order, so claimers never deadlock), and step 3, under a snapshot
-- taken after the locks, keeps only the candidates that fit: for each key, running + rank
-- <= limit; for each bucket, a start time within the booking horizon. The others stay queued
-- and unlocked when the transaction ends. A job that finishes wakes its queue (complete_jobs),
-- so a job waiting for a slot is claimed as soon as one frees. A rate-limited job comes back
-- with the seconds it must wait (delay) before it starts.
CREATE FUNCTION {t}claim_jobs(
    p_node uuid, p_queues text[], p_limits integer[], p_now float8, p_max_input bigint
) RETURNS TABLE (id uuid, name text, queue text, attempt integer, max_attempts integer,
                 args jsonb, workflow_id uuid, delay float8)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_ids uuid[];
    v_keys text[];
    v_limits integer[];
    v_buckets text[];
    v_counts integer[];
    v_periods float8[];
    v_delays float8[];
    v_at timestamptz;
    c_horizon CONSTANT interval := interval '2 seconds';  -- how far ahead starts are booked
BEGIN
    IF NOT EXISTS (SELECT 1 FROM {t}nodes AS n WHERE n.id = p_node AND n.reaped_at IS NULL) THEN
        RETURN;  -- jobs a reaped node took now would have no reaper left to free them
    END IF;
    SELECT array_agg(c.id), array_agg(c.concurrency_key), array_agg(c.concurrency_limit),
           array_agg(c.rate_key), array_agg(c.rate_count), array_agg(c.rate_period)
      INTO v_ids, v_keys, v_limits, v_buckets, v_counts, v_periods
      FROM unnest(p_queues, p_limits) AS q(name, lim)
      CROSS JOIN LATERAL (
          SELECT j.id, j.concurrency_key, j.concurrency_limit, j.rate_key, j.rate_count,
                 j.rate_period
          FROM {t}jobs AS j
          WHERE j.state = 'queued' AND j.queue = q.name
            AND (j.concurrency_key IS NULL
                 OR (SELECT count(*) FROM {t}jobs AS r
                     WHERE r.concurrency_key = j.concurrency_key AND r.state = 'running')
                    < j.concurrency_limit)
            AND (j.rate_key IS NULL
                 OR coalesce((SELECT b.tat FROM {t}rate_buckets AS b WHERE b.key = j.rate_key),
                             '-infinity') <= clock_timestamp() + c_horizon)
          ORDER BY j.priority DESC, j.id
          LIMIT q.lim
          FOR UPDATE OF j SKIP LOCKED
      ) AS c;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;

    IF cardinality(array_remove(v_keys, NULL)) + cardinality(array_remove(v_buckets, NULL)) > 0
    THEN  -- some candidates are limited (otherwise, the common case, straight to the claim)
        -- Step 2: one advisory lock per key and per bucket, in a fixed order.
        PERFORM pg_advisory_xact_lock(hashtext('{t}'), h)
           FROM (SELECT DISTINCT hashtext(k) AS h
                 FROM (SELECT 'c:' || unnest(v_keys) AS k
                       UNION ALL SELECT 'r:' || unnest(v_buckets)) AS all_keys
                 WHERE k IS NOT NULL
                 ORDER BY 1) AS locks;
        -- Step 3, in a new snapshot: keep what fits. Keys first: a job held back by its key
        -- books no start time.
        v_at := clock_timestamp();
        SELECT array_agg(x.id ORDER BY x.ord), array_agg(x.delay ORDER BY x.ord)
          INTO v_ids, v_delays
          FROM (
              SELECT k.id, k.ord,
                     CASE WHEN k.bucket IS NULL THEN 0.0 ELSE extract(epoch FROM
                         greatest(coalesce(b.tat, v_at), v_at)
                         + make_interval(secs => (k.bucket_rank - 1) * k.period / k.cnt)
                         - v_at)::float8 END AS delay
              FROM (
                  SELECT f.*, row_number() OVER (PARTITION BY f.bucket ORDER BY f.ord)
                             AS bucket_rank
                  FROM (
                      SELECT u.*,
                             row_number() OVER (PARTITION BY u.key ORDER BY u.ord) AS key_rank
                      FROM unnest(v_ids, v_keys, v_limits, v_buckets, v_counts, v_periods)
                           WITH ORDINALITY AS u(id, key, lim, bucket, cnt, period, ord)
                  ) AS f
                  WHERE f.key IS NULL
                     OR (SELECT count(*) FROM {t}jobs AS r
                         WHERE r.concurrency_key = f.key AND r.state = 'running') + f.key_rank
                        <= f.lim
              ) AS k
              LEFT JOIN {t}rate_buckets AS b ON b.key = k.bucket
          ) AS x
         WHERE x.delay <= extract(epoch FROM c_horizon);
        IF v_ids IS NULL THEN
            RETURN;
        END IF;
        -- Each bucket's next free time: one spacing after its last start booked here.
        INSERT INTO {t}rate_buckets AS b (key, tat, starts, period)
        SELECT j.rate_key,
               v_at + make_interval(secs => max(d.delay) + max(j.rate_period / j.rate_count)),
               min(j.rate_count), max(j.rate_period)
        FROM unnest(v_ids, v_delays) AS d(id, delay)
        JOIN {t}jobs AS j ON j.id = d.id
        WHERE j.rate_key IS NOT NULL
        GROUP BY j.rate_key
        ON CONFLICT (key) DO UPDATE
        SET tat = EXCLUDED.tat, starts = EXCLUDED.starts, period = EXCLUDED.period;
    END IF;

    RETURN QUERY
    UPDATE {t}jobs AS j
    SET state = 'running', attempt = j.attempt + 1, node_id = p_node,
        started_at = to_timestamp(p_now), cancel_requested = false
    WHERE j.id = ANY(v_ids)
    RETURNING j.id, j.name, j.queue, j.attempt, j.max_attempts,
              -- A workflow step that takes its parents' results gets them first (see 0004).
              CASE WHEN j.pass_results IS NULL THEN j.args
                   WHEN (SELECT sum(octet_length((SELECT p.result FROM {t}jobs AS p
                                                  WHERE p.id = d.depends_on)::text))
                         FROM {t}job_deps AS d WHERE d.job_id = j.id) > p_max_input THEN NULL
                   ELSE (SELECT jsonb_build_array(
                                    jsonb_build_array(CASE j.pass_results
                                                          WHEN 'one' THEN r.results -> 0
                                                          ELSE r.results END) || (j.args -> 0),
                                    j.args -> 1)
                         FROM (SELECT coalesce(jsonb_agg(
                                              (SELECT p.result FROM {t}jobs AS p
                                               WHERE p.id = d.depends_on)
                                              ORDER BY d.ord), '[]') AS results
                               FROM {t}job_deps AS d WHERE d.job_id = j.id) AS r)
              END,
              j.workflow_id,
              CASE WHEN j.rate_key IS NULL THEN 0.0
                   ELSE v_delays[array_position(v_ids, j.id)] END;
END
$fn$;

-- complete_jobs, again (see 0004): the same, and a finished job with a concurrency key wakes
-- the nodes serving its queue, since its slot is free for the next job with that key.
CREATE OR REPLACE FUNCTION {t}complete_jobs(
    p_node uuid, p_id uuid[], p_attempt integer[], p_state {t}job_state[], p_result jsonb[],
    p_error jsonb[], p_finished float8[], p_run_at float8[], p_reason text[]
) RETURNS SETOF uuid LANGUAGE plpgsql AS $fn$
DECLARE
    v_tid tid[];
    v_woken bigint;
    v_settle_ids uuid[];
    v_settle_states {t}job_state[];
BEGIN
    -- Step 1: lock each job by primary key; keep its tid if fencing passes (the first
    -- passing outcome of a job in the batch only).
    SELECT array_agg(CASE WHEN first THEN tid END ORDER BY ord)
      INTO v_tid
      FROM (
          SELECT ord, tid,
                 tid IS NOT NULL AND row_number() OVER (PARTITION BY tid ORDER BY ord) = 1
                     AS first
          FROM (
              SELECT u.ord,
                     (SELECT CASE WHEN j.attempt = u.attempt AND j.node_id = p_node
                                   AND j.state = 'running' THEN j.ctid END
                      FROM {t}jobs AS j WHERE j.id = u.id
                      FOR UPDATE) AS tid
              FROM unnest(p_id, p_attempt) WITH ORDINALITY AS u(id, attempt, ord)
          ) AS looked
      ) AS firsts;

    -- Step 2, under a new snapshot: update exactly the locked versions.
    WITH outcome AS (
        SELECT x.tid, x.result, x.error, x.finished, x.run_at, x.reason,
               x.state AS reported,
               CASE WHEN x.state IN ('queued', 'scheduled') AND j.cancel_requested
                    THEN 'cancelled'::{t}job_state
                    WHEN x.state IN ('queued', 'scheduled') AND j.attempt >= j.max_attempts
                    THEN 'failed'::{t}job_state
                    ELSE x.state END AS state
        FROM unnest(v_tid, p_state, p_result, p_error, p_finished, p_run_at, p_reason)
             AS x(tid, state, result, error, finished, run_at, reason)
        JOIN {t}jobs AS j ON j.ctid = x.tid
    ), applied AS (
        UPDATE {t}jobs AS j
        SET state = o.state,
            result = o.result,
            error = o.error,
            reason = CASE WHEN o.state = 'cancelled' AND (o.reported <> 'cancelled'
                                                          OR o.reason IS NULL)
                          THEN j.reason ELSE o.reason END,
            finished_at = CASE WHEN o.state IN ('succeeded', 'failed', 'cancelled', 'lost')
                               THEN to_timestamp(o.finished) END,
            run_at = CASE WHEN o.state IN ('queued', 'scheduled')
                          THEN coalesce(to_timestamp(o.run_at), j.run_at) ELSE j.run_at END
        FROM outcome AS o
        WHERE j.ctid = o.tid
        RETURNING j.id, j.queue, j.state, j.run_at, j.has_dependents, j.concurrency_key
    ), waited AS (
        DELETE FROM {t}waiters AS w USING applied AS a
        WHERE w.job_id = a.id AND a.state IN ('succeeded', 'failed', 'cancelled', 'lost')
        RETURNING w.job_id
    ), wake AS (
        SELECT pg_notify('{channel}', 'q:' || queue)
        FROM (SELECT DISTINCT queue FROM applied WHERE state = 'queued') AS q
        UNION ALL
        SELECT pg_notify('{channel}', 's:' || extract(epoch FROM min(run_at)))
        FROM applied WHERE state = 'scheduled' HAVING count(*) > 0
        UNION ALL
        SELECT pg_notify('{channel}', 'f:' || job_id) FROM waited
        UNION ALL
        SELECT pg_notify('{channel}', 'q:' || queue)
        FROM (SELECT DISTINCT queue FROM applied
              WHERE concurrency_key IS NOT NULL AND state <> 'queued') AS freed
    )
    SELECT (SELECT count(*) FROM wake), s.ids, s.states
      INTO v_woken, v_settle_ids, v_settle_states
      FROM (SELECT array_agg(id) AS ids, array_agg(state) AS states FROM applied
            WHERE has_dependents AND state IN ('succeeded', 'failed', 'cancelled', 'lost')
           ) AS s;

    -- Step 3, under a new snapshot that sees step 2: release or cancel the dependents.
    IF v_settle_ids IS NOT NULL THEN
        PERFORM {t}settle_jobs(v_settle_ids, v_settle_states);
    END IF;

    RETURN QUERY SELECT u.id FROM unnest(p_id, v_tid) AS u(id, tid) WHERE u.tid IS NULL;
END
$fn$;
