"""Executors: a search on Ray or on local worker processes records the same store as in-process; Ray survives a
killed worker and times candidates only on nodes advertising the target, one at a time; local workers run tasks
side by side but timing in-process, alone; select's branches run as Ray tasks with the in-process results; bad
specs, a missing or unreachable Ray and a dead local worker fail in one line."""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import sys
import threading
import time

import psutil
import pytest
import yaml

from tailorfit.pipeline import run_pipeline
from tailorfit.pipeline.cli import main
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.executor import executor_from, parse_executor

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_instance():
    """A 2-CPU Ray instance on loopback whose one node advertises the OpenVINO target once."""
    ray.init(num_cpus=2, resources={"openvino-cpu": 1}, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _recipe(model, data) -> dict:
    # accuracy and params only: latency is the one nondeterministic measurement, so the stores can be compared whole
    search = {"budget": 6, "initial": 4, "batch": 2, "inner_generations": 8, "inner_population": 16, "sequence_length": 24,
              "calibration_samples": 8, "latency_runs": 10, "objectives": ["accuracy", "params"]}
    return {"name": "ray-search", "seed": 0, "threads": 2, "steps": [
        {"id": "model", "pass": "load", "config": {"path": str(model), "task": "text-classification", "name": "tiny"}},
        {"id": "data", "pass": "dataset", "config": {"path": str(data)}},
        {"id": "ft", "pass": "finetune", "config": {"max_steps": 30, "batch_size": 16, "max_length": 24, "learning_rate": 3e-3}},
        {"id": "supernet", "pass": "supernet", "config": {"ffn_step": 16}},
        {"id": "search", "pass": "search", "config": search},
        *_branch("accurate", {"rule": "most_accurate"}), *_branch("small", {"rule": "smallest", "max_accuracy_drop": None}),
    ]}


def _branch(name: str, rule: dict) -> list[dict]:
    """A pick from the front, lowered, evaluated and timed: on Ray these steps run as tasks (pipeline/step_tasks.py)."""
    return [
        {"id": name, "pass": "select", "inputs": {"search": "search"}, "config": rule},
        {"id": f"{name}-ov", "pass": "lower", "config": {"target": "openvino-cpu"}},
        {"id": f"{name}-eval", "pass": "evaluate", "config": {"max_length": 24, "bootstrap": 100}},
        {"id": f"{name}-bench", "pass": "benchmark", "config": {"sequence_lengths": [24], "runs": 50, "warmup": 2, "attempts": 1}},
    ]


def _rows(result) -> list[tuple]:
    """Everything a store records except timings and latency (which no two runs share)."""
    db = sqlite3.connect(result.outputs["search"].path / "evaluations.sqlite")
    out = []
    for cid, position, role, genome, metrics in db.execute("SELECT id, position, role, genome, metrics FROM candidates ORDER BY position"):
        m = json.loads(metrics)
        out.append((cid, position, role, genome, m["accuracy"], m["params"], m["correct"], m["estimate_correct"], m["size_mb"]))
    return out


@pytest.fixture(scope="module")
def local_search(tiny_bert, sentences_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("executors")
    return run_pipeline(_recipe(tiny_bert, sentences_csv), out=out, quiet=True, executor="local"), out


def test_a_search_on_ray_with_a_worker_killed_midway_records_the_same_store_as_in_process(local_search, ray_instance, tiny_bert, sentences_csv):
    """One Ray run checks both: a killed worker's candidate is measured again, once, and the store ends as the local one."""
    local, out = local_search
    killed: list[int] = []

    def kill_one_builder() -> None:
        """SIGKILL the first worker process seen building a candidate, once it has been at it for a moment."""
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            for proc in psutil.process_iter(["pid", "cmdline"]):
                if (proc.info["cmdline"] or [""])[0] == "ray::build_and_score":
                    time.sleep(0.5)
                    os.kill(proc.info["pid"], signal.SIGKILL)
                    killed.append(proc.info["pid"])
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_one_builder, daemon=True)
    killer.start()
    on_ray = run_pipeline(_recipe(tiny_bert, sentences_csv), out=out, quiet=True, executor="ray", force=["search"])
    killer.join()
    assert killed, "no worker was seen building a candidate"
    assert on_ray.manifest["executor"].startswith("ray") and local.manifest["executor"] == "local"
    assert on_ray.manifest["steps"]["search"]["cache_hit"] is False
    rows = _rows(on_ray)
    assert len({r[0] for r in rows}) == len(rows) == 8  # 2 baselines + the budget: nothing lost, nothing twice
    assert rows == _rows(local)
    # select's branches ran as Ray tasks, gave the in-process results, and the two measurements did not overlap
    steps = on_ray.manifest["steps"]
    branches = [f"{name}{part}" for name in ("accurate", "small") for part in ("", "-ov", "-eval", "-bench")]
    assert all("ran_as_task" in steps[sid] and "ran_as_task" not in local.manifest["steps"][sid] for sid in branches)
    for sid in ("accurate-eval", "small-eval"):
        assert on_ray.outputs[sid].metrics["accuracy"] == local.outputs[sid].metrics["accuracy"]
        # the same pick up to ties: candidates equal in the rule's metrics (e.g. one sub-network under two policies)
        # come in the front's latency order, which no two runs share
        mine, theirs = on_ray.outputs[sid].source.selection, local.outputs[sid].source.selection
        assert [mine.search_metrics[k] for k in ("accuracy", "params")] == [theirs.search_metrics[k] for k in ("accuracy", "params")]
    spans = sorted((steps[sid]["ran_as_task"]["started"], steps[sid]["ran_as_task"]["started"] + steps[sid]["produced"]["seconds"]) for sid in ("accurate-bench", "small-bench"))
    assert spans[0][1] <= spans[1][0] + 0.01


def test_a_search_on_local_workers_records_the_same_store_as_in_process(local_search, tiny_bert, sentences_csv):
    local, out = local_search
    workers = run_pipeline(_recipe(tiny_bert, sentences_csv), out=out, quiet=True, executor="local:2", force=["search"])
    assert workers.manifest["executor"] == "local:2" and workers.manifest["steps"]["search"]["cache_hit"] is False
    assert _rows(workers) == _rows(local)


def _span(i: int) -> tuple[int, float, float]:
    start = time.time()
    time.sleep(1.0)
    return os.getpid(), start, time.time()


def _refuse(i: int) -> None:
    raise TailorfitError(f"candidate {i} is broken", "fix it")


def _die(i: int) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_local_workers_run_free_tasks_side_by_side_and_resource_tasks_here_one_at_a_time():
    pool = executor_from("local:2")
    assert pool.spec == "local:2" and pool.parallel == 2
    try:
        seen: list[int] = []
        free = pool.map(_span, range(2), on_result=lambda i, r: seen.append(i))
        assert sorted(seen) == [0, 1] and all(pid != os.getpid() for pid, _, _ in free)
        assert free[1][1] < free[0][2] and free[0][1] < free[1][2]  # the two sleeps overlapped
        timed = pool.map(_span, range(2), resources={"openvino-cpu": 1})
        assert all(pid == os.getpid() for pid, _, _ in timed) and timed[0][2] <= timed[1][1]
        with pytest.raises(TailorfitError, match="^candidate [01] is broken — fix it$"):  # whichever fails first
            pool.map(_refuse, range(2))
    finally:
        pool.close()


def test_a_dead_local_worker_fails_in_one_line_and_the_next_map_starts_afresh():
    pool = executor_from("local:2")
    try:
        with pytest.raises(TailorfitError, match="^a worker process of executor local:2 died .* run again to resume"):
            pool.map(_die, range(2))
        assert [pid for pid, _, _ in pool.map(_span, range(2))]
    finally:
        pool.close()


def test_latency_tasks_run_only_where_the_target_is_advertised_and_one_at_a_time(ray_instance):
    def hold(i):
        import time

        start = time.time()
        time.sleep(1.0)
        return start, time.time()

    pool = executor_from("ray")
    spans = sorted(pool.map(hold, range(4), resources={"openvino-cpu": 1}))
    assert all(earlier[1] <= later[0] for earlier, later in zip(spans, spans[1:]))
    free = sorted(pool.map(hold, range(2)))
    assert free[1][0] < free[0][1]  # without the resource the node's two CPUs run two at once
    started = time.time()
    with pytest.raises(TailorfitError, match="no Ray node advertises the resource 'openvino-gpu'"):
        pool.map(hold, range(2), resources={"openvino-gpu": 1})
    assert time.time() - started < 5
    pool.close()
    assert ray.is_initialized()  # the executor reused the caller's connection and leaves it up


def test_a_tasks_error_reaches_the_driver_as_itself(ray_instance):
    def fail(i):
        raise ValueError(f"candidate {i} is broken")

    with pytest.raises(ValueError, match="^candidate 1 is broken$"):
        executor_from("ray").map(fail, [1])


def test_a_shared_folder_is_unpacked_once_per_node_and_read_by_every_task(ray_instance, tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.bin").write_bytes(b"\x01" * 1000)

    def read(i, folder):
        path = folder.local()
        return str(path), (path / "w.bin").read_bytes()

    pool = executor_from("ray")
    results = pool.map(read, range(4), {"folder": pool.share(tmp_path / "weights")})
    assert len({path for path, _ in results}) == 1 and all(content == b"\x01" * 1000 for _, content in results)
    assert "tailorfit-shipped" in results[0][0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_executor_specs_and_unreachable_addresses_fail_in_one_line(tiny_bert, sentences_csv, tmp_path, capsys):
    for spec in ("dask", "ray:/host:1", "ray://host", "ray://host:port", "local:0", "local:two"):
        with pytest.raises(TailorfitError, match="unknown executor"):
            parse_executor(spec)
    with pytest.raises(TailorfitError, match=r"^unknown executor 'threads' — use local, local:N \(N worker processes\), ray, or ray://HOST:PORT$"):
        run_pipeline({**_recipe(tiny_bert, sentences_csv), "executor": "threads"}, out=tmp_path, quiet=True)
    address = f"ray://127.0.0.1:{_free_port()}"
    started = time.time()
    with pytest.raises(TailorfitError, match=f"cannot reach Ray at {address} — start it with `ray start --head`"):
        executor_from(address)
    assert time.time() - started < 10
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(tiny_bert, sentences_csv)))
    assert main(["run", str(recipe), "--out", str(tmp_path / "out"), "--executor", address]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"tailorfit: error: cannot reach Ray at {address}")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_default_executor_follows_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert parse_executor(None) == ("local", None)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert parse_executor(None) == ("ray", "10.0.0.5:6379") and parse_executor("ray") == ("ray", "10.0.0.5:6379")
    assert parse_executor("local") == ("local", None) and parse_executor("local:3") == ("local", "3")


def test_ray_without_the_extra_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when the extra is not installed
    with pytest.raises(TailorfitError, match=r"^executor 'ray' needs the ray extra — pip install 'tailorfit\[ray\]'$"):
        executor_from("ray")
