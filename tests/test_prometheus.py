"""A real Prometheus (Debian's `prometheus`) scraping a real 3-node local mesh.

The scrape config is deploy/prometheus/prometheus.yml with DNS discovery swapped for the loopback targets and
the intervals shortened; the alert rules are deploy/prometheus/rules/ as shipped. Asserted through Prometheus's
HTTP API: every target is up, counters move, every dashboard and rule expression is valid PromQL that the
server accepts, the core panels have data, and killing a node drives GpumeshNodeDown.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from scheduler.devtools.localmesh import listening_ports, sees_all, start_mesh, stop_all, wait_for

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read deploy/prometheus (pip install pyyaml)")


def opskit():
    if "gpumesh_opskit" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpumesh_opskit", DEPLOY / "opskit.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["gpumesh_opskit"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["gpumesh_opskit"]


class Prom:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params) -> dict:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # 400/422 carry a JSON error body
            return json.loads(e.read())

    def query(self, expr: str) -> list:
        r = self.get("/api/v1/query", query=expr)
        assert r["status"] == "success", f"{expr}: {r.get('error')}"
        return r["data"]["result"]

    def targets(self) -> list[dict]:
        return [t for t in self.get("/api/v1/targets")["data"]["activeTargets"] if t["labels"]["job"] == "gpumesh"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus not found: install the Debian package 'prometheus' (apt-get install prometheus)")
    root = tmp_path_factory.mktemp("prom")
    nodes = start_mesh(root / "mesh", 3, extra=["--advert-interval", "0.5"])
    proc = None
    try:
        wait_for(lambda: sees_all(nodes), 120, "the 3 nodes to see each other")
        cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        cfg["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
        cfg["rule_files"] = [str(DEPLOY / "prometheus" / "rules" / "*.yml")]
        job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "gpumesh")
        del job["dns_sd_configs"]
        job["static_configs"] = [{"targets": [f"127.0.0.1:{nd.metrics_port}" for nd in nodes]}]
        cfg["scrape_configs"] = [job]
        (root / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        log = open(root / "prometheus.log", "wb")
        proc = subprocess.Popen(
            [prometheus, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
             "--web.listen-address=127.0.0.1:0", "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def bound() -> list[int]:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(root / 'prometheus.log').read_text()[-2000:]}")
            return listening_ports(proc.pid)
        prom = Prom(wait_for(bound, 60, "prometheus to listen")[0])

        def ready():
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(root / 'prometheus.log').read_text()[-2000:]}")
            return prom.get("/api/v1/status/buildinfo")["status"] == "success"
        wait_for(ready, 60, "prometheus to answer")
        yield prom, nodes
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        stop_all(nodes)


def test_all_three_targets_are_up(cluster):
    prom, nodes = cluster
    want = {f"127.0.0.1:{nd.metrics_port}" for nd in nodes}
    wait_for(lambda: {t["labels"]["instance"] for t in prom.targets() if t["health"] == "up"} == want, 60,
             "prometheus to scrape all three nodes")
    assert {r["metric"]["instance"] for r in prom.query('up{job="gpumesh"} == 1')} == want
    # the mesh as Prometheus sees it: every node knows the two others
    wait_for(lambda: sorted(float(r["value"][1]) for r in prom.query("gpumesh_peers_known")) == [2, 2, 2], 60,
             "gpumesh_peers_known = 2 on every node")


def test_advert_counters_move(cluster):
    prom, nodes = cluster
    wait_for(lambda: len(prom.query("gpumesh_adverts_sent_total")) == 3, 60, "advert counters of 3 nodes")
    first = {r["metric"]["instance"]: float(r["value"][1]) for r in prom.query("gpumesh_adverts_sent_total")}

    def moved():
        now = {r["metric"]["instance"]: float(r["value"][1]) for r in prom.query("gpumesh_adverts_sent_total")}
        return all(now.get(i, 0) > v for i, v in first.items())
    wait_for(moved, 60, "every node's gpumesh_adverts_sent_total to grow between scrapes")
    wait_for(lambda: all(float(r["value"][1]) > 0 for r in prom.query(
        "increase(gpumesh_adverts_received_total[30s])")), 60, "adverts received to grow on every node")


N_JOBS = 6


def test_jobs_run_and_job_counters_move(cluster):
    """Jobs through node 0's client API (echo and checksum): Prometheus sees them submitted, finished done,
    run by executors, and the data plane carry them."""
    from scheduler.client.client import SyncClient, local_address

    prom, nodes = cluster

    def total(expr: str) -> float:
        return sum(float(r["value"][1]) for r in prom.query(expr))

    before = total('gpumesh_jobs_finished_total{state="done"}')
    addr, tok, pid, insecure = local_address(nodes[0].data_dir)
    with SyncClient(addr, token=tok, peer_id=pid, insecure=insecure) as c:
        ids = [c.submit("echo", {"n": i})["id"] for i in range(N_JOBS - 1)]
        ids.append(c.submit("checksum", {}, input=b"gpumesh" * 1000)["id"])
        results = [c.result(j, timeout=120) for j in ids]
    assert all(r.ok for r in results), [r.reason for r in results if not r.ok]
    wait_for(lambda: total('gpumesh_jobs_finished_total{state="done"}') >= before + N_JOBS, 60,
             "prometheus to see the jobs finished")
    assert total("gpumesh_jobs_submitted_total") >= N_JOBS
    wait_for(lambda: total('gpumesh_executor_jobs_total{outcome="done"}') >= N_JOBS, 60,
             "the executors' job counters to move")
    assert total("gpumesh_job_latency_seconds_count") >= N_JOBS
    assert total("gpumesh_transport_received_bytes_total") > 0
    # rates need samples: wait until the job and data-plane series have a few scrapes (the panels use them)
    series = ("gpumesh_jobs_submitted_total|gpumesh_jobs_finished_total|gpumesh_executor_jobs_total|"
              "gpumesh_transport_sent_bytes_total|gpumesh_dataplane_rpc_requests_total")
    wait_for(lambda: prom.query(f'min(count_over_time({{__name__=~"{series}"}}[30s])) >= 3'), 60,
             "three scrapes of the job and transport series")


def _substituted(expr: str, instance: str) -> str:
    return (expr.replace("$__rate_interval", "30s").replace("${job}", "gpumesh").replace("$job", "gpumesh")
            .replace("${instance}", instance).replace("$instance", instance))


CORE_PANELS = {  # panels that must show data once the mesh above has run its jobs
    "gpumesh / Mesh overview": {"Nodes up", "Nodes in view", "Devices", "Free slots", "Devices by kind",
                                "Peers in each node's view", "Adverts sent / received", "libp2p connections"},
    "gpumesh / Node detail": {"Up", "Peers known", "Devices offered", "Devices", "Global memory", "Adverts",
                              "CPU", "Memory"},
    "gpumesh / Jobs": {"Submitted /s", "Finished by state", "End-to-end latency by priority class",
                       "Jobs finished by outcome", "Jobs finished by kind"},
    "gpumesh / Transport": {"Bytes per second", "Frames per second", "Requests by method and code"},
}


def test_every_dashboard_query_runs_and_core_panels_have_data(cluster):
    prom, nodes = cluster
    instance = f"127.0.0.1:{nodes[0].metrics_port}"
    wait_for(lambda: prom.query(f'increase(gpumesh_adverts_sent_total{{instance="{instance}"}}[30s]) > 0'), 60,
             "two scrapes of the node (rates need them)")
    empty = set()
    for path in opskit().dashboard_files():
        d = json.loads(path.read_text())
        for p in opskit().iter_panels(d):
            results = [prom.query(_substituted(t["expr"], instance)) for t in p.get("targets", [])]
            if p.get("targets") and not any(results):
                empty.add((d["title"], p["title"]))
        for where, expr in opskit().dashboard_queries(d):
            r = prom.get("/api/v1/query", query=_substituted(expr, instance))
            assert r["status"] == "success", f"{where}: {r.get('error')}"
    core = {(dash, title) for dash, titles in CORE_PANELS.items() for title in titles}
    assert not (core & empty), f"core panels without data: {sorted(core & empty)}"


def test_alert_rules_load_and_evaluate(cluster):
    prom, _ = cluster

    def evaluated():
        groups = prom.get("/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules and all(r["health"] == "ok" and r["lastEvaluation"] > "0001-01-01T00:00:00Z" for r in rules) \
            and rules
    rules = wait_for(evaluated, 60, "every rule evaluated with health ok")
    assert {r["name"] for r in rules} == {r["alert"] for r in opskit().load_rules() if "alert" in r}


def test_killed_node_goes_down_and_drives_the_node_down_alert(cluster):
    """Runs last in this module: it kills node 2."""
    prom, nodes = cluster
    victim = nodes[2]
    instance = f"127.0.0.1:{victim.metrics_port}"
    wait_for(lambda: any(t["labels"]["instance"] == instance and t["health"] == "up" for t in prom.targets()), 60,
             "the victim to be scraped")
    victim.kill()
    wait_for(lambda: prom.query(f'up{{instance="{instance}"}} == 0'), 60, "prometheus to see the node down")

    def pending():
        alerts = prom.get("/api/v1/alerts")["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "GpumeshNodeDown"
                and a["labels"]["instance"] == instance and a["state"] in ("pending", "firing")]
    (alert,) = wait_for(pending, 60, "GpumeshNodeDown to go pending for the killed node")
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["runbook"] == "docs/dashboards-and-alerts.md#gpumeshnodedown"
    # the survivors expire it from their views, as the mesh panels will show
    wait_for(lambda: sorted(float(r["value"][1]) for r in prom.query("gpumesh_peers_known")) == [1, 1], 60,
             "the two survivors to expire the killed node")
