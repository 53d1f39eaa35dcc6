"""The public surface: ``__all__``, docstrings, and the error hierarchy and its messages."""

from __future__ import annotations

import inspect
import uuid
from typing import Any

import pytest

import asyncjobs
from asyncjobs import errors

JOB_ID = uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8057")
PUBLIC = [name for name in asyncjobs.__all__ if name != "__version__"]
ERROR_CLASSES = sorted(
    {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseException)
        and obj.__module__ == errors.__name__
    },
    key=lambda cls: cls.__name__,
)


def test_every_name_in_all_exists() -> None:
    missing = [name for name in asyncjobs.__all__ if not hasattr(asyncjobs, name)]
    assert missing == []


def test_all_is_sorted_and_unique() -> None:
    assert asyncjobs.__all__ == sorted(set(asyncjobs.__all__))


def test_the_version_is_a_string() -> None:
    assert isinstance(asyncjobs.__version__, str)
    assert asyncjobs.__version__


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_has_its_own_docstring(name: str) -> None:
    obj = getattr(asyncjobs, name)
    # A class's own __doc__, not one inherited through inspect.getdoc().
    doc = vars(obj).get("__doc__") if isinstance(obj, type) else obj.__doc__
    assert doc, f"asyncjobs.{name} has no docstring"
    assert doc.strip()


def test_every_exported_error_is_an_asyncjobs_error() -> None:
    exported = [getattr(asyncjobs, n) for n in PUBLIC]
    exported_errors = [o for o in exported if isinstance(o, type) and issubclass(o, Exception)]
    assert asyncjobs.AsyncJobsError in exported_errors
    strays = [
        cls.__name__ for cls in exported_errors if not issubclass(cls, asyncjobs.AsyncJobsError)
    ]
    assert strays == []


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_class_derives_from_the_root(cls: type[BaseException]) -> None:
    assert issubclass(cls, asyncjobs.AsyncJobsError)


def test_every_error_in_the_errors_module_is_exported() -> None:
    unexported = [cls.__name__ for cls in ERROR_CLASSES if cls.__name__ not in asyncjobs.__all__]
    assert unexported == []


# -- messages ------------------------------------------------------------------------------------

# (an instance, the data its message must show, the attributes it must carry)
SAMPLES: list[tuple[BaseException, list[str], dict[str, Any]]] = [
    (errors.AsyncJobsError(), ["asyncjobs"], {}),
    (
        errors.ConfigurationError("concurrency", 0, "must be between 1 and 9"),
        ["concurrency", "0", "between 1 and 9"],
        {"field": "concurrency", "value": 0},
    ),
    (
        errors.JobDefinitionError("resize", "it is a plain function"),
        ["'resize'", "plain function"],
        {"name": "resize"},
    ),
    (errors.UnknownJobError("x", ["a", "b"]), ["'x'", "a, b"], {"name": "x"}),
    (errors.JobInterrupted("the node asked the job to stop"), ["stop"], {}),
    (errors.SoftTimeLimitExceeded(), ["soft time limit"], {}),
    (errors.CancelRequested(), ["cancel"], {}),
    (
        errors.WorkerCrashedError("resize", "was killed by SIGSEGV"),
        ["'resize'", "SIGSEGV", "replaced"],
        {"job_name": "resize", "how": "was killed by SIGSEGV"},
    ),
    (errors.IsolationError("an isolated job has no database access"), ["database"], {}),
    (errors.PoolError(), ["process pool"], {}),
    (errors.PayloadError(), ["payload"], {}),
    (
        errors.PayloadEncodeError("send", "argument", "kwargs['to']", "set", " (send a list)"),
        ["'send'", "kwargs['to']", "set", "send a list"],
        {"job": "send", "path": "kwargs['to']"},
    ),
    (
        errors.PayloadTooLargeError("send", "arguments", 2_000_000, 1_048_576),
        ["'send'", "2,000,000", "1,048,576"],
        {"size": 2_000_000, "limit": 1_048_576},
    ),
    (
        errors.InvalidJobOptionError("send", "priority", 99999, "out of range"),
        ["'send'", "priority=99999", "out of range"],
        {"option": "priority", "value": 99999},
    ),
    (
        errors.InvalidArgumentError("cancel", "reason", "a\x00", "it holds a NUL character"),
        ["cancel()", "reason='a\\x00'", "NUL character"],
        {"call": "cancel", "argument": "reason"},
    ),
    (
        errors.StepMismatchError("provision", 3, "step 'create_disk'", "step 'create_dns'"),
        ["'provision'", "#3", "step 'create_disk'", "step 'create_dns'", "same order"],
        {"seq": 3, "job_name": "provision"},
    ),
    (
        errors.StepInDoubtError("provision", "create_disk", 3),
        ["'create_disk'", "(#3)", "idempotent=True"],
        {"step": "create_disk", "seq": 3},
    ),
    (
        errors.StepError("render", "ValueError", "bad frame"),
        ["'render'", "ValueError", "bad frame"],
        {"error_type": "ValueError", "error_message": "bad frame"},
    ),
    (
        errors.StaleAttemptError("provision", JOB_ID, 2, "step 'create_disk'"),
        ["attempt 2", "'provision'", str(JOB_ID), "step 'create_disk' was not recorded"],
        {"attempt": 2},
    ),
    (
        errors.RetryRequested(30, ConnectionError("the API is busy")),
        ["in 30 s", "ConnectionError: the API is busy"],
        {"delay": 30.0},
    ),
    (errors.StoreError(), ["store"], {}),
    (
        errors.ValueRejectedError("UntranslatableCharacterError: \\u0000", "22P05"),
        ["refused a value", "\\u0000", "nothing of that statement was written"],
        {"sqlstate": "22P05"},
    ),
    (
        errors.StoreUnavailableError("db.example:5432", "connection refused"),
        ["db.example:5432", "connection refused"],
        {"target": "db.example:5432"},
    ),
    (
        errors.SchemaNotReadyError("schema 'jobs'", "no tables"),
        ["schema 'jobs'", "no tables", "asyncjobs migrate"],
        {"where": "schema 'jobs'"},
    ),
    (errors.NotStartedError(), ["start"], {}),
    (errors.ClosedError(), ["stopped"], {}),
    (errors.JobNotFoundError(JOB_ID), [str(JOB_ID)], {"job_id": JOB_ID}),
    (
        errors.JobOutcomeError(JOB_ID, "send", "job 'send' ended without a result"),
        ["'send'"],
        {"job_id": JOB_ID, "job_name": "send"},
    ),
    (
        errors.JobFailedError(JOB_ID, "send", {"type": "ValueError", "message": "bad address"}),
        ["'send'", str(JOB_ID), "ValueError", "bad address"],
        {"error_type": "ValueError"},
    ),
    (
        errors.JobCancelledError(JOB_ID, "send", "by request"),
        ["'send'", str(JOB_ID), "by request"],
        {"reason": "by request"},
    ),
    (
        errors.JobLostError(JOB_ID, "send", "node died"),
        ["'send'", str(JOB_ID), "node died"],
        {"reason": "node died"},
    ),
    (errors.ResultTimeoutError(JOB_ID, 2.5), [str(JOB_ID), "2.5 s"], {"timeout": 2.5}),
    (
        errors.JobTimeoutError("send", 30.0, "soft"),
        ["'send'", "soft", "30 s"],
        {"limit": 30.0, "kind": "soft"},
    ),
    (
        errors.MigrationError("schema 'jobs'", "migration 3 is unknown"),
        ["schema 'jobs'", "migration 3 is unknown"],
        {"where": "schema 'jobs'"},
    ),
    (
        errors.ScheduleDefinitionError("nightly", "time zone 'Mars/Olympus' is unknown"),
        ["'nightly'", "Mars/Olympus"],
        {"name": "nightly"},
    ),
    (
        errors.ScheduleNotFoundError("nightly"),
        ["'nightly'", "schedules list"],
        {"name": "nightly"},
    ),
    (
        errors.WorkflowError("verify", "the dependencies form a cycle: 'verify' -> 'verify'"),
        ["'verify'", "cycle"],
        {"step": "verify"},
    ),
    (
        errors.InputsTooLargeError("verify", 64 * 1024 * 1024),
        ["'verify'", "67,108,864 bytes", "references"],
        {"job": "verify", "limit": 64 * 1024 * 1024},
    ),
    (errors.WorkflowNotFoundError(JOB_ID), [str(JOB_ID), "app.submit"], {"workflow_id": JOB_ID}),
    (
        errors.DependencyNotFoundError("send", [JOB_ID]),
        ["'send'", str(JOB_ID), "no job with this id"],
        {"job": "send", "missing": [JOB_ID]},
    ),
]


def test_every_error_class_has_a_message_sample() -> None:
    sampled = {type(error) for error, _, _ in SAMPLES}
    assert [cls.__name__ for cls in ERROR_CLASSES if cls not in sampled] == []


@pytest.mark.parametrize(
    ("error", "shown", "fields"),
    SAMPLES,
    ids=[type(error).__name__ for error, _, _ in SAMPLES],
)
def test_error_messages_are_sentences_that_include_their_data(
    error: BaseException, shown: list[str], fields: dict[str, Any]
) -> None:
    message = str(error)
    assert len(message.split()) >= 4, f"not a sentence: {message!r}"
    assert message[0].isalpha()
    assert "{" not in message, f"an unformatted placeholder: {message!r}"
    for text in shown:
        assert text.lower() in message.lower(), f"{text!r} is missing from {message!r}"
    for attribute, value in fields.items():
        assert getattr(error, attribute) == value


def test_an_error_without_arguments_uses_its_docstring() -> None:
    doc = inspect.cleandoc(asyncjobs.NotStartedError.__doc__ or "")
    assert str(asyncjobs.NotStartedError()) == doc
    assert str(asyncjobs.ClosedError("custom words here")) == "custom words here"


def test_unknown_job_error_mentions_the_name() -> None:
    assert "'x'" in str(asyncjobs.UnknownJobError("x"))


def test_errors_that_are_also_builtin_kinds_can_be_caught_as_them() -> None:
    assert issubclass(asyncjobs.PayloadEncodeError, TypeError)
    assert issubclass(asyncjobs.PayloadTooLargeError, ValueError)
    assert issubclass(asyncjobs.InvalidJobOptionError, ValueError)
    assert issubclass(asyncjobs.JobNotFoundError, LookupError)
    assert issubclass(asyncjobs.ResultTimeoutError, TimeoutError)
    assert issubclass(asyncjobs.StoreUnavailableError, ConnectionError)
