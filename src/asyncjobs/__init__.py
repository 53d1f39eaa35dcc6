"""asyncjobs: a Postgres-backed job runner for thousands of IO-bound coroutine jobs per node.

The public API is what this module exports (``__all__``); everything else is internal.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .app import App
from .clock import Clock, SystemClock
from .errors import (
    AsyncJobsError,
    CancelRequested,
    ClosedError,
    ConfigurationError,
    DependencyNotFoundError,
    InputsTooLargeError,
    InvalidArgumentError,
    InvalidJobOptionError,
    IsolationError,
    JobCancelledError,
    JobDefinitionError,
    JobFailedError,
    JobInterrupted,
    JobLostError,
    JobNotFoundError,
    JobOutcomeError,
    JobTimeoutError,
    MigrationError,
    NotStartedError,
    PayloadEncodeError,
    PayloadError,
    PayloadTooLargeError,
    PoolError,
    ResultTimeoutError,
    ScheduleDefinitionError,
    ScheduleNotFoundError,
    SchemaNotReadyError,
    SoftTimeLimitExceeded,
    StoreError,
    StoreUnavailableError,
    UnknownJobError,
    ValueRejectedError,
    WorkerCrashedError,
    WorkflowError,
    WorkflowNotFoundError,
)
from .jobs import JobContext, JobDef, JobId, JobRecord, JobState, Retry, Signature
from .node.hooks import Event
from .schedules import ScheduleDef
from .settings import Settings
from .store.memory import MemoryStore
from .workflows import (
    Chain,
    Chord,
    Group,
    Step,
    Workflow,
    WorkflowId,
    WorkflowStatus,
    chain,
    chord,
    group,
)

try:
    __version__ = version("asyncjobs")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "App",
    "AsyncJobsError",
    "CancelRequested",
    "Chain",
    "Chord",
    "Clock",
    "ClosedError",
    "ConfigurationError",
    "DependencyNotFoundError",
    "Event",
    "Group",
    "InputsTooLargeError",
    "InvalidArgumentError",
    "InvalidJobOptionError",
    "IsolationError",
    "JobCancelledError",
    "JobContext",
    "JobDef",
    "JobDefinitionError",
    "JobFailedError",
    "JobId",
    "JobInterrupted",
    "JobLostError",
    "JobNotFoundError",
    "JobOutcomeError",
    "JobRecord",
    "JobState",
    "JobTimeoutError",
    "MemoryStore",
    "MigrationError",
    "NotStartedError",
    "PayloadEncodeError",
    "PayloadError",
    "PayloadTooLargeError",
    "PoolError",
    "ResultTimeoutError",
    "Retry",
    "ScheduleDef",
    "ScheduleDefinitionError",
    "ScheduleNotFoundError",
    "SchemaNotReadyError",
    "Settings",
    "Signature",
    "SoftTimeLimitExceeded",
    "Step",
    "StoreError",
    "StoreUnavailableError",
    "SystemClock",
    "UnknownJobError",
    "ValueRejectedError",
    "WorkerCrashedError",
    "Workflow",
    "WorkflowError",
    "WorkflowId",
    "WorkflowNotFoundError",
    "WorkflowStatus",
    "__version__",
    "chain",
    "chord",
    "group",
]
