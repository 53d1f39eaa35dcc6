"""``asyncjobs loadtest``: drive a cluster with a job mix and report throughput, latency, memory.

- ``mix``: the job mix, from flags or a TOML file, with errors that name the bad value;
- ``jobs``: the load-test jobs, on their own App (``asyncjobs.loadtest.jobs:app``);
- ``nodes``: the local ``asyncjobs node`` processes it starts, stops and samples (RSS);
- ``db``: the harness's own SQL: its jobs' timings, the schema it creates and drops;
- ``tracker``: which jobs of the run have finished, read in batches from their rows;
- ``driver``: the open loop (a fixed rate) and the closed loop (a fixed number in flight);
- ``report``: the maths (percentiles, rates, buckets over time), pure functions;
- ``progress``: the live line on stderr; ``output``: the table, the JSON, the plot;
- ``run``: one run from start to clean-up; ``cli``: the command's flags; ``errors``: its
  errors, each with an exit status.
"""
