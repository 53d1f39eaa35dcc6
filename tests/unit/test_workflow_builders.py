"""Building and validating workflows, before anything is written (no store involved)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncjobs import App, Workflow, WorkflowError, chain, chord, group
from asyncjobs.store.base import NewWorkflow
from asyncjobs.workflows import build, prepare_workflow

app = App(dsn="memory://")


@app.job()
async def a(*args: Any) -> None: ...


@app.job()
async def b(*args: Any) -> None: ...


@app.job()
async def c(*args: Any) -> None: ...


def prepared(item: Any) -> NewWorkflow:
    return prepare_workflow(build(item), app._definition, 1000.0, 1 << 20)


def shape(item: Any) -> list[tuple[str, list[str], str | None]]:
    """Each step as (key, parent keys, how it receives their results)."""
    new = prepared(item)
    keys = {j.job.id: j.step for j in new.jobs}
    parents: dict[Any, list[tuple[int, str]]] = {}
    for edge in new.edges:
        parents.setdefault(edge.job_id, []).append((edge.ord, keys[edge.depends_on]))
    return [
        (j.step, [k for _, k in sorted(parents.get(j.job.id, []))], j.pass_results)
        for j in new.jobs
    ]


def test_chain_passes_one_result_along() -> None:
    assert shape(chain(a.s(1), b.s(), c.s())) == [
        ("a", [], None),
        ("b", ["a"], "one"),
        ("c", ["b"], "one"),
    ]


def test_pipe_is_chain() -> None:
    assert shape(a.s(1) | b.s() | c.s()) == shape(chain(a.s(1), b.s(), c.s()))
    assert shape(chain(a.s(), b.s()) | chain(c.s(), a.s())) == shape(
        chain(a.s(), b.s(), c.s(), a.s())
    )


def test_chord_callback_takes_the_list_in_group_order() -> None:
    assert shape(chord([a.s(1), a.s(2), b.s()], c.s())) == [
        ("a#1", [], None),
        ("a#2", [], None),
        ("b", [], None),
        ("c", ["a#1", "a#2", "b"], "list"),
    ]


def test_a_group_after_a_step_gives_each_member_its_result() -> None:
    assert shape(a.s() | group(b.s(), c.s()) | a.s()) == [
        ("a#1", [], None),
        ("b", ["a#1"], "one"),
        ("c", ["a#1"], "one"),
        ("a#2", ["b", "c"], "list"),
    ]


def test_nesting_follows_the_exits_of_each_part() -> None:
    assert shape(chain(a.s(), group(b.s(), chain(c.s(), b.s())), a.s())) == [
        ("a#1", [], None),
        ("b#1", ["a#1"], "one"),
        ("c", ["a#1"], "one"),
        ("b#2", ["c"], "one"),
        ("a#2", ["b#1", "b#2"], "list"),
    ]


def test_immutable_signature_takes_no_result() -> None:
    assert shape(a.s() | b.si(7)) == [("a", [], None), ("b", ["a"], None)]


def test_prepared_rows_count_dependencies_and_mark_parents() -> None:
    new = prepared(chord(group(a.s(), b.s()), c.s()))
    by_step = {j.step: j for j in new.jobs}
    assert by_step["c"].pending_deps == 2 and by_step["c"].job.state == "waiting"
    assert by_step["a"].job.state == "queued" and by_step["a"].has_dependents
    assert not by_step["c"].has_dependents
    assert new.sinks == [by_step["c"].job.id]


def test_workflow_steps_know_their_ids_before_submission() -> None:
    wf = Workflow("named")
    first = wf.add(a.s(), key="first")
    second = wf.add(b.s(), after=[first])
    third = wf.add(c.s(), after=["first", second, first])  # repeats count once
    new = prepare_workflow(wf, app._definition, 0.0, 1 << 20)
    assert [j.job.id for j in new.jobs] == [first.id, second.id, third.id]
    assert new.id == wf.id and new.name == "named"
    assert [(e.ord, e.depends_on) for e in new.edges if e.job_id == third.id] == [
        (0, first.id),
        (1, second.id),
    ]


@pytest.mark.parametrize(
    ("build_it", "match"),
    [
        (group, "group\\(\\) is empty"),
        (chain, "at least one step"),
        (lambda: chain(a.s(), b), "write b.s"),
        (lambda: chord([a.s()], "c"), "not str"),
    ],
)
def test_malformed_builders_say_what_to_write(build_it: Any, match: str) -> None:
    with pytest.raises(WorkflowError, match=match):
        build_it()


def test_unknown_job_names_the_step() -> None:
    wf = Workflow()
    wf.add(a.s(), key="fine")
    wf.add(app.signature("a")._replace(name="ghost"), key="spooky")
    with pytest.raises(WorkflowError, match=r"step 'spooky'.*unknown job 'ghost'"):
        prepare_workflow(wf, app._definition, 0.0, 1 << 20)


def test_unencodable_argument_names_the_step_and_the_path() -> None:
    with pytest.raises(WorkflowError, match=r"step 'b'.*kwargs\['when'\]"):
        prepared(a.s() | b.s(when={1, 2}))


def test_oversized_payload_names_the_step() -> None:
    wf = Workflow()
    wf.add(a.s("x" * 100), key="big")
    with pytest.raises(WorkflowError, match=r"step 'big'.*over the limit"):
        prepare_workflow(wf, app._definition, 0.0, 50)


def test_bad_references_are_refused() -> None:
    wf = Workflow()
    wf.add(a.s(), after=["nowhere"], key="lost")
    with pytest.raises(WorkflowError, match=r"step 'lost'.*'nowhere', but no step has that key"):
        prepare_workflow(wf, app._definition, 0.0, 1 << 20)
    other = Workflow().add(a.s())
    with pytest.raises(WorkflowError, match="another workflow"):
        Workflow().add(b.s(), after=[other])
    wf = Workflow()
    wf.add(a.s(), key="k")
    with pytest.raises(WorkflowError, match="already has this key"):
        wf.add(b.s(), key="k")
    with pytest.raises(WorkflowError, match="no steps"):
        prepare_workflow(Workflow(), app._definition, 0.0, 1 << 20)


def test_self_dependency_and_unique_keys_are_refused() -> None:
    wf = Workflow()
    wf.add(a.s(), after=["me"], key="me")
    with pytest.raises(WorkflowError, match="depends on itself"):
        prepare_workflow(wf, app._definition, 0.0, 1 << 20)
    with pytest.raises(WorkflowError, match="unique_key"):
        prepared(a.s().set(unique_key="x") | b.s())


def test_a_cycle_is_named_in_run_order() -> None:
    wf = Workflow()
    wf.add(a.s(), key="start")
    wf.add(a.s(), after=["start", "z"], key="x")
    wf.add(b.s(), after=["x"], key="y")
    wf.add(c.s(), after=["y"], key="z")
    with pytest.raises(WorkflowError) as info:
        prepare_workflow(wf, app._definition, 0.0, 1 << 20)
    message = str(info.value)
    assert "cycle" in message
    assert any(
        order in message for order in ("'x' -> 'y' -> 'z' -> 'x'", "'y' -> 'z' -> 'x' -> 'y'",
                                       "'z' -> 'x' -> 'y' -> 'z'")
    )  # fmt: skip


@st.composite
def graphs(draw: st.DrawFn) -> list[list[int]]:
    n = draw(st.integers(1, 10))
    return [draw(st.lists(st.integers(0, n - 1), max_size=3)) for _ in range(n)]


def on_a_cycle(parents: list[list[int]]) -> set[int]:
    """The steps that reach themselves through their parents (a reference, by closure)."""
    n = len(parents)
    reach = [{p for p in ps} for ps in parents]
    for _ in range(n):
        for i in range(n):
            for p in list(reach[i]):
                reach[i] |= reach[p]
    return {i for i in range(n) if i in reach[i]}


@settings(max_examples=300, deadline=None)
@given(parents=graphs())
def test_cycles_are_always_rejected_and_acyclic_graphs_never(parents: list[list[int]]) -> None:
    wf = Workflow()
    for i, ps in enumerate(parents):
        wf.add(a.s(i), after=[f"k{p}" for p in ps], key=f"k{i}")
    cyclic = on_a_cycle(parents)
    if not cyclic:
        new = prepare_workflow(wf, app._definition, 0.0, 1 << 20)
        assert len(new.jobs) == len(parents)
        return
    with pytest.raises(WorkflowError) as info:
        prepare_workflow(wf, app._definition, 0.0, 1 << 20)
    assert info.value.step is not None and int(info.value.step[1:]) in cyclic
