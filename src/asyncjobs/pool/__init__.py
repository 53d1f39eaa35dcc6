"""The warm process pool for isolated jobs (DESIGN §7).

- ``zygote``: a clean, single-threaded process that imports the plug-ins, runs their preload
  hooks, freezes the heap, and forks workers on request.
- ``worker``: the loop a forked worker runs, after ``sandbox.harden`` locked it down.
- ``frames``: length-prefixed orjson frames, the only thing that crosses a process boundary.
- ``pool``: the node's side: the zygote's lifecycle, idle and busy workers, recycling.
- ``handle``: the node's handle on one worker: send a job, await its reply, signal, kill.
- ``memory``: private and proportional memory of a process, from ``/proc/<pid>/smaps_rollup``.
"""
