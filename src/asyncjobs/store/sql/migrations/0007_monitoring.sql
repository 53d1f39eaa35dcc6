-- 0007: monitoring. Each finished attempt records its run time and CPU time (as its node
-- measured them), and the nodes keep per-node statistics in 10-second buckets: attempts by
-- job name and outcome, with their summed queue wait, run time and CPU time. The status
-- command's throughput and the CPU-vs-IO report read those few rows instead of the finished
-- jobs. A node adds up its own in memory and writes them with its heartbeat (see heartbeat
-- in queries.sql): no statement of the hot path does more, and its id is in the key, so nodes
-- never contend on them. Nodes report their pool's workers, and a claim returns how long
-- each job waited after it was due.

ALTER TABLE {t}jobs
    ADD COLUMN wall_s real,   -- the last attempt's run time, seconds
    ADD COLUMN cpu_s  real;   -- and its CPU time (null where it was not measured)

ALTER TABLE {t}nodes ADD COLUMN workers integer NOT NULL DEFAULT 0;

CREATE TABLE {t}job_stats (
    bucket       timestamptz NOT NULL,  -- start of a 10-second bucket, by the node's clock
    node_id      uuid NOT NULL,
    name         text NOT NULL,
    outcome      text NOT NULL,         -- succeeded, failed, cancelled or retried
    attempts     integer NOT NULL,
    wait_s       float8 NOT NULL,       -- summed: due to started
    wall_s       float8 NOT NULL,       -- summed run times
    max_wall_s   float8 NOT NULL,
    timed        integer NOT NULL,      -- attempts that measured their CPU time
    timed_wall_s float8 NOT NULL,       -- their summed run times
    cpu_s        float8 NOT NULL,       -- their summed CPU times
    PRIMARY KEY (bucket, node_id, name, outcome)
);

-- complete_jobs, again (see 0005), with each outcome's run and CPU time, stored on the job.
DROP FUNCTION {t}complete_jobs(
    uuid, uuid[], integer[], {t}job_state[], jsonb[], jsonb[], float8[], float8[], text[]
);

CREATE FUNCTION {t}complete_jobs(
    p_node uuid, p_id uuid[], p_attempt integer[], p_state {t}job_state[], p_result jsonb[],
    p_error jsonb[], p_finished float8[], p_run_at float8[], p_reason text[],
    p_wall float8[], p_cpu float8[]
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
        SELECT x.tid, x.result, x.error, x.finished, x.run_at, x.reason, x.wall, x.cpu,
               x.state AS reported,
               CASE WHEN x.state IN ('queued', 'scheduled') AND j.cancel_requested
                    THEN 'cancelled'::{t}job_state
                    WHEN x.state IN ('queued', 'scheduled') AND j.attempt >= j.max_attempts
                    THEN 'failed'::{t}job_state
                    ELSE x.state END AS state
        FROM unnest(v_tid, p_state, p_result, p_error, p_finished, p_run_at, p_reason,
                    p_wall, p_cpu)
             AS x(tid, state, result, error, finished, run_at, reason, wall, cpu)
        JOIN {t}jobs AS j ON j.ctid = x.tid
    ), applied AS (
        UPDATE {t}jobs AS j
        SET state = o.state,
            result = o.result,
            error = o.error,
            wall_s = o.wall,
            cpu_s = o.cpu,
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

-- claim_jobs, again (see 0005): the same, and each job's queue wait as its last column.
DROP FUNCTION {t}claim_jobs(uuid, text[], integer[], float8, bigint, text[]);

CREATE FUNCTION {t}claim_jobs(
    p_node uuid, p_queues text[], p_limits integer[], p_now float8, p_max_input bigint,
    p_freeing text[]
) RETURNS TABLE (id uuid, name text, queue text, attempt integer, max_attempts integer,
                 args jsonb, workflow_id uuid, delay float8, concurrency_key text,
                 wait float8)
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
              j.concurrency_key,
              -- how long it waited after it was due (run_at is not changed by the claim)
              greatest(p_now - extract(epoch FROM j.run_at), 0);
END
$fn$;
