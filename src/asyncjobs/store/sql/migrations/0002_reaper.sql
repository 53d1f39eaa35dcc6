-- 0002: reaping the nodes that stopped heartbeating. A reaped node's row is kept (marked), so
-- that the node, if it was only cut off, learns it was reaped, and so monitoring can show it.

ALTER TABLE {t}nodes
    ADD COLUMN reaped_at timestamptz,   -- set once, by the reaper that took the node's jobs
    ADD COLUMN reaped_by uuid;          -- the node that did it

-- complete_jobs, again: a retry of a job that has no attempts left ends it failed. The node
-- never sends one, but the store is the last line: a non-retryable job must never run twice.
CREATE OR REPLACE FUNCTION {t}complete_jobs(
    p_node uuid, p_id uuid[], p_attempt integer[], p_state {t}job_state[], p_result jsonb[],
    p_error jsonb[], p_finished float8[], p_run_at float8[], p_reason text[]
) RETURNS SETOF uuid LANGUAGE plpgsql AS $fn$
DECLARE
    v_tid tid[];
    v_woken bigint;
BEGIN
    -- Step 1 (see 0001): lock each job by primary key; keep its tid if fencing passes. Of
    -- several outcomes for one job in a batch, only the first that passes is applied (as if
    -- they came one by one: after it, the job is no longer running that attempt).
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
        -- A retry never outruns a cancel request (the claim that would re-run the job clears
        -- it), and never goes past the job's attempts.
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
            -- A cancel without a reason of its own keeps the one given with the request.
            reason = CASE WHEN o.state = 'cancelled' AND (o.reported <> 'cancelled'
                                                          OR o.reason IS NULL)
                          THEN j.reason ELSE o.reason END,
            finished_at = CASE WHEN o.state IN ('succeeded', 'failed', 'cancelled', 'lost')
                               THEN to_timestamp(o.finished) END,
            run_at = CASE WHEN o.state IN ('queued', 'scheduled')
                          THEN coalesce(to_timestamp(o.run_at), j.run_at) ELSE j.run_at END
        FROM outcome AS o
        WHERE j.ctid = o.tid
        RETURNING j.id, j.queue, j.state, j.run_at
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
    )
    SELECT count(*) INTO v_woken FROM wake;

    RETURN QUERY SELECT u.id FROM unnest(p_id, v_tid) AS u(id, tid) WHERE u.tid IS NULL;
END
$fn$;
