-- 0005: concurrency keys and rate limits (asyncjobs.limits), enforced where jobs are claimed.
--
-- A job may carry a concurrency key and a limit: it starts only while fewer than its limit
-- jobs with that key run. The running count is never stored, so nothing can leak: a claim
-- counts the running jobs of each key through a partial index, after taking a transaction
-- advisory lock on the key, in a statement whose snapshot follows the lock. Two nodes racing
-- for a key's last slot therefore take turns, and the second sees the first's claim.
--
-- A job the claim turns away because its key is full is *parked*: it stays queued, but out of
-- the ready index, so a backlog for one busy key costs later claims nothing and never holds
-- back other keys. Whatever frees a slot (complete_jobs, the reaper, release_claims) takes
-- the key's lock too and unparks, best first, as many jobs as there are free slots; the
-- lock orders it against the claim that parked them, so no wake-up is lost.
--
-- A job may carry a rate bucket and a limit (count per period). The bucket's starts are
-- spaced evenly, period / count apart (the generic cell rate algorithm with no burst), so no
-- window of one period ever holds more than count of them. A claim books start times up to
-- two seconds ahead under the bucket's lock, moves the bucket's next free time (tat) past
-- them, and tells the node how long each job must wait before it starts. A job whose start
-- would fall beyond that is rescheduled to just before it, for the promoter to bring back.

ALTER TABLE {t}jobs
    ADD COLUMN concurrency_key   text,
    ADD COLUMN concurrency_limit integer,
    ADD COLUMN rate_key          text,
    ADD COLUMN rate_count        integer,
    ADD COLUMN rate_period       float8,        -- seconds
    ADD COLUMN parked            boolean NOT NULL DEFAULT false;  -- queued, waiting for a slot

-- The ready set leaves out parked jobs.
DROP INDEX {schema}.{prefix}jobs_ready;
CREATE INDEX {prefix}jobs_ready ON {t}jobs (queue, priority DESC, id)
    WHERE state = 'queued' AND NOT parked;
-- Parked jobs by key, best first: what a freed slot unparks.
CREATE INDEX {prefix}jobs_parked ON {t}jobs (concurrency_key, priority DESC, id)
    WHERE state = 'queued' AND parked;
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

-- Steps 2 and 3 of claim_jobs, for candidates with a key or a bucket (arrays aligned, in
-- candidate order): returns the ids to claim and each one's delay. Parks and reschedules the
-- others. Its own function so that its statements, which are long to plan and always take
-- their index paths, use generic plans from the first call, while the claim's own keep
-- planning against the table as it is (a plan cached on a near-empty table would scan it).
CREATE FUNCTION {t}admit_limited(
    v_ids uuid[], v_keys text[], v_limits integer[], v_buckets text[], v_counts integer[],
    v_periods float8[], p_freeing text[], OUT o_ids uuid[], OUT o_delays float8[]
) LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
#variable_conflict use_column
DECLARE
    v_verdicts text[];
    v_delays float8[];
    v_at timestamptz;
    v_woken bigint;
    c_horizon CONSTANT float8 := 2.0;  -- seconds: how far ahead starts are booked
BEGIN
    -- Step 2: one advisory lock per key and per bucket, in a fixed order.
    PERFORM pg_advisory_xact_lock(hashtext('{t}'), h)
       FROM (SELECT DISTINCT hashtext(k) AS h
             FROM (SELECT 'c:' || unnest(v_keys) AS k
                   UNION ALL SELECT 'r:' || unnest(v_buckets)) AS all_keys
             WHERE k IS NOT NULL
             ORDER BY 1) AS locks;
    -- Step 3, in a new snapshot: the verdicts. Keys first: a job held back by its key
    -- books no start time.
    v_at := clock_timestamp();
    SELECT array_agg(x.id ORDER BY x.ord), array_agg(x.verdict ORDER BY x.ord),
           array_agg(x.delay ORDER BY x.ord)
      INTO v_ids, v_verdicts, v_delays
      FROM (
          SELECT k.id, k.ord,
                 CASE WHEN NOT k.fits AND k.key = ANY(p_freeing) THEN 'skip'
                      WHEN NOT k.fits THEN 'park'
                      WHEN k.bucket IS NULL THEN 'claim'
                      WHEN k.slot - extract(epoch FROM v_at) <= c_horizon THEN 'claim'
                      ELSE 'later' END AS verdict,
                 CASE WHEN k.bucket IS NULL OR NOT k.fits THEN 0.0
                      ELSE k.slot - extract(epoch FROM v_at) END AS delay
          FROM (
              SELECT f.*,
                     extract(epoch FROM greatest(coalesce(b.tat, v_at), v_at))
                     + (row_number() OVER (PARTITION BY f.fits, f.bucket ORDER BY f.ord) - 1)
                       * f.period / f.cnt AS slot
              FROM (
                  SELECT u.*,
                         u.key IS NULL
                         OR (SELECT count(*) FROM {t}jobs AS r
                             WHERE r.concurrency_key = u.key AND r.state = 'running')
                            + row_number() OVER (PARTITION BY u.key ORDER BY u.ord)
                            <= u.lim AS fits
                  FROM unnest(v_ids, v_keys, v_limits, v_buckets, v_counts, v_periods)
                       WITH ORDINALITY AS u(id, key, lim, bucket, cnt, period, ord)
              ) AS f
              LEFT JOIN {t}rate_buckets AS b ON b.key = f.bucket
          ) AS k
      ) AS x;
    -- Parked: out of the ready set until a slot of their key frees.
    UPDATE {t}jobs SET parked = true
    WHERE id = ANY(ARRAY(SELECT v.id FROM unnest(v_ids, v_verdicts) AS v(id, verdict)
                         WHERE v.verdict = 'park'));
    -- Rescheduled: back just before their start would fall within the horizon.
    WITH later AS (
        UPDATE {t}jobs AS j
        SET state = 'scheduled',
            run_at = v_at + make_interval(
                secs => v_delays[array_position(v_ids, j.id)] - c_horizon / 2)
        WHERE j.id = ANY(ARRAY(SELECT v.id FROM unnest(v_ids, v_verdicts) AS v(id, verdict)
                               WHERE v.verdict = 'later'))
        RETURNING j.run_at
    )
    SELECT count(*) INTO v_woken
      FROM (SELECT pg_notify('{channel}', 's:' || extract(epoch FROM min(run_at)))
            FROM later HAVING count(*) > 0) AS wake;
    -- Each bucket's next free time: one spacing after its last start booked here.
    INSERT INTO {t}rate_buckets AS b (key, tat, starts, period)
    SELECT d.bucket,
           v_at + make_interval(secs => max(d.delay) + max(d.period / d.cnt)),
           min(d.cnt), max(d.period)
    FROM unnest(v_verdicts, v_delays, v_buckets, v_counts, v_periods)
         AS d(verdict, delay, bucket, cnt, period)
    WHERE d.verdict = 'claim' AND d.bucket IS NOT NULL
    GROUP BY d.bucket
    ON CONFLICT (key) DO UPDATE
    SET tat = EXCLUDED.tat, starts = EXCLUDED.starts, period = EXCLUDED.period;
    SELECT array_agg(v.id), array_agg(v.delay) INTO o_ids, o_delays
    FROM unnest(v_ids, v_verdicts, v_delays) AS v(id, verdict, delay)
    WHERE v.verdict = 'claim';
END
$fn$;

-- Claims at most p_limits[i] ready jobs from queue p_queues[i] for node p_node, highest
-- priority first, then oldest; never one another node holds (SKIP LOCKED), never for a
-- reaped node. Each claim bumps the attempt: (attempt, node) is the fencing token.
--
-- Step 1 picks and locks the candidates from the ready index. If some have a key or a
-- bucket, step 2 takes the advisory lock of each (in hash order, so claimers never
-- deadlock), and step 3, under a snapshot taken after the locks, decides for each: claim it
-- (for its key, running + rank <= limit; for its bucket, a start within the horizon), park it
-- (its key is full), or reschedule it (its bucket is booked beyond the horizon). A
-- rate-limited job comes back with the seconds it must wait (delay) before it starts.
-- p_freeing: keys whose jobs the claiming node has finished but not yet recorded; a job
-- turned away only because of them is left ready, not parked (the record, moments later,
-- wakes the queue), which spares a park and an unpark per job on a busy node.
CREATE FUNCTION {t}claim_jobs(
    p_node uuid, p_queues text[], p_limits integer[], p_now float8, p_max_input bigint,
    p_freeing text[]
) RETURNS TABLE (id uuid, name text, queue text, attempt integer, max_attempts integer,
                 args jsonb, workflow_id uuid, delay float8, concurrency_key text)
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
          WHERE j.state = 'queued' AND NOT j.parked AND j.queue = q.name
          ORDER BY j.priority DESC, j.id
          LIMIT q.lim
          FOR UPDATE OF j SKIP LOCKED
      ) AS c;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;

    IF cardinality(array_remove(v_keys, NULL)) + cardinality(array_remove(v_buckets, NULL)) > 0
    THEN  -- some candidates are limited (otherwise, the common case, straight to the claim)
        SELECT a.o_ids, a.o_delays INTO v_ids, v_delays
          FROM {t}admit_limited(v_ids, v_keys, v_limits, v_buckets, v_counts, v_periods,
                                p_freeing) AS a;
        IF v_ids IS NULL THEN
            RETURN;
        END IF;
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
                   ELSE v_delays[array_position(v_ids, j.id)] END,
              j.concurrency_key;
END
$fn$;

-- Unparks, for each key in p_keys (which just freed slots), as many of its parked jobs as it
-- has free slots, best first, and wakes their queues. Takes the keys' locks first, in the
-- claim's order: a claim parking a job of the key has committed by then, and this statement's
-- snapshot sees it. Returns how many were unparked.
CREATE FUNCTION {t}unpark(p_keys text[]) RETURNS bigint
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
DECLARE
    v_ids uuid[];
    v_unparked bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('{t}'), h)
       FROM (SELECT DISTINCT hashtext('c:' || k) AS h
             FROM unnest(p_keys) AS k WHERE k IS NOT NULL
             ORDER BY 1) AS locks;
    SELECT array_agg(p.id) INTO v_ids
    FROM (SELECT DISTINCT k FROM unnest(p_keys) AS k WHERE k IS NOT NULL) AS keys
    CROSS JOIN LATERAL (
        SELECT j.id, j.concurrency_limit AS lim,
               row_number() OVER (ORDER BY j.priority DESC, j.id) AS rank
        FROM {t}jobs AS j
        WHERE j.state = 'queued' AND j.parked AND j.concurrency_key = keys.k
        ORDER BY j.priority DESC, j.id
        LIMIT 1000
    ) AS p
    WHERE (SELECT count(*) FROM {t}jobs AS r
           WHERE r.concurrency_key = keys.k AND r.state = 'running') + p.rank <= p.lim;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    WITH upd AS (
        UPDATE {t}jobs SET parked = false
        WHERE id = ANY(v_ids) AND state = 'queued' AND parked
        RETURNING queue
    ), wake AS (
        SELECT pg_notify('{channel}', 'q:' || queue) FROM (SELECT DISTINCT queue FROM upd) AS q
    )
    SELECT count(*) INTO v_unparked FROM upd CROSS JOIN (SELECT count(*) FROM wake) AS w;
    RETURN v_unparked;
END
$fn$;

-- complete_jobs, again (see 0004): the same, then the slots of finished jobs with a
-- concurrency key go to the jobs parked for them (unpark), in the same transaction.
CREATE OR REPLACE FUNCTION {t}complete_jobs(
    p_node uuid, p_id uuid[], p_attempt integer[], p_state {t}job_state[], p_result jsonb[],
    p_error jsonb[], p_finished float8[], p_run_at float8[], p_reason text[]
) RETURNS SETOF uuid LANGUAGE plpgsql AS $fn$
DECLARE
    v_tid tid[];
    v_woken bigint;
    v_settle_ids uuid[];
    v_settle_states {t}job_state[];
    v_keys text[];
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
        -- jobs left ready while these keys were freeing (claim_jobs' p_freeing) can go now
        SELECT pg_notify('{channel}', 'q:' || queue)
        FROM (SELECT DISTINCT queue FROM applied WHERE concurrency_key IS NOT NULL) AS freed
    )
    SELECT (SELECT count(*) FROM wake), s.ids, s.states,
           (SELECT array_agg(DISTINCT concurrency_key) FROM applied
            WHERE concurrency_key IS NOT NULL)
      INTO v_woken, v_settle_ids, v_settle_states, v_keys
      FROM (SELECT array_agg(id) AS ids, array_agg(state) AS states FROM applied
            WHERE has_dependents AND state IN ('succeeded', 'failed', 'cancelled', 'lost')
           ) AS s;

    -- Step 3, under a new snapshot that sees step 2: release or cancel the dependents.
    IF v_settle_ids IS NOT NULL THEN
        PERFORM {t}settle_jobs(v_settle_ids, v_settle_states);
    END IF;
    IF v_keys IS NOT NULL THEN  -- their slots are free: to the jobs parked for them
        PERFORM {t}unpark(v_keys);
    END IF;

    RETURN QUERY SELECT u.id FROM unnest(p_id, v_tid) AS u(id, tid) WHERE u.tid IS NULL;
END
$fn$;
