"""Prometheus metrics of one node, served at ``/metrics`` (``Settings.metrics_port``).

Counters and histograms are updated in memory as jobs start and end (a dictionary lookup and
a few additions per job; the label children are cached per job name); gauges are read when
Prometheus scrapes. prometheus-client serves the page from its own thread, so a scrape never
waits for the event loop, and a busy loop never delays a scrape. Everything here is about
this node; the cluster's view (queues, other nodes) is ``asyncjobs status``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..settings import Settings
    from ..store.base import ClaimedJob, Outcome
    from .running import RunningJob

log = logging.getLogger("asyncjobs.node")

WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 3600)
RUN_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1, 5, 10, 60, 300, 1800, 3600, 4 * 3600)
LAG_INTERVAL_S = 0.5


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigurationError(
            "metrics_port",
            "set",
            "serving metrics needs prometheus-client: pip install 'asyncjobs[metrics]', or "
            "leave metrics_port at 0",
        ) from None
    return prometheus_client


class NodeMetrics:
    def __init__(
        self,
        settings: Settings,
        *,
        running: Callable[[], int],
        workers: Callable[[], int],
        buffered: Callable[[], int],
        hook_events_dropped: Callable[[], int],
    ) -> None:
        """``running``, ``workers``, ``buffered`` and ``hook_events_dropped`` read the node's
        gauges when Prometheus scrapes them."""
        prom = _prometheus()
        self.settings = settings
        self.registry = registry = prom.CollectorRegistry()
        self._started = prom.Counter(
            "asyncjobs_jobs_started", "Attempts this node started", ["name"], registry=registry
        )
        self._finished = prom.Counter(
            "asyncjobs_jobs_finished",
            "Attempts this node finished, by outcome (succeeded, failed, cancelled, retried)",
            ["name", "outcome"],
            registry=registry,
        )
        self._wait = prom.Histogram(
            "asyncjobs_job_queue_wait_seconds",
            "How long jobs waited, once due, before this node claimed them",
            ["name"], buckets=WAIT_BUCKETS, registry=registry,
        )  # fmt: skip
        self._run = prom.Histogram(
            "asyncjobs_job_run_seconds",
            "How long attempts ran on this node",
            ["name"], buckets=RUN_BUCKETS, registry=registry,
        )  # fmt: skip
        self._cpu = prom.Counter(
            "asyncjobs_job_cpu_seconds",
            "CPU time of the attempts that measured it",
            ["name"], registry=registry,
        )  # fmt: skip
        gauges = (
            ("asyncjobs_running_jobs", "Jobs running on this node", running),
            ("asyncjobs_pool_workers", "Live process pool workers", workers),
            ("asyncjobs_buffered_completions", "Job outcomes waiting to be written", buffered),
            ("asyncjobs_hook_events_dropped", "Events dropped because a hook fell behind",
             hook_events_dropped),
        )  # fmt: skip
        for name, doc, read in gauges:
            prom.Gauge(name, doc, registry=registry).set_function(read)
        self._lag = prom.Gauge(
            "asyncjobs_event_loop_lag_seconds",
            f"How late a {LAG_INTERVAL_S:g} s timer fired on the node's event loop, lately",
            registry=registry,
        )
        self._steps = prom.Counter(
            "asyncjobs_steps",
            "Steps of durable jobs this node ran, by outcome (succeeded, failed, or replayed: "
            "a recorded result returned without running the step again)",
            ["name", "outcome"],
            registry=registry,
        )
        self._by_name: dict[str, tuple[Any, Any, Any, Any]] = {}
        self._by_outcome: dict[tuple[str, str], Any] = {}
        self._server: Any = None
        self._thread: Any = None

    def _children(self, name: str) -> tuple[Any, Any, Any, Any]:
        found = self._by_name.get(name)
        if found is None:
            found = self._by_name[name] = (
                self._started.labels(name), self._wait.labels(name), self._run.labels(name),
                self._cpu.labels(name),
            )  # fmt: skip
        return found

    def job_started(self, claimed: ClaimedJob) -> None:
        started, wait, _, _ = self._children(claimed.name)
        started.inc()
        wait.observe(claimed.wait)

    def job_finished(self, job: RunningJob, outcome: Outcome) -> None:
        state = outcome.state
        key = (job.name, "retried" if state in ("queued", "scheduled") else state)
        counter = self._by_outcome.get(key)
        if counter is None:
            counter = self._by_outcome[key] = self._finished.labels(*key)
        counter.inc()
        _, _, run, cpu = self._children(job.name)
        if outcome.wall_s is not None:
            run.observe(outcome.wall_s)
        if outcome.cpu_s is not None:
            cpu.inc(outcome.cpu_s)

    def step_ended(self, name: str, outcome: str) -> None:
        self._steps.labels(name, outcome).inc()

    def start(self) -> None:
        """Listen now (``App.start`` calls this, so a port in use fails the start)."""
        prom = _prometheus()
        settings = self.settings
        try:
            self._server, self._thread = prom.start_http_server(
                settings.metrics_port, settings.metrics_host, registry=self.registry
            )
        except OSError as exc:
            raise ConfigurationError(
                "metrics_port",
                settings.metrics_port,
                f"cannot listen on {settings.metrics_host}:{settings.metrics_port} ({exc}); "
                "pick a free port",
            ) from None
        log.info("metrics at http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self._thread.join(timeout=5)

    async def watch_loop(self) -> None:
        """Measure the event loop's lag until cancelled."""
        while True:
            before = time.monotonic()
            await anyio.sleep(LAG_INTERVAL_S)
            self._lag.set(max(0.0, time.monotonic() - before - LAG_INTERVAL_S))
