"""--nnc-ray: a run whose heavy work ran as Ray jobs (a local instance, ``ray.init(num_cpus=2)``) gives the
serial run's records; a job that raises is recorded and its cases compute the work themselves; the scaling
estimate's arithmetic."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nnconform.engine import Job, jobs_for_items
from nnconform.report.compare import compare_results
from nnconform.session import RunConfig

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("ray", reason="ray is not installed: pip install -e .[test]")

#: A plugin for the Ray run: it hands the first compression job an argument the engine cannot use, so that job
#: raises in its worker (the engine must record it, and the case must compute its work itself).
SABOTAGE = '''
import nnconform.engine as engine
from nnconform.engine.jobs import Job

_jobs = engine.jobs_for_items


def jobs_for_items(items, **kwargs):
    jobs = _jobs(items, **kwargs)
    i = next(i for i, j in enumerate(jobs) if j.kind == "compression")
    j = jobs[i]
    jobs[i] = Job(j.kind, j.key, ("not a point",), j.anchor, j.cpus, j.gpus, j.nodeids)
    return jobs


engine.jobs_for_items = jobs_for_items
'''


def _run(tmp_path: Path, run_id: str, *extra: str) -> tuple[dict, str]:
    cmd = [sys.executable, "-m", "pytest", str(REPO / "conformance"), "--rootdir", str(REPO), "-p", "no:cacheprovider",
           "-q", "--nnc-tier", "quick", "--nnc-anchors", "fmnist-lenet5", "--nnc-threads", "1",
           "-k", "compressed_artifact or compressed_accuracy or update_accuracy or lineage_accuracy or "
                 "split_intermediate_data or split_codec_accuracy",
           "--nnc-cache-dir", str(tmp_path / f"cache-{run_id}"),  # cold caches: the Ray run computes its own
           "--nnc-report-dir", str(tmp_path), "--nnc-run-id", run_id, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return json.loads((tmp_path / run_id / "results.json").read_text()), proc.stdout


def test_ray_run_gives_the_serial_records(tmp_path):
    serial, _ = _run(tmp_path, "serial")
    (tmp_path / "nnc_sabotage.py").write_text(SABOTAGE)
    ray_run, out = _run(tmp_path, "ray", "--nnc-ray", "local", "-p", "nnc_sabotage")
    assert ray_run["config"]["ray"] == "local" and ray_run["config"]["device"] == {"device": "cpu"}
    assert compare_results(serial, ray_run) == []
    assert len(serial["records"]) > 20 and {c["outcome"] for c in ray_run["cases"]} == {"passed"}
    # every job ran but the sabotaged one, which is recorded with its error; its cases passed all the same
    counts = re.search(r"ray \(local\): (\d+)/(\d+) jobs done, (\d+) failed", out)
    assert counts, out[-3000:]
    done, total, failed_jobs = map(int, counts.groups())
    assert total >= 5 and done == total - 1 and failed_jobs == 1, counts.group(0)
    failed = [ln for ln in out.splitlines() if "ray job compression:fmnist-lenet5" in ln]
    assert len(failed) == 1 and "AttributeError" in failed[0], out[-3000:]
    summary = (tmp_path / "ray" / "summary.md").read_text()
    assert "failed (its cases computed it themselves)" in summary
    # the comparison can fail: a record changed in the Ray run is a difference
    changed = next(r for r in ray_run["records"] if r["check_id"] == "compression.accuracy")
    changed["measured"] = "changed"
    assert compare_results(serial, ray_run)


def test_a_job_that_raises_is_recorded_and_the_others_come_back(tmp_path):
    """The engine on its own: an unknown job kind raises in its worker; the engine records it (never raises) and
    ``wait_for`` returns; a good job's result comes back as data (the reference top-1 of a checkpoint)."""
    import ray

    from nnconform.engine.ray_engine import RayEngine

    config = RunConfig(anchors="fmnist-lenet5", tier="quick", cache_dir=tmp_path / "cache", write_report=False)
    engine = RayEngine.start("local", config, num_cpus=2)
    try:
        engine.submit([Job("no-such-kind", "x", nodeids=("case-a",)),
                       Job("updates-reference", "fmnist-lenet5/epoch8", ("fmnist-lenet5", "epoch8"),
                           nodeids=("case-b",))])
        engine.wait_for("case-a")
        engine.wait_for("case-b")
        engine.wait_all()
        assert [f.job for f in engine.failures] == ["no-such-kind:x"]
        assert "unknown kind 'no-such-kind'" in engine.failures[0].error
        result = engine.results["updates-reference:fmnist-lenet5/epoch8"]
        assert 0.85 < result["metric"] < 0.95, result
        assert (tmp_path / "cache" / "eval").is_dir()  # the evaluation landed in the run's cache
        assert engine.summary().startswith("ray (local): 1/2 jobs done, 1 failed")
    finally:
        engine.shutdown()
    assert not ray.is_initialized()


class _Item:
    def __init__(self, nodeid, name, criterion, **params):
        self.nodeid, self.originalname, self.name = nodeid, name, name
        self.callspec = type("C", (), {"params": params})()
        self._criterion = criterion

    def get_closest_marker(self, name):
        return type("M", (), {"args": (self._criterion,)})() if name == "criterion" else None


def test_jobs_for_items_groups_cases_and_leaves_proposals_to_the_test_process():
    point = type("P", (), {"id": "lenet-x", "anchor": "fmnist-lenet5", "proposal": ""})()
    theirs = type("P", (), {"id": "lenet-y", "anchor": "fmnist-lenet5", "proposal": "acme"})()
    items = [_Item("a", "test_compressed_artifact", "compression", anchor_name="fmnist-lenet5", point=point),
             _Item("b", "test_compressed_accuracy", "compression", anchor_name="fmnist-lenet5", point=point),
             _Item("c", "test_compressed_latency", "compression", anchor_name="fmnist-lenet5", point=point),
             _Item("d", "test_compressed_accuracy", "compression", anchor_name="fmnist-lenet5", point=theirs),
             _Item("e", "test_split_intermediate_data", "split", anchor_name="fmnist-lenet5"),
             _Item("f", "test_lineage_accuracy", "updates", anchor_name="fmnist-lenet5", checkpoint="epoch8")]
    jobs = jobs_for_items(items, gpus=1)
    assert [(j.id, j.nodeids, j.gpus) for j in jobs] == [
        ("compression:lenet-x", ("a", "b"), 1), ("split-study:fmnist-lenet5", ("e",), 1),
        ("updates-reference:fmnist-lenet5/epoch8", ("f",), 1)]


def test_scaling_estimate():
    spec = importlib.util.spec_from_file_location("ray_scaling", REPO / "benchmarks" / "ray_scaling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    anchors = ["fmnist-lenet5", "fmnist-lenet5-big"]
    assert mod.job_of("conformance/test_split.py::test_split_codec_accuracy[fmnist-lenet5-big-c1-raw]", anchors) \
        == "split-study:fmnist-lenet5-big"
    assert mod.job_of("conformance/test_anchors.py::test_weights_sha256[fmnist-lenet5]", anchors) is None
    assert mod.makespan([4, 3, 3, 2], 2) == 6 and mod.makespan([10, 1, 1], 64) == 10
    results = {"run_id": "r", "config": {}, "anchors": {a: {} for a in anchors}, "cases": [
        {"nodeid": "t.py::test_compressed_artifact[x]", "duration_s": 10},
        {"nodeid": "t.py::test_compressed_accuracy[x]", "duration_s": 2},
        {"nodeid": "t.py::test_update_accuracy[y]", "duration_s": 6},
        {"nodeid": "t.py::test_weights_sha256[z]", "duration_s": 1}]}
    text = mod.estimate(results, [1, 2])
    assert "jobs: 2, total work W = 18 s; critical path (longest job) = 12 s (compression:x)" in text
    assert "serial part S (cases left in the test process) = 1 s" in text


def test_an_address_where_nothing_answers_stops_the_run_with_one_line(tmp_path):
    (tmp_path / "test_one.py").write_text("def test_one(nnc_config):\n    pass\n")
    cmd = [sys.executable, "-m", "pytest", str(tmp_path / "test_one.py"), "-p", "no:cacheprovider", "-q",
           "--nnc-no-report", "--nnc-cache-dir", str(tmp_path / "cache"), "--nnc-ray", "127.0.0.1:1"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "ERROR: --nnc-ray '127.0.0.1:1': Ray did not start or connect: ConnectionError: nothing answers at " \
           "127.0.0.1:1" in proc.stderr, proc.stderr
