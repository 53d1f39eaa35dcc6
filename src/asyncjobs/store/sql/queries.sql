-- Named queries, loaded by name (asyncjobs.store.queries). Each block starts with
-- `-- name: <name>`, then a comment saying what the statement guarantees.
-- Tokens: {t} is the schema-qualified table prefix, {channel} the NOTIFY channel.
-- Batched statements take one array per column and unnest them: one round trip per batch.

-- name: insert_jobs
-- Inserts jobs without unique keys in one statement (a plain INSERT: no speculative-insertion
-- checks, which cost about 6% of a single enqueue). Wakes the nodes serving each queue that
-- got a ready job, and the promoters when a scheduled job was added. Returns inserted ids.
-- $10: each job's trace context (null unless tracing is on).
WITH ins AS (
    INSERT INTO {t}jobs (id, name, queue, priority, state, args, run_at, max_attempts, unique_key,
                         trace)
    SELECT u.id, u.name, u.queue, u.priority, u.state, u.args, to_timestamp(u.run_at),
           u.max_attempts, u.unique_key, u.trace
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::smallint[], $5::{t}job_state[],
                $6::jsonb[], $7::float8[], $8::integer[], $9::text[], $10::text[])
         AS u(id, name, queue, priority, state, args, run_at, max_attempts, unique_key, trace)
    RETURNING id, queue, state, run_at
), wake AS (
    SELECT pg_notify('{channel}', 'q:' || queue)
    FROM (SELECT DISTINCT queue FROM ins WHERE state = 'queued') AS q
    UNION ALL
    SELECT pg_notify('{channel}', 's:' || extract(epoch FROM min(run_at)))
    FROM ins WHERE state = 'scheduled' HAVING count(*) > 0
)
SELECT ins.id FROM ins CROSS JOIN (SELECT count(*) FROM wake) AS w;

-- name: insert_job
-- Inserts one job without a unique key (the common single enqueue) and wakes the nodes or
-- promoters, in one round trip. $10: its trace context (null unless tracing is on).
WITH ins AS (
    INSERT INTO {t}jobs (id, name, queue, priority, state, args, run_at, max_attempts, unique_key,
                         trace)
    VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7), $8, $9, $10)
    RETURNING id, queue, state, run_at
)
SELECT id, pg_notify('{channel}', CASE WHEN state = 'queued' THEN 'q:' || queue
                                       ELSE 's:' || extract(epoch FROM run_at) END)
FROM ins;

-- name: insert_job_unique
-- Like insert_job, for a job with a unique key: skipped (no row returned) if an unfinished job
-- holds the key.
WITH ins AS (
    INSERT INTO {t}jobs (id, name, queue, priority, state, args, run_at, max_attempts, unique_key,
                         trace)
    VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7), $8, $9, $10)
    ON CONFLICT DO NOTHING
    RETURNING id, queue, state, run_at
)
SELECT id, pg_notify('{channel}', CASE WHEN state = 'queued' THEN 'q:' || queue
                                       ELSE 's:' || extract(epoch FROM run_at) END)
FROM ins;

-- name: insert_jobs_unique
-- Like insert_jobs, for batches with unique keys, concurrency keys or rate limits (every
-- column; the extra ones stay out of the common statements). A job whose unique_key matches
-- an unfinished job (or whose id exists) is skipped, not an error; the caller looks up what
-- it collided with.
WITH ins AS (
    INSERT INTO {t}jobs (id, name, queue, priority, state, args, run_at, max_attempts, unique_key,
                         concurrency_key, concurrency_limit, rate_key, rate_count, rate_period,
                         trace)
    SELECT u.id, u.name, u.queue, u.priority, u.state, u.args, to_timestamp(u.run_at),
           u.max_attempts, u.unique_key, u.ckey, u.climit, u.rkey, u.rcount, u.rperiod, u.trace
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::smallint[], $5::{t}job_state[],
                $6::jsonb[], $7::float8[], $8::integer[], $9::text[], $10::text[],
                $11::integer[], $12::text[], $13::integer[], $14::float8[], $15::text[])
         AS u(id, name, queue, priority, state, args, run_at, max_attempts, unique_key,
              ckey, climit, rkey, rcount, rperiod, trace)
    ON CONFLICT DO NOTHING
    RETURNING id, queue, state, run_at
), wake AS (
    SELECT pg_notify('{channel}', 'q:' || queue)
    FROM (SELECT DISTINCT queue FROM ins WHERE state = 'queued') AS q
    UNION ALL
    SELECT pg_notify('{channel}', 's:' || extract(epoch FROM min(run_at)))
    FROM ins WHERE state = 'scheduled' HAVING count(*) > 0
)
SELECT ins.id FROM ins CROSS JOIN (SELECT count(*) FROM wake) AS w;

-- name: notify_new
-- Wakes nodes after a COPY (which cannot notify by itself): one notification per queue that
-- got ready jobs ($1), and one for the earliest new scheduled job ($2, may be null).
SELECT count(pg_notify('{channel}', 'q:' || q)) FROM unnest($1::text[]) AS q
UNION ALL
SELECT count(pg_notify('{channel}', 's:' || $2::float8)) WHERE $2::float8 IS NOT NULL;

-- name: find_existing
-- For jobs an insert skipped: their own id if it exists (a retried insert), else the id of the
-- unfinished job holding the same unique key. Returns (requested id, existing id).
SELECT u.id AS requested, coalesce(own.id, other.id) AS existing
FROM unnest($1::uuid[], $2::text[]) AS u(id, unique_key)
LEFT JOIN {t}jobs AS own ON own.id = u.id
LEFT JOIN {t}jobs AS other
       ON u.unique_key IS NOT NULL AND other.unique_key = u.unique_key
      AND other.state IN ('scheduled', 'waiting', 'queued', 'running');

-- name: claim
-- Claims ready jobs for node $1: at most $3[i] from queue $2[i], within their concurrency keys
-- and rate limits; $4 is the claim time, $5 the most bytes of parents' results a workflow
-- step receives, $6 the keys of jobs the node finished but has not recorded yet. See
-- claim_jobs in migrations/0005_limits.sql.
SELECT * FROM {t}claim_jobs($1, $2, $3, $4, $5, $6);

-- name: release_claims
-- Gives back the jobs node $1 holds as running without knowing it ($2: the ones it runs or has
-- outcomes for): a claim that committed while its answer was lost with the connection. They
-- never started, so they go back to queued with the attempt undone, and nodes are woken.
WITH released AS (
    UPDATE {t}jobs
    SET state = 'queued', attempt = attempt - 1, node_id = NULL, started_at = NULL
    WHERE node_id = $1 AND state = 'running' AND NOT (id = ANY($2::uuid[]))
    RETURNING queue, concurrency_key
), wake AS (
    SELECT pg_notify('{channel}', 'q:' || queue) FROM (SELECT DISTINCT queue FROM released) AS q
)
SELECT (SELECT count(*) FROM released) AS released, (SELECT count(*) FROM wake) AS woken,
       -- the keys whose slots are free again: the caller unparks their waiting jobs
       (SELECT array_agg(DISTINCT concurrency_key) FROM released
        WHERE concurrency_key IS NOT NULL) AS keys;

-- name: complete
-- Applies outcomes reported by node $1, each only if its job still runs that attempt on this
-- node (fencing); returns the ids of stale outcomes, which are never written. See
-- complete_jobs in migrations/0001_initial.sql for why this is a function.
SELECT id FROM {t}complete_jobs($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) AS id;

-- name: promote_due
-- Moves at most $2 scheduled jobs whose run_at has passed ($1) to queued, never one another
-- node is moving, and wakes the nodes serving their queues. Returns how many moved and when
-- the next scheduled job is due.
WITH moved AS (
    UPDATE {t}jobs SET state = 'queued'
    WHERE id = ANY(ARRAY(
        SELECT id FROM {t}jobs
        WHERE state = 'scheduled' AND run_at <= to_timestamp($1)
        ORDER BY run_at
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ))
    RETURNING queue
), wake AS (
    SELECT pg_notify('{channel}', 'q:' || queue) FROM (SELECT DISTINCT queue FROM moved) AS q
)
SELECT (SELECT count(*) FROM moved) AS moved,
       (SELECT count(*) FROM wake) AS woken,
       (SELECT extract(epoch FROM min(run_at))::float8 FROM {t}jobs
        WHERE state = 'scheduled' AND run_at > to_timestamp($1)) AS next_run_at;

-- name: cancel
-- Cancels job $1 with reason $2 at time $3 (the caller then settles its dependents). A job that has not started ends cancelled at once;
-- a running one is flagged and its node is told over NOTIFY (it ends cancelled when the node
-- stops it); a finished job is left as it is. Returns the state after the request.
WITH target AS (
    SELECT id, state FROM {t}jobs WHERE id = $1 FOR UPDATE
), upd AS (
    UPDATE {t}jobs AS j
    SET state = CASE WHEN t.state = 'running' THEN j.state ELSE 'cancelled' END,
        cancel_requested = (t.state = 'running'),
        finished_at = CASE WHEN t.state = 'running' THEN NULL ELSE to_timestamp($3) END,
        reason = $2
    FROM target AS t
    WHERE j.id = t.id AND t.state IN ('scheduled', 'waiting', 'queued', 'running')
    RETURNING j.id, j.state, j.has_dependents
), waited AS (
    DELETE FROM {t}waiters AS w USING upd
    WHERE w.job_id = upd.id AND upd.state = 'cancelled'
    RETURNING w.job_id
), wake AS (
    SELECT pg_notify('{channel}', 'c:' || id) FROM upd WHERE state = 'running'
    UNION ALL
    SELECT pg_notify('{channel}', 'f:' || job_id) FROM waited
)
SELECT coalesce((SELECT state FROM upd), (SELECT state FROM target)) AS state,
       (SELECT count(*) FROM wake) AS woken,
       -- its dependents are to be cancelled too (by settle_jobs, in the same transaction)
       coalesce((SELECT has_dependents AND state = 'cancelled' FROM upd), false) AS settle;

-- name: get_job
-- One job by id.
SELECT * FROM {t}jobs WHERE id = $1;

-- name: find_jobs
-- The first $2 jobs named $1, oldest first. For asyncjobs.testing's assertions: a scan, with
-- no index behind it, never on a node's path.
SELECT * FROM {t}jobs WHERE name = $1 ORDER BY id LIMIT $2;

-- name: list_jobs
-- Jobs, newest first, filtered by state $1, queue $2, name $3 (each may be null), created at
-- or after id $4 and before id $5 (keyset pagination: UUIDv7 ids carry their creation time),
-- at most $6. A backward scan of the primary key that stops at $6 matches. For a state that
-- has a partial index of its own (failed, lost, running, scheduled), the store puts that
-- index's condition, a constant, in place of the marker, so that a rare state is read
-- through its index instead of by walking the whole history.
SELECT * FROM {t}jobs
WHERE /* state index */ ($1::text IS NULL OR state::text = $1)
  AND ($2::text IS NULL OR queue = $2)
  AND ($3::text IS NULL OR name = $3)
  AND ($4::uuid IS NULL OR id >= $4)
  AND ($5::uuid IS NULL OR id < $5)
ORDER BY id DESC
LIMIT $6;

-- name: retry_jobs
-- Queues jobs $1 that failed or were lost again, for one more attempt (max_attempts grows if
-- they had none left), and wakes their queues. Returns the ids re-queued.
WITH again AS (
    UPDATE {t}jobs
    SET state = 'queued', run_at = to_timestamp($2), finished_at = NULL, error = NULL,
        result = NULL, reason = 'retried by request', parked = false,
        max_attempts = greatest(max_attempts, attempt + 1)
    WHERE id = ANY($1::uuid[]) AND state IN ('failed', 'lost')
      -- not while another unfinished job holds its unique key
      AND (unique_key IS NULL OR NOT EXISTS (
          SELECT 1 FROM {t}jobs AS o
          WHERE o.unique_key = {t}jobs.unique_key
            AND o.state IN ('scheduled', 'waiting', 'queued', 'running')))
    RETURNING id, queue
), wake AS (
    SELECT pg_notify('{channel}', 'q:' || queue) FROM (SELECT DISTINCT queue FROM again) AS q
)
SELECT id FROM again WHERE (SELECT count(*) FROM wake) >= 0;

-- name: watch_job
-- Registers interest in job $1 (its end will be notified) without touching the job's row, and
-- returns the job as it was. The caller still re-checks now and then: a job ending at this very
-- moment may not see the registration.
WITH register AS (
    INSERT INTO {t}waiters (job_id)
    SELECT id FROM {t}jobs
    WHERE id = $1 AND state IN ('scheduled', 'waiting', 'queued', 'running')
    ON CONFLICT DO NOTHING
    RETURNING job_id
)
SELECT j.*, (SELECT count(*) FROM register) AS registered FROM {t}jobs AS j WHERE j.id = $1;

-- name: register_node
-- Records a starting node (its own row; no other node writes it while it is alive), with the
-- names of the jobs it runs as durable ($7): what the reaper reads if it dies.
INSERT INTO {t}nodes (id, host, pid, version, queues, concurrency, durable)
VALUES ($1, $2, $3, $4, $5, $6, $7);

-- name: heartbeat
-- Refreshes node $1's heartbeat with the database clock (one statement, however many jobs run)
-- and returns whether the node is still alive (not reaped), and the running jobs on it that
-- were asked to cancel (catching any cancel whose NOTIFY was missed). $3: its pool's workers.
-- $4..$13: the node's statistics since its last heartbeat, one element per bucket, job name
-- and outcome, added to its own rows (a reaped node's too: that work was done).
WITH hb AS (
    UPDATE {t}nodes SET heartbeat_at = now(), running = $2, workers = $3
    WHERE id = $1 AND reaped_at IS NULL
    RETURNING id
), stats AS (
    INSERT INTO {t}job_stats AS s
        (bucket, node_id, name, outcome, attempts, wait_s, wall_s, max_wall_s, timed,
         timed_wall_s, cpu_s)
    SELECT to_timestamp(x.bucket), $1, x.name, x.outcome, x.attempts, x.wait_s, x.wall_s,
           x.max_wall_s, x.timed, x.timed_wall_s, x.cpu_s
    FROM unnest($4::float8[], $5::text[], $6::text[], $7::integer[], $8::float8[],
                $9::float8[], $10::float8[], $11::integer[], $12::float8[], $13::float8[])
         AS x(bucket, name, outcome, attempts, wait_s, wall_s, max_wall_s, timed,
              timed_wall_s, cpu_s)
    ON CONFLICT (bucket, node_id, name, outcome) DO UPDATE
    SET attempts = s.attempts + excluded.attempts,
        wait_s = s.wait_s + excluded.wait_s,
        wall_s = s.wall_s + excluded.wall_s,
        max_wall_s = greatest(s.max_wall_s, excluded.max_wall_s),
        timed = s.timed + excluded.timed,
        timed_wall_s = s.timed_wall_s + excluded.timed_wall_s,
        cpu_s = s.cpu_s + excluded.cpu_s
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM hb) AS alive,
       ARRAY(SELECT id FROM {t}jobs
             WHERE node_id = $1 AND state = 'running' AND cancel_requested) AS cancel_ids;

-- name: reap_lock
-- Marks reaped at most $3 nodes whose heartbeat (database clock) is older than $1 seconds, or
-- that stopped, on behalf of node $2, and locks their running jobs. Never a node another
-- reaper holds (SKIP LOCKED on its row), never one twice (reaped_at). The jobs are locked
-- here, in id order, and decided on by reap_jobs, a statement of its own: a node writing a
-- step's record holds its job's row (FOR SHARE) until it commits, so the decision, made
-- under a later snapshot, sees every step that was running when the node died.
WITH dead AS (
    SELECT id, heartbeat_at FROM {t}nodes
    WHERE reaped_at IS NULL AND id <> $2  -- a node running this is alive: never itself
      AND (heartbeat_at < now() - make_interval(secs => $1) OR stopped_at IS NOT NULL)
    ORDER BY heartbeat_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), marked AS (
    UPDATE {t}nodes AS n SET reaped_at = now(), reaped_by = $2, running = 0
    FROM dead WHERE n.id = dead.id
    RETURNING n.id, dead.heartbeat_at
)
SELECT m.id, m.heartbeat_at,
       ARRAY(SELECT j.id FROM {t}jobs AS j WHERE j.node_id = m.id AND j.state = 'running'
             ORDER BY j.id FOR UPDATE) AS locked
FROM marked AS m;

-- name: reap_jobs
-- Takes over the running jobs of the nodes reap_lock marked ($1 their ids, $2 their last
-- heartbeats). Each running job becomes: cancelled if someone asked to cancel it; lost if one of
-- its steps that is not idempotent was running (it is in doubt: "step 'x' (#3) was running
-- on node <id> when it died"); queued again, its steps kept and one more attempt allowed
-- (a resume is not a retry), if it is durable (its node declared its name, or it completed a
-- step); queued if it has attempts left (the dead attempt counts); otherwise lost, with the
-- reason "node <id> stopped heartbeating at <time>". A job's own node racing the reaper with
-- an outcome loses or wins whole: both lock the job's row and re-check that it is still
-- running. Returns one row per reaped node with what happened to its jobs, the ended jobs
-- whose dependents must be settled (settle), and the keys whose slots it freed.
WITH marked AS (
    SELECT u.id, u.heartbeat_at, n.durable
    FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, heartbeat_at)
    JOIN {t}nodes AS n ON n.id = u.id
), judged AS (
    SELECT j.id, m.id AS node_id, m.heartbeat_at,
           (SELECT 'step ' || quote_literal(s.name) || ' (#' || s.seq || ')'
            FROM {t}job_steps AS s
            WHERE s.job_id = j.id AND s.state = 'running' AND s.attempt = j.attempt
            ORDER BY s.seq LIMIT 1) AS in_doubt,
           (j.name = ANY(m.durable) OR EXISTS (
               SELECT 1 FROM {t}job_steps AS s
               WHERE s.job_id = j.id AND s.state = 'succeeded')) AS durable
    FROM marked AS m
    JOIN {t}jobs AS j ON j.node_id = m.id AND j.state = 'running'
), decided AS (
    SELECT x.*,
           CASE WHEN j.cancel_requested THEN 'cancelled'
                WHEN x.in_doubt IS NOT NULL THEN 'lost'
                WHEN x.durable OR j.attempt < j.max_attempts THEN 'queued'
                ELSE 'lost' END::{t}job_state AS verdict
    FROM judged AS x JOIN {t}jobs AS j ON j.id = x.id
), moved AS (
    UPDATE {t}jobs AS j
    SET state = d.verdict,
        reason = CASE WHEN j.cancel_requested THEN j.reason
                      WHEN d.in_doubt IS NOT NULL
                      THEN d.in_doubt || ' was running on node ' || d.node_id || ' when it died'
                      ELSE 'node ' || d.node_id || ' stopped heartbeating at '
                           || to_char(d.heartbeat_at AT TIME ZONE 'UTC',
                                      'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') END,
        finished_at = CASE WHEN d.verdict = 'queued' THEN NULL ELSE now() END,
        run_at = CASE WHEN d.verdict = 'queued' THEN now() ELSE j.run_at END,
        -- a durable job's resume is not a retry: it gets the attempt the dead one took
        max_attempts = CASE WHEN d.verdict = 'queued' AND d.durable
                            THEN greatest(j.max_attempts, j.attempt + 1)
                            ELSE j.max_attempts END
    FROM decided AS d
    WHERE j.id = d.id AND j.state = 'running'
    RETURNING j.id, j.node_id, j.queue, j.state, j.has_dependents, j.concurrency_key
), waited AS (
    DELETE FROM {t}waiters AS w USING moved
    WHERE w.job_id = moved.id AND moved.state <> 'queued'
    RETURNING w.job_id
), wake AS (
    SELECT pg_notify('{channel}', 'q:' || queue)
    FROM (SELECT DISTINCT queue FROM moved WHERE state = 'queued') AS q
    UNION ALL
    SELECT pg_notify('{channel}', 'f:' || job_id) FROM waited
)
SELECT m.id AS node_id,
       extract(epoch FROM m.heartbeat_at)::float8 AS heartbeat_at,
       count(mv.id) FILTER (WHERE mv.state = 'queued') AS requeued,
       count(mv.id) FILTER (WHERE mv.state = 'lost') AS lost,
       count(mv.id) FILTER (WHERE mv.state = 'cancelled') AS cancelled,
       -- jobs that ended with dependents: the caller settles them in the same transaction
       array_agg(mv.id) FILTER (WHERE mv.has_dependents AND mv.state <> 'queued') AS settle_ids,
       array_agg(mv.state) FILTER (WHERE mv.has_dependents AND mv.state <> 'queued')
           AS settle_states,
       -- the keys whose slots the dead node held: the caller unparks their waiting jobs
       array_agg(DISTINCT mv.concurrency_key) FILTER (WHERE mv.concurrency_key IS NOT NULL)
           AS keys
FROM marked AS m
LEFT JOIN moved AS mv ON mv.node_id = m.id
WHERE (SELECT count(*) FROM wake) >= 0
GROUP BY m.id, m.heartbeat_at;

-- name: prune_jobs
-- Deletes at most $3 jobs that finished more than $1 seconds ago (database clock), never one
-- another pruner holds, in one short statement. $2 bounds the primary-key scan: ids are UUIDv7
-- and carry their creation time, and a job cannot finish before it was created, so no index
-- on finished_at is needed (it would cost every completion). Returns how many it deleted.
WITH gone AS (
    DELETE FROM {t}jobs
    WHERE id = ANY(ARRAY(
        SELECT id FROM {t}jobs
        WHERE id < $2
          AND state IN ('succeeded', 'failed', 'cancelled', 'lost')
          AND finished_at < now() - make_interval(secs => $1)
        ORDER BY id
        LIMIT $3
        FOR UPDATE SKIP LOCKED
    ))
    RETURNING id
), edges AS (
    -- a job's edges to its parents go with it (a finished job never needs them again)
    DELETE FROM {t}job_deps WHERE job_id = ANY(ARRAY(SELECT id FROM gone)) RETURNING job_id
), steps AS (
    DELETE FROM {t}job_steps WHERE job_id = ANY(ARRAY(SELECT id FROM gone)) RETURNING job_id
)
SELECT count(*) FROM gone
WHERE (SELECT count(*) FROM edges) >= 0 AND (SELECT count(*) FROM steps) >= 0;

-- name: prune_rest
-- Deletes node rows reaped or stopped more than $1 seconds ago, and registrations of interest
-- older than $2 seconds (a caller still waiting registers again at its next re-check).
WITH nodes AS (
    DELETE FROM {t}nodes
    WHERE coalesce(reaped_at, stopped_at) < now() - make_interval(secs => $1)
    RETURNING id
), waiters AS (
    DELETE FROM {t}waiters WHERE since < now() - make_interval(secs => $2) RETURNING job_id
), workflows AS (
    -- workflows whose jobs were all pruned, a bounded batch at a time
    DELETE FROM {t}workflows
    WHERE id = ANY(ARRAY(
        SELECT w.id FROM {t}workflows AS w
        WHERE w.created_at < now() - make_interval(secs => $1)
          AND NOT EXISTS (SELECT 1 FROM {t}jobs AS j WHERE j.workflow_id = w.id)
        LIMIT 1000
        FOR UPDATE SKIP LOCKED
    ))
    RETURNING id
), buckets AS (
    -- rate buckets idle for the retention period (a new start recreates one)
    DELETE FROM {t}rate_buckets WHERE tat < now() - make_interval(secs => $1) RETURNING key
), stats AS (
    -- statistics as old as the retention period (a range of the primary key)
    DELETE FROM {t}job_stats WHERE bucket < now() - make_interval(secs => $1) RETURNING 1
)
SELECT (SELECT count(*) FROM nodes) AS nodes, (SELECT count(*) FROM waiters) AS waiters,
       (SELECT count(*) FROM workflows) AS workflows, (SELECT count(*) FROM buckets) AS buckets,
       (SELECT count(*) FROM stats) AS stats;

-- name: deregister_node
-- Marks node $1 as cleanly stopped.
UPDATE {t}nodes SET stopped_at = now(), running = 0 WHERE id = $1;

-- name: sync_schedule
-- Records schedule $1 as declared in code (job $2, spec $3, definition $4), first declared at
-- $5 if it is new, next due at $6 as the declaration now says. Its state (paused, counters,
-- last fire) is kept across redeclarations.
INSERT INTO {t}schedules (name, job, spec, definition, created_at, next_fire_at)
VALUES ($1, $2, $3, $4, to_timestamp($5), to_timestamp($6))
ON CONFLICT (name) DO UPDATE
SET job = EXCLUDED.job, spec = EXCLUDED.spec, definition = EXCLUDED.definition,
    next_fire_at = EXCLUDED.next_fire_at, updated_at = now();

-- name: lock_schedule
-- Locks schedule $1 for one firing (racing nodes wait here, then see what the winner did) and
-- returns its state with the number of its runs not finished, and of those kept waiting.
SELECT extract(epoch FROM s.last_fire_at)::float8 AS last_fire_at,
       extract(epoch FROM s.created_at)::float8 AS created_at,
       s.paused,
       (SELECT count(*) FROM {t}jobs
        WHERE schedule = $1 AND state IN ('scheduled', 'waiting', 'queued', 'running')) AS unfinished,
       (SELECT count(*) FROM {t}jobs WHERE schedule = $1 AND state = 'waiting') AS waiting
FROM {t}schedules AS s WHERE s.name = $1
FOR UPDATE OF s;

-- name: insert_runs
-- Inserts the runs of one firing (under the schedule's lock): one job per fire time, never two
-- for the same (schedule, fire time), and wakes the nodes serving the queue. $10..$14: the
-- template's concurrency key and rate limit. A run carries no trace context: it starts a trace.
WITH ins AS (
    INSERT INTO {t}jobs (id, name, queue, priority, state, args, run_at, max_attempts,
                         schedule, fire_at, concurrency_key, concurrency_limit, rate_key,
                         rate_count, rate_period)
    SELECT r.id, $2, $3, $4, r.state, $5, to_timestamp(r.fire_at), $6, $1, to_timestamp(r.fire_at),
           $10, $11, $12, $13, $14
    FROM unnest($7::uuid[], $8::float8[], $9::{t}job_state[]) AS r(id, fire_at, state)
    ON CONFLICT DO NOTHING
    RETURNING queue, state
)
SELECT count(*) AS inserted,
       count(pg_notify('{channel}', 'q:' || queue)) FILTER (WHERE state = 'queued') AS woken
FROM ins;

-- name: advance_schedule
-- Records what one firing of schedule $1 handled: the latest fire time, the next one expected,
-- and the counters.
UPDATE {t}schedules
SET last_fire_at = to_timestamp($2), next_fire_at = to_timestamp($3),
    fired = fired + $4, missed = missed + $5, skipped = skipped + $6, updated_at = now()
WHERE name = $1;

-- name: release_waiting
-- Lets the waiting run of each schedule in $1 go (queued) once no other run of it is
-- unfinished: the overlap policy "queue". Returns how many were released.
WITH released AS (
    UPDATE {t}jobs AS j SET state = 'queued'
    WHERE j.schedule = ANY($1::text[]) AND j.state = 'waiting'
      AND j.wake_on IS NULL  -- a durable run parked in ctx.wait_for is not held back, but parked
      AND NOT EXISTS (
          SELECT 1 FROM {t}jobs AS o
          WHERE o.schedule = j.schedule AND o.id <> j.id
            AND (o.state IN ('scheduled', 'queued', 'running') OR o.wake_on IS NOT NULL)
      )
    RETURNING j.queue
), wake AS (
    SELECT pg_notify('{channel}', 'q:' || queue) FROM (SELECT DISTINCT queue FROM released) AS q
)
SELECT (SELECT count(*) FROM released) AS released, (SELECT count(*) FROM wake) AS woken;

-- name: list_schedules
-- Every schedule with its state, for `asyncjobs schedules list`.
SELECT name, job, spec, definition, paused, fired, missed, skipped,
       extract(epoch FROM last_fire_at)::float8 AS last_fire_at,
       extract(epoch FROM next_fire_at)::float8 AS next_fire_at,
       extract(epoch FROM created_at)::float8 AS created_at,
       extract(epoch FROM updated_at)::float8 AS updated_at
FROM {t}schedules ORDER BY name;

-- name: pause_schedule
-- Pauses ($2 true) or resumes ($2 false) schedule $1. Resuming moves the last fire time to $3
-- (now), so that the fire times of the pause are not caught up as missed. Returns the name.
UPDATE {t}schedules
SET paused = $2,
    last_fire_at = CASE WHEN $2 THEN last_fire_at
                        ELSE greatest(last_fire_at, to_timestamp($3)) END,
    updated_at = now()
WHERE name = $1
RETURNING name;

-- name: unpark
-- Slots of keys $1 were freed: unpark their waiting jobs (see migrations/0005_limits.sql).
SELECT {t}unpark($1::text[]);

-- name: settle_jobs
-- After jobs $1 ended in states $2: release the dependents of the succeeded ones, cancel the
-- transitive dependents of the others (see migrations/0004_workflows.sql).
SELECT {t}settle_jobs($1::uuid[], $2::{t}job_state[]);

-- name: insert_workflow
-- Records workflow $1 (named $2, results in steps $3), unless a retried submission already
-- did. Returns its id if this call inserted it.
INSERT INTO {t}workflows (id, name, sinks) VALUES ($1, $2, $3)
ON CONFLICT (id) DO NOTHING
RETURNING id;

-- name: lock_dependencies
-- Locks the existing jobs among $1 (a new job will depend on them) in id order, and returns
-- their states: under the lock, none can end until the new job and its edges are written.
SELECT id, state FROM {t}jobs WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE;

-- name: mark_dependents
-- Jobs $1 now have a dependent: their end will be settled.
UPDATE {t}jobs SET has_dependents = true WHERE id = ANY($1::uuid[]) AND NOT has_dependents;

-- name: insert_dependent
-- Inserts one job that depends on others: waiting (with $10 unfinished dependencies), or
-- queued, scheduled, or cancelled at once (reason $13) when a dependency already failed.
-- $14..$18: its concurrency key and rate limit; $19: its trace context.
-- Wakes the nodes if it is ready. Returns nothing if the id exists (a retried insert).
WITH ins AS (
    INSERT INTO {t}jobs (id, name, queue, priority, state, args, run_at, max_attempts,
                         workflow_id, pending_deps, step, pass_results, reason, finished_at,
                         concurrency_key, concurrency_limit, rate_key, rate_count, rate_period,
                         trace)
    VALUES ($1, $2, $3, $4, $5::{t}job_state, $6, to_timestamp($7), $8, $9, $10, $11, $12, $13,
            CASE WHEN $5::{t}job_state = 'cancelled' THEN now() END, $14, $15, $16, $17, $18,
            $19)
    ON CONFLICT (id) DO NOTHING
    RETURNING id, queue, state, run_at
)
SELECT id, (SELECT count(pg_notify('{channel}', CASE WHEN state = 'queued' THEN 'q:' || queue
                                                     ELSE 's:' || extract(epoch FROM run_at) END))
            FROM ins WHERE state IN ('queued', 'scheduled')) AS woken
FROM ins;

-- name: insert_edges
-- Edges: job $1[i] runs after job $3[i] succeeds; $2[i] is that parent's position.
INSERT INTO {t}job_deps (job_id, ord, depends_on)
SELECT * FROM unnest($1::uuid[], $2::integer[], $3::uuid[]);

-- name: queue_counts
-- Each queue's unfinished jobs by state, through the partial indexes (ready, parked, running,
-- scheduled; finished jobs are never read), and when its longest-waiting job became due.
WITH ready AS (
    SELECT queue, count(*) AS n, min(run_at) AS oldest FROM {t}jobs
    WHERE state = 'queued' AND NOT parked GROUP BY queue
), parked AS (
    SELECT queue, count(*) AS n, min(run_at) AS oldest FROM {t}jobs
    WHERE state = 'queued' AND parked GROUP BY queue
), running AS (
    SELECT queue, count(*) AS n FROM {t}jobs WHERE state = 'running' GROUP BY queue
), scheduled AS (
    SELECT queue, count(*) AS n FROM {t}jobs WHERE state = 'scheduled' GROUP BY queue
), queues AS (
    SELECT queue FROM ready UNION SELECT queue FROM parked
    UNION SELECT queue FROM running UNION SELECT queue FROM scheduled
)
SELECT q.queue, coalesce(r.n, 0) + coalesce(p.n, 0) AS queued, coalesce(p.n, 0) AS parked,
       coalesce(x.n, 0) AS running, coalesce(s.n, 0) AS scheduled,
       extract(epoch FROM least(r.oldest, p.oldest))::float8 AS oldest_queued_at
FROM queues AS q
LEFT JOIN ready AS r USING (queue) LEFT JOIN parked AS p USING (queue)
LEFT JOIN running AS x USING (queue) LEFT JOIN scheduled AS s USING (queue)
ORDER BY q.queue;

-- name: recent_failures
-- The $1 jobs that failed or were lost most recently, through the failures index.
SELECT * FROM {t}jobs
WHERE state IN ('failed', 'lost') AND finished_at IS NOT NULL
ORDER BY finished_at DESC
LIMIT $1;

-- name: live_nodes
-- The nodes that are up (neither stopped nor reaped), with their heartbeat's age by the
-- database's clock.
SELECT id, host, pid, queues, concurrency, running, workers,
       extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age_s,
       extract(epoch FROM started_at)::float8 AS started_at
FROM {t}nodes
WHERE reaped_at IS NULL AND stopped_at IS NULL
ORDER BY started_at;

-- name: busy_keys
-- The concurrency keys with running jobs (at most $1, busiest first), with their holders:
-- read through the partial index of running keyed jobs.
SELECT concurrency_key AS key, count(*) AS running, max(concurrency_limit) AS lim,
       array_agg(id ORDER BY id) AS ids, array_agg(name ORDER BY id) AS names,
       array_agg(node_id ORDER BY id) AS nodes
FROM {t}jobs
WHERE state = 'running' AND concurrency_key IS NOT NULL
GROUP BY concurrency_key
ORDER BY count(*) DESC, concurrency_key
LIMIT $1;

-- name: rate_buckets
-- The rate buckets (at most $1, the most booked ahead first): their rate, and how far ahead
-- of now (seconds, negative when a start is free now) their next free start is.
SELECT key, starts, period, extract(epoch FROM tat - clock_timestamp())::float8 AS ahead
FROM {t}rate_buckets
ORDER BY tat DESC
LIMIT $1;

-- name: parent_results
-- The parents of job $1, in edge order, with their results (what JobContext.parent_results
-- returns). A parent already pruned shows as a missing row (null id).
SELECT p.id, p.name, p.step, p.state, p.result
FROM {t}job_deps AS d LEFT JOIN {t}jobs AS p ON p.id = d.depends_on
WHERE d.job_id = $1
ORDER BY d.ord;

-- name: workflow_info
-- Workflow $1, with its jobs counted by state through the workflow index (null if unknown).
SELECT w.id, w.name, extract(epoch FROM w.created_at)::float8 AS created_at, w.sinks,
       (SELECT coalesce(jsonb_object_agg(state, n), '{}'::jsonb)
        FROM (SELECT state, count(*) AS n FROM {t}jobs WHERE workflow_id = $1
              GROUP BY state) AS c) AS counts
FROM {t}workflows AS w WHERE w.id = $1;

-- name: workflow_failures
-- The jobs of workflow $1 that failed or were lost, or were cancelled other than by an
-- upstream failure: the causes a status report shows (at most $2, oldest first).
SELECT id, name, step, state, error, reason
FROM {t}jobs
WHERE workflow_id = $1
  AND (state IN ('failed', 'lost')
       OR (state = 'cancelled' AND reason IS DISTINCT FROM 'upstream_failed'
           AND reason IS DISTINCT FROM 'upstream_cancelled'))
ORDER BY finished_at NULLS LAST, id
LIMIT $2;

-- name: lock_workflow
-- Locks the unfinished jobs of workflow $1 in id order (for cancelling it), with their state.
SELECT id, state FROM {t}jobs
WHERE workflow_id = $1 AND state IN ('scheduled', 'waiting', 'queued', 'running')
ORDER BY id
FOR UPDATE;

-- name: cancel_locked
-- Cancels jobs $1 (locked by the caller) with reason $2 at time $3: those not started end
-- cancelled at once; running ones are flagged and their nodes told. Returns how many ended
-- and how many are being stopped.
WITH upd AS (
    UPDATE {t}jobs AS j
    SET state = CASE WHEN j.state = 'running' THEN j.state ELSE 'cancelled' END,
        cancel_requested = (j.state = 'running'),
        finished_at = CASE WHEN j.state = 'running' THEN NULL ELSE to_timestamp($3) END,
        reason = $2
    WHERE j.id = ANY($1::uuid[]) AND j.state IN ('scheduled', 'waiting', 'queued', 'running')
    RETURNING j.id, j.state
), waited AS (
    DELETE FROM {t}waiters AS w USING upd
    WHERE w.job_id = upd.id AND upd.state = 'cancelled'
    RETURNING w.job_id
), wake AS (
    SELECT pg_notify('{channel}', 'c:' || id) FROM upd WHERE state = 'running'
    UNION ALL
    SELECT pg_notify('{channel}', 'f:' || job_id) FROM waited
)
SELECT count(*) FILTER (WHERE state = 'cancelled') AS cancelled,
       count(*) FILTER (WHERE state = 'running') AS stopping,
       array_agg(id) FILTER (WHERE state = 'cancelled') AS ended
FROM upd WHERE (SELECT count(*) FROM wake) >= 0;

-- name: throughput
-- Attempts finished by every node since bucket $1 (epoch seconds), by outcome, with the
-- oldest bucket counted: a range scan of the statistics' primary key.
SELECT outcome, sum(attempts)::bigint AS attempts,
       extract(epoch FROM min(bucket))::float8 AS since
FROM {t}job_stats
WHERE bucket >= to_timestamp($1)
GROUP BY outcome;

-- name: job_stats
-- Per job name, the attempts finished since bucket $1 (epoch seconds), busiest first.
SELECT name, sum(attempts)::bigint AS attempts,
       coalesce(sum(attempts) FILTER (WHERE outcome IN ('failed', 'retried')), 0)::bigint
           AS failed,
       sum(wait_s) AS wait_s, sum(wall_s) AS wall_s, sum(cpu_s) AS cpu_s,
       sum(timed)::bigint AS timed, sum(timed_wall_s) AS timed_wall_s,
       max(max_wall_s) AS max_wall_s
FROM {t}job_stats
WHERE bucket >= to_timestamp($1)
GROUP BY name
ORDER BY sum(attempts) DESC, name;

-- name: list_workflows
-- Workflows, newest first, with ids below $1 (a keyset page; null: the first), at most $2,
-- each with its jobs counted by state through the workflow index.
SELECT w.id, w.name, extract(epoch FROM w.created_at)::float8 AS created_at, w.sinks,
       (SELECT coalesce(jsonb_object_agg(state, n), '{}'::jsonb)
        FROM (SELECT state, count(*) AS n FROM {t}jobs WHERE workflow_id = w.id
              GROUP BY state) AS c) AS counts
FROM {t}workflows AS w
WHERE ($1::uuid IS NULL OR w.id < $1)
ORDER BY w.id DESC
LIMIT $2;

-- name: count_unfinished
-- Queue $1's jobs (every queue's if null) in each unfinished state, each through its partial
-- index (ready and parked, scheduled, waiting, running); finished jobs are never read.
SELECT 'scheduled' AS state, count(*) AS n FROM {t}jobs
WHERE state = 'scheduled' AND ($1::text IS NULL OR queue = $1)
UNION ALL
SELECT 'waiting', count(*) FROM {t}jobs WHERE state = 'waiting' AND ($1::text IS NULL OR queue = $1)
UNION ALL
SELECT 'queued', count(*) FROM {t}jobs
WHERE state = 'queued' AND NOT parked AND ($1::text IS NULL OR queue = $1)
UNION ALL
SELECT 'queued', count(*) FROM {t}jobs
WHERE state = 'queued' AND parked AND ($1::text IS NULL OR queue = $1)
UNION ALL
SELECT 'running', count(*) FROM {t}jobs WHERE state = 'running' AND ($1::text IS NULL OR queue = $1);

-- name: count_finished
-- Queue $1's finished jobs (every queue's if null) by state: a scan of the history, which
-- the retention period bounds; only asked for explicitly (app.counts(finished=True)).
SELECT state::text, count(*) AS n FROM {t}jobs
WHERE state IN ('succeeded', 'failed', 'cancelled', 'lost') AND ($1::text IS NULL OR queue = $1)
GROUP BY state;

-- name: purge_jobs
-- Deletes at most $2 jobs of queue $1 in the state the store puts in place of the marker
-- below (constants, never user input; never 'running'; queued jobs in two parts, ready and
-- parked, as their partial indexes are), never one another transaction holds
-- (a claim in flight skips it, and so does this), with their edges to their parents and their
-- waiters, whom it wakes. Returns each deleted job's id and whether it had dependents (the
-- caller cancels those in the same transaction). An unfinished state is found through its
-- partial index, in any order; a finished one (no index of its own) by a pass over the
-- primary key from id $3 on, in order, so that successive batches never read a row twice.
WITH gone AS (
    DELETE FROM {t}jobs
    WHERE id = ANY(ARRAY(
        SELECT id FROM {t}jobs
        WHERE /* state */ AND queue = $1
        /* order */
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ))
    RETURNING id, has_dependents
), edges AS (
    DELETE FROM {t}job_deps WHERE job_id = ANY(ARRAY(SELECT id FROM gone)) RETURNING job_id
), steps AS (
    DELETE FROM {t}job_steps WHERE job_id = ANY(ARRAY(SELECT id FROM gone)) RETURNING job_id
), waited AS (
    DELETE FROM {t}waiters WHERE job_id = ANY(ARRAY(SELECT id FROM gone)) RETURNING job_id
), woken AS (
    SELECT pg_notify('{channel}', 'f:' || job_id) FROM waited
)
SELECT id, has_dependents FROM gone
WHERE (SELECT count(*) FROM edges) >= 0 AND (SELECT count(*) FROM woken) >= 0
  AND (SELECT count(*) FROM steps) >= 0;

-- name: record_step
-- Records step $4 of job $1 (its state $8: running, before a step that is not idempotent
-- runs; succeeded or failed once any step ends), if attempt $2 of the job still runs on node
-- $3; nothing otherwise, and then it returns no row (a stale attempt: fenced). The job's row
-- is held (FOR SHARE) until the commit, which is what reap_lock waits for: a step recorded
-- as running is seen by the reaper of its node. Written again, a step's record is replaced.
-- The row is found by its primary key alone and the fence tested on it (ADR 0002: any other
-- condition here could make stale statistics pick the index of the node's running jobs).
WITH job AS (
    SELECT id, state, attempt, node_id FROM {t}jobs WHERE id = $1 FOR SHARE
)
INSERT INTO {t}job_steps AS s (job_id, seq, attempt, idempotent, started_at, finished_at,
                               node_id, kind, state, name, digest, call, result, error)
SELECT job.id, $4, $2, $5, to_timestamp($10), to_timestamp($11), $3, $6, $8, $7, $9, $12, $13,
       $14
FROM job
WHERE job.state = 'running' AND job.attempt = $2 AND job.node_id = $3
ON CONFLICT (job_id, seq) DO UPDATE
SET attempt = EXCLUDED.attempt, idempotent = EXCLUDED.idempotent,
    started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
    node_id = EXCLUDED.node_id, kind = EXCLUDED.kind, state = EXCLUDED.state,
    name = EXCLUDED.name, digest = EXCLUDED.digest, call = EXCLUDED.call,
    result = EXCLUDED.result, error = EXCLUDED.error
RETURNING s.seq;

-- name: job_steps
-- The recorded steps of job $1, in call order (by primary key).
SELECT seq, kind, state, name, attempt, idempotent, digest, call, result, error,
       extract(epoch FROM started_at)::float8 AS started_at,
       extract(epoch FROM finished_at)::float8 AS finished_at, node_id
FROM {t}job_steps WHERE job_id = $1 ORDER BY seq;

-- name: park_lock
-- Locks, by primary key, the job $2 a park waits for (if any), then the parking job $1, in
-- that order; park_job then decides under a snapshot taken after these locks.
SELECT (SELECT id FROM {t}jobs WHERE $2::uuid IS NOT NULL AND id = $2 FOR UPDATE) AS other,
       (SELECT id FROM {t}jobs WHERE id = $1 FOR UPDATE) AS job;

-- name: park_job
-- Parks attempt $2 of job $1, if it still runs on node $3 (else returns no row: fenced):
-- until epoch $5 (state scheduled, woken by the promoter), or, with $6, until job $6 ends
-- (state waiting; $6's row is flagged awaited, and its end queues this one again). A job
-- $6 that has ended already, or does not exist, parks nothing: the caller goes on
-- (parked false, owned true; owned is false for a stale attempt). The parked job gives back its slot; its next run is not a
-- retry (one more attempt is allowed). $4 is the reason shown meanwhile. Returns the
-- job's concurrency key (the caller unparks the jobs waiting for its slot) and parked.
-- Both rows are found by primary key alone and tested (ADR 0002), then updated by tid,
-- under the locks park_lock took in the same transaction, the awaited job's first: its end,
-- which takes the same lock, is either seen here (nothing parks) or comes after (and then
-- sees this job parked).
WITH other AS (
    SELECT ctid, state FROM {t}jobs WHERE $6::uuid IS NOT NULL AND id = $6 FOR UPDATE
), target AS (
    UPDATE {t}jobs AS j SET awaited = true
    FROM other AS o
    WHERE j.ctid = o.ctid AND o.state IN ('scheduled', 'waiting', 'queued', 'running')
    RETURNING j.id
), me AS (
    SELECT ctid, state, attempt, node_id FROM {t}jobs WHERE id = $1 FOR UPDATE
), owned AS (
    SELECT ctid FROM me WHERE state = 'running' AND attempt = $2 AND node_id = $3
), parked AS (
    UPDATE {t}jobs AS j
    SET state = CASE WHEN $6::uuid IS NULL THEN 'scheduled' ELSE 'waiting' END::{t}job_state,
        run_at = CASE WHEN $6::uuid IS NULL THEN to_timestamp($5) ELSE j.run_at END,
        wake_on = $6, reason = $4, max_attempts = greatest(j.max_attempts, j.attempt + 1)
    FROM owned AS o
    WHERE j.ctid = o.ctid AND ($6::uuid IS NULL OR EXISTS (SELECT 1 FROM target))
    RETURNING j.id, j.concurrency_key
), wake AS (
    SELECT pg_notify('{channel}', 's:' || $5::float8) FROM parked WHERE $6::uuid IS NULL
)
SELECT (SELECT count(*) FROM parked) > 0 AS parked,
       EXISTS (SELECT 1 FROM owned) AS owned,
       (SELECT concurrency_key FROM parked) AS concurrency_key,
       (SELECT count(*) FROM wake) >= 0 AS notified;
