"""The pure dependency graph: orders, cycles, unknown names."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vigil.graph import (
    DependencyCycle,
    DependencyGraph,
    UnknownDependency,
    find_cycle,
)


def test_dependencies_start_before_their_dependents() -> None:
    graph = DependencyGraph({"web": ["ip", "fs"], "ip": [], "fs": ["disk"], "disk": []})
    assert graph.start_order() == ["disk", "fs", "ip", "web"]


def test_stop_order_is_the_exact_reverse_of_start_order() -> None:
    graph = DependencyGraph({"web": ["ip", "fs"], "ip": [], "fs": ["disk"], "disk": []})
    assert graph.stop_order() == ["web", "ip", "fs", "disk"]
    assert graph.stop_order() == graph.start_order()[::-1]


def test_independent_names_start_in_name_order_whatever_the_input_order() -> None:
    forward = DependencyGraph({"c": [], "a": [], "b": []})
    backward = DependencyGraph({"b": [], "a": [], "c": []})
    assert forward.start_order() == backward.start_order() == ["a", "b", "c"]


def test_a_key_breaks_ties_instead_of_the_name() -> None:
    written = ["zeta", "alpha", "mid"]
    graph = DependencyGraph({"zeta": [], "alpha": [], "mid": ["zeta"]}, key=written.index)
    assert graph.start_order() == ["zeta", "alpha", "mid"]


def test_direct_and_transitive_neighbours() -> None:
    graph = DependencyGraph({"app": ["fs", "ip"], "fs": ["disk"], "ip": [], "disk": []})
    assert graph.dependencies("app") == ["fs", "ip"]
    assert graph.dependents("disk") == ["fs"]
    assert graph.transitive_dependents("disk") == ["fs", "app"]
    assert graph.transitive_dependencies("app") == ["disk", "fs", "ip"]
    assert graph.dependents("app") == []


def test_a_cycle_is_refused_with_its_path_in_the_message() -> None:
    with pytest.raises(DependencyCycle) as caught:
        DependencyGraph({"a": ["b"], "b": ["a"]})
    assert caught.value.cycle == ["a", "b", "a"]
    assert "a -> b -> a" in str(caught.value)


def test_a_resource_depending_on_itself_is_a_cycle() -> None:
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


def test_find_cycle_reports_the_loop_not_the_path_into_it() -> None:
    assert find_cycle({"entry": ["x"], "x": ["y"], "y": ["z"], "z": ["x"]}) == [
        "x", "y", "z", "x",
    ]
    assert find_cycle({"a": ["b"], "b": []}) is None


def test_a_dependency_on_an_undefined_name_is_refused_with_a_hint() -> None:
    with pytest.raises(UnknownDependency) as caught:
        DependencyGraph({"web": ["databse"], "database": []})
    message = str(caught.value)
    assert "'web' depends on 'databse'" in message
    assert "did you mean 'database'" in message
    assert caught.value.missing == "databse"


def test_asking_about_an_unknown_name_raises_unknown_dependency() -> None:
    graph = DependencyGraph({"a": []})
    with pytest.raises(UnknownDependency, match="'b' is not defined"):
        graph.dependents("b")


@st.composite
def dags(draw: st.DrawFn) -> dict[str, list[str]]:
    """Random DAGs: node i may only depend on nodes drawn before it, then names shuffled."""
    size = draw(st.integers(min_value=0, max_value=12))
    names = draw(st.lists(st.from_regex(r"[a-z]{1,4}", fullmatch=True), min_size=size,
                          max_size=size, unique=True))
    edges: dict[str, list[str]] = {}
    for index, name in enumerate(names):
        earlier = names[:index]
        edges[name] = draw(st.lists(st.sampled_from(earlier), unique=True)) if earlier else []
    order = draw(st.permutations(list(edges)))
    return {name: edges[name] for name in order}


@given(dags())
def test_start_order_puts_every_dependency_first_and_stop_order_reverses_it(
    edges: dict[str, list[str]],
) -> None:
    graph = DependencyGraph(edges)
    order = graph.start_order()
    assert sorted(order) == sorted(edges)
    position = {name: i for i, name in enumerate(order)}
    for name, needed in edges.items():
        for dependency in needed:
            assert position[dependency] < position[name]
    assert graph.stop_order() == order[::-1]
    assert DependencyGraph(dict(reversed(list(edges.items())))).start_order() == order


@given(dags(), st.data())
def test_adding_a_back_edge_to_a_dag_makes_a_cycle_that_is_found(
    edges: dict[str, list[str]], data: st.DataObject,
) -> None:
    chains = [(name, dep) for name, needed in edges.items() for dep in needed]
    if not chains:
        return
    dependent, dependency = data.draw(st.sampled_from(chains))
    edges[dependency] = [*edges[dependency], dependent]
    cycle = find_cycle(edges)
    assert cycle is not None and cycle[0] == cycle[-1]
    for here, there in itertools.pairwise(cycle):
        assert there in edges[here]
    with pytest.raises(DependencyCycle):
        DependencyGraph(edges)
