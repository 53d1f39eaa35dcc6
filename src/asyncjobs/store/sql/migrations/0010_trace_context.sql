-- 0010: trace context (asyncjobs.tracing, Settings.tracing). A job enqueued while tracing is
-- on stores its enqueue span's context: the carrier the OpenTelemetry propagators fill (W3C
-- traceparent and tracestate, by default), encoded as JSON text. The claim hands it to the
-- node, whose run span of each attempt joins the trace of the request that enqueued the job.
-- Null when tracing is off, and for the runs of schedules; no statement looks inside it.

ALTER TABLE {t}jobs ADD COLUMN trace text;

-- claim_jobs, again (see 0007): the same, and each job's trace context as its last column.
DROP FUNCTION {t}claim_jobs(uuid, text[], integer[], float8, bigint, text[]);

CREATE FUNCTION {t}claim_jobs(
    p_node uuid, p_queues text[], p_limits integer[], p_now float8, p_max_input bigint,
    p_freeing text[]
) RETURNS TABLE (id uuid, name text, queue text, attempt integer, max_attempts integer,
                 args jsonb, workflow_id uuid, delay float8, concurrency_key text,
                 wait float8, trace text)
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
              greatest(p_now - extract(epoch FROM j.run_at), 0),
              j.trace;
END
$fn$;
