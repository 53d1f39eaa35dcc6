-- 0012: the completion goes back to the default plan_cache_mode (0011 set it with the claim's).
--
-- Under a generic plan, complete_jobs probes the waiters' index once per job where its
-- custom plans read the (mostly empty) waiters table once per batch: 21 buffers per completed
-- job instead of 17.5, past the bound test_postgres_hot_path keeps for a healthy plan. The
-- claim keeps 0011's settings: its re-planning was most of the latency 0011 removed.
ALTER FUNCTION {t}complete_jobs(
    uuid, uuid[], integer[], {t}job_state[], jsonb[], jsonb[], float8[], float8[], text[],
    float8[], float8[]
) RESET plan_cache_mode RESET enable_seqscan;
