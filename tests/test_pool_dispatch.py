"""Dispatch rules of the backend pool, over in-memory backends: load over weight, round robin on ties,
capacity, labels and node classes, and the pool's TOML and URL-list configuration."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from generation_service.errors import BackendUnavailable, NoCapableBackend, PoolFull
from generation_service.metrics import Metrics
from generation_service.pool import BackendConfig, BackendPool, configs_from_file, configs_from_urls
from memory_backend import MemoryBackend

CLASSES = frozenset({"EmptyImage", "SaveImage"})


def pool_of(*configs: BackendConfig, classes: dict[str, frozenset[str]] | None = None) -> BackendPool:
    clients = {}
    for config in configs:
        backend = MemoryBackend(config.url)
        backend.offered_classes = (classes or {}).get(config.name, CLASSES)
        clients[config.name] = backend
    pool = BackendPool(list(configs), Metrics(), clients=clients)
    for member in pool.members.values():
        member.node_classes = (classes or {}).get(member.name, CLASSES)
    return pool


def config(name: str, **fields: object) -> BackendConfig:
    return BackendConfig(name, f"http://{name}:8188", **fields)  # type: ignore[arg-type]


def test_ties_go_round_robin_and_load_counts_over_weight() -> None:
    pool = pool_of(config("a"), config("b", weight=2.0))
    placed: Counter[str] = Counter()
    for i in range(9):
        member = pool.choose(CLASSES)
        pool.dispatched(member, f"p{i}", lambda m: None)
        placed[member.name] += 1
    assert placed == {"a": 3, "b": 6}  # b weighs twice as much: it takes twice the runs


def test_a_started_run_still_loads_its_backend_until_it_ends() -> None:
    pool = pool_of(config("a"), config("b"))
    a = pool.choose(CLASSES)
    pool.dispatched(a, "p1", lambda m: None)
    a.started("p1")
    a.seen.add("p1")  # the next queue snapshot lists it as running
    assert pool.choose(CLASSES).name != a.name
    a.release("p1")
    assert a.load == 0


def test_full_backends_are_skipped_and_all_full_is_resource_exhausted() -> None:
    pool = pool_of(config("a", max_queued=1), config("b", max_queued=1))
    for i in range(2):
        pool.dispatched(pool.choose(CLASSES), f"p{i}", lambda m: None)
    with pytest.raises(PoolFull) as full:
        pool.choose(CLASSES)
    assert full.value.retry_after_s >= 1


def test_down_backends_are_skipped_and_all_down_is_unavailable() -> None:
    pool = pool_of(config("a"), config("b"))
    pool.members["a"].up = False
    assert {pool.choose(CLASSES).name for _ in range(4)} == {"b"}
    pool.members["b"].up, pool.members["b"].last_error = False, "unreachable: refused"
    with pytest.raises(BackendUnavailable, match="b: unreachable: refused"):
        pool.choose(CLASSES)


def test_labels_and_node_classes_decide_who_may_run_it() -> None:
    pool = pool_of(
        config("gpu", labels=frozenset({"video"})),
        config("cpu"),
        classes={"gpu": CLASSES | {"SaveVideo"}, "cpu": CLASSES},
    )
    assert {pool.choose(CLASSES, frozenset({"video"})).name for _ in range(3)} == {"gpu"}
    assert {pool.choose(CLASSES | {"SaveVideo"}).name for _ in range(3)} == {"gpu"}
    with pytest.raises(NoCapableBackend, match="labels"):
        pool.choose(CLASSES, frozenset({"audio"}))
    pool.members["gpu"].up = False
    with pytest.raises(BackendUnavailable):
        pool.choose(CLASSES | {"SaveVideo"})  # the only backend that has it is down


def test_classes_split_over_backends_fail_up_front_but_unknown_ones_go_to_validation() -> None:
    pool = pool_of(config("a"), config("b"), classes={"a": CLASSES | {"X"}, "b": CLASSES | {"Y"}})
    with pytest.raises(NoCapableBackend, match=r"a lacks \['Y'\]; b lacks \['X'\]"):
        pool.choose(CLASSES | {"X", "Y"})
    assert pool.choose(CLASSES | {"Unknown"}).name in {"a", "b"}  # ComfyUI's validation names the node


def test_backends_file_and_url_list(tmp_path: Path) -> None:
    path = tmp_path / "backends.toml"
    path.write_text(
        '[[backend]]\nname = "a"\nurl = "http://a:8188"\nweight = 2\nlabels = ["video"]\n\n'
        '[[backend]]\nname = "s3"\nurl = "http://swarm:7801/ComfyBackendDirect"\nswarm_backend_id = 3\nmax_queued = 4\n'
    )
    a, s3 = configs_from_file(path)
    assert (a.weight, a.labels, s3.swarm_backend_id, s3.max_queued) == (2.0, frozenset({"video"}), "3", 4)
    path.write_text('[[backend]]\nname = "a"\nurl = "http://a:8188"\nwieght = 2\n')
    with pytest.raises(ValueError, match="unknown keys"):
        configs_from_file(path)
    urls = configs_from_urls("http://user:pw@a:8188, http://b:8188/ComfyBackendDirect")
    assert [c.name for c in urls] == ["http://a:8188", "http://b:8188/ComfyBackendDirect"]  # no credentials
    with pytest.raises(ValueError, match="twice"):
        configs_from_urls("http://a:8188,http://a:8188")
