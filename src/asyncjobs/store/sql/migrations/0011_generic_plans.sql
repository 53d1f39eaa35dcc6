-- 0011: the claim and the completion plan their statements once per connection, and never
-- as a scan of the whole table (issue 17, ADR 0008).
--
-- A PL/pgSQL function's statements are cached plans. Under the default plan_cache_mode,
-- Postgres plans them again for each call's values until it trusts a generic plan, and for
-- these statements it kept going back to the planner: about 170 µs of a one-job claim and
-- 110 µs of a one-job completion. A generic plan is made once, though, with the table as it
-- was then: made on a new, small table it reads `id = ANY(v_ids)` by a sequential scan, and
-- keeps doing so as the table grows (a workflow of 10,100 jobs on a fresh schema ran at less
-- than half its speed; 0005 kept the claim on custom plans for that reason). With
-- sequential scans priced out, the plan is the one wanted at every
-- size: index scans by primary key and by the ready-jobs index, TID scans, and nested loops
-- over the batch's arrays, with no estimate from the arrays' contents to go wrong (see ADR
-- 0002 for a plan that did). The settings hold for the functions these two call as well
-- (settle_jobs, admit_limited, unpark), whose statements also read by key.
ALTER FUNCTION {t}claim_jobs(uuid, text[], integer[], float8, bigint, text[])
    SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
ALTER FUNCTION {t}complete_jobs(
    uuid, uuid[], integer[], {t}job_state[], jsonb[], jsonb[], float8[], float8[], text[],
    float8[], float8[]
) SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
