"""deploy/: Dockerfile, compose files, the image entrypoint, Prometheus config + alert rules, Grafana dashboards.

No Docker engine runs on CI, so: compose files are validated by Debian's docker-compose, the rules by promtool
(config, rules, unit tests), the entrypoint's bootstrap/worker topology runs as real processes on loopback, and
every metric the dashboards and alerts use is checked against a scrape of real nodes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
PROM = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.gpu.yml", "docker-compose.intel.yml",
                 "docker-compose.meshkey.yml"]
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added",
                        "scrape_samples_post_metric_relabeling", "ALERTS", "ALERTS_FOR_STATE"}

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the deploy files (pip install pyyaml)")


def opskit():
    if "gpumesh_opskit" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpumesh_opskit", DEPLOY / "opskit.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["gpumesh_opskit"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["gpumesh_opskit"]


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not found: install the Debian package '{package}' (apt-get install {package})")
    return path


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Every series name real nodes export (two nodes that see each other, so per-peer series exist)."""
    return opskit().exported_names(opskit().node_families(2)) | PROMETHEUS_SYNTHETIC


# ---- compose ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override", [None, *COMPOSE_FILES[1:]])
def test_compose_files_validate_with_docker_compose(override):
    dc = need("docker-compose", "docker-compose")
    files = ["-f", str(DEPLOY / "docker-compose.yml")] + (["-f", str(DEPLOY / override)] if override else [])
    r = run(dc, *files, "config", "-q", cwd=DEPLOY)
    assert r.returncode == 0, r.stderr


def test_compose_file_that_is_broken_is_refused(tmp_path):
    """The validation above can fail: a service with a bad key is rejected by the same tool."""
    dc = need("docker-compose", "docker-compose")
    bad = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    bad["services"]["worker"]["healthcheck"]["retries"] = "three"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(bad))
    r = run(dc, "-f", str(path), "config", "-q", cwd=tmp_path)
    assert r.returncode != 0 and "retries" in r.stderr


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def compose(*extra: str) -> dict:
    """The compose files merged as compose merges mappings (override files extend the base file)."""
    data: dict = {}
    for name in ("docker-compose.yml", *extra):
        data = _merge(data, yaml.safe_load((DEPLOY / name).read_text()))
    return data


def test_compose_topology_scales_and_is_wired():
    c = compose("docker-compose.gpu.yml")
    svc = c["services"]
    assert {"bootstrap", "worker", "client", "prometheus", "grafana", "gpu-worker"} <= set(svc)
    # workers scale with --scale worker=N: no fixed name, hostname or host port
    for key in ("container_name", "hostname", "ports"):
        assert key not in svc["worker"], f"worker must not set {key} (breaks --scale)"
    assert svc["bootstrap"]["hostname"] == "bootstrap"
    # the bootstrap keeps one address on the compose network, inside the network's subnet
    import ipaddress

    def default(v: str) -> str:
        return re.sub(r"^\$\{\w+:-(.*)\}$", r"\1", v)
    subnet = ipaddress.ip_network(default(c["networks"]["mesh"]["ipam"]["config"][0]["subnet"]))
    assert ipaddress.ip_address(default(svc["bootstrap"]["networks"]["mesh"]["ipv4_address"])) in subnet
    assert svc["worker"]["environment"]["MESH_BOOTSTRAP_HOST"] == "bootstrap"
    assert svc["worker"]["depends_on"]["bootstrap"]["condition"] == "service_healthy"
    for name in ("bootstrap", "worker", "gpu-worker"):
        assert svc[name]["healthcheck"]["test"] == ["CMD", "mesh-node", "status"], name
        assert svc[name]["environment"]["MESH_ROLE"] in ("bootstrap", "worker")
        assert any(v.startswith("mesh-shared:/run/gpumesh-shared") for v in svc[name]["volumes"]), name
    # the GPU worker reserves NVIDIA GPUs and is found by Prometheus under the workers' DNS name
    dev = svc["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"]
    assert svc["gpu-worker"]["build"]["args"]["GPU_VENDOR"] == "nvidia"
    assert "worker" in svc["gpu-worker"]["networks"]["mesh"]["aliases"]
    # every bind-mounted path exists in the repository
    for name, s in svc.items():
        for v in s.get("volumes", []):
            src = v.split(":", 1)[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name}: {src} does not exist"


def test_mesh_key_override_gives_every_node_the_key():
    c = compose("docker-compose.meshkey.yml")
    for name in ("bootstrap", "worker"):
        assert c["services"][name]["secrets"] == ["gpumesh_mesh_key"]
        assert c["services"][name]["environment"]["GPUMESH_MESH_KEY_FILE"] == "/run/secrets/gpumesh_mesh_key"
        assert "MESH_ROLE" in c["services"][name]["environment"]  # merged with, not replacing, the base file


def test_prometheus_discovers_the_compose_services_by_dns():
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    c = compose("docker-compose.gpu.yml")
    names = set(c["services"])
    for s in c["services"].values():
        for net in (s.get("networks") or {}).values() if isinstance(s.get("networks"), dict) else []:
            names |= set((net or {}).get("aliases", []))
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "gpumesh")
    found = set()
    for sd in job["dns_sd_configs"]:
        assert sd["port"] == 9464
        found |= set(sd["names"])
    assert found <= names and {"bootstrap", "worker"} <= found
    # the nodes in the image listen for metrics on every interface, on the port Prometheus scrapes
    assert "GPUMESH_METRICS_LISTEN=0.0.0.0:9464" in (DEPLOY / "Dockerfile").read_text()


def test_environment_variables_in_deploy_files_are_real_node_settings():
    from scheduler.node.config import NodeSettings

    known = {"GPUMESH_" + n.upper() for n in NodeSettings.model_fields}
    text = "\n".join((DEPLOY / f).read_text() for f in [*COMPOSE_FILES, "Dockerfile"])
    used = set(re.findall(r"\b(GPUMESH_[A-Z_]+)\b", text))
    # variables that only parameterise the compose file itself (${GPUMESH_IMAGE:-...}) are not node settings
    compose_only = {"GPUMESH_IMAGE", "GPUMESH_GPU_IMAGE", "GPUMESH_P2P_PORT", "GPUMESH_DATA_PORT",
                    "GPUMESH_GPU_DEVICES", "GPUMESH_SUBNET", "GPUMESH_BOOTSTRAP_IP", "GPUMESH_MESH_KEY"}
    assert used - compose_only <= known, f"not NodeSettings fields: {sorted(used - compose_only - known)}"


# ---- Dockerfile ---------------------------------------------------------------------------------------------
def test_dockerfile_runs_as_non_root_with_healthcheck_and_data_volume():
    text = (DEPLOY / "Dockerfile").read_text()
    final = text.split("\nFROM ")[-1]  # the runtime stage
    users = re.findall(r"^USER\s+(\S+)", final, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^HEALTHCHECK .*CMD \["mesh-node", "status"\]', final, re.M)
    assert re.search(r'^VOLUME \["/var/lib/gpumesh"\]', final, re.M)
    assert "GPUMESH_DATA_DIR=/var/lib/gpumesh" in final
    assert re.search(r"^FROM python:\$\{PYTHON_VERSION\}-slim", text, re.M)
    for case in ("none)", "nvidia)", "intel)"):
        assert case in final
    # everything COPYed from the build context exists and survives deploy/Dockerfile.dockerignore
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for src in re.findall(r"^COPY (?!--from)(\S+(?: \S+)*) \S+$", text, re.M):
        for s in src.split():
            assert (REPO / s).exists(), s
            assert f"!{s}" in ignore or f"!{s}/**" in ignore, f"{s} is excluded from the build context"


def test_entrypoint_is_posix_sh():
    ep = DEPLOY / "docker-entrypoint.sh"
    assert os.access(ep, os.X_OK)
    r = run(shutil.which("dash") or "sh", "-n", str(ep))
    assert r.returncode == 0, r.stderr
    if shutil.which("shellcheck"):
        r = run("shellcheck", "-s", "sh", "-e", "SC2086", str(ep))  # $MESH_NODE is split on purpose
        assert r.returncode == 0, r.stdout


def _entrypoint_env(data: Path, shared: Path, **extra: str) -> dict:
    env = {**os.environ, "GPUMESH_DATA_DIR": str(data), "MESH_SHARED_DIR": str(shared), "PYTHONUNBUFFERED": "1",
           "GPUMESH_ADVERT_INTERVAL": "0.5", **extra}
    bindir = Path(sys.executable).parent
    if (bindir / "mesh-node").exists():
        env["PATH"] = f"{bindir}:{env.get('PATH', '')}"
    else:
        env["MESH_NODE_BIN"] = f"{sys.executable} -m scheduler.cli"
    return env


def test_entrypoint_worker_without_bootstrap_id_fails_clearly(tmp_path):
    env = _entrypoint_env(tmp_path / "w", tmp_path / "shared", MESH_ROLE="worker", MESH_BOOTSTRAP_WAIT="1")
    r = run(str(DEPLOY / "docker-entrypoint.sh"), "run", env=env, cwd=REPO)
    assert r.returncode == 1
    assert "no bootstrap peer id" in r.stderr


def test_entrypoint_bootstrap_and_workers_form_a_mesh(tmp_path):
    """The compose topology as processes: the bootstrap publishes its peer id in the shared dir, workers read it
    and dial /dns4/localhost/..., all converge; `status` through the entrypoint is the healthcheck."""
    from scheduler.devtools.localmesh import NodeProc, wait_for

    shared = tmp_path / "shared"
    procs: list[subprocess.Popen] = []
    nodes: list[NodeProc] = []

    def start(name: str, role: str, boot_port: int | None = None) -> NodeProc:
        nd = NodeProc(tmp_path / name)
        nd.data_dir.mkdir(parents=True, exist_ok=True)
        extra = {"MESH_ROLE": role}
        if boot_port is not None:
            extra |= {"MESH_BOOTSTRAP_HOST": "localhost", "MESH_BOOTSTRAP_PORT": str(boot_port)}
        log = open(nd.data_dir / "node.log", "ab")
        p = subprocess.Popen(
            [str(DEPLOY / "docker-entrypoint.sh"), "run", "--listen", "/ip4/127.0.0.1/tcp/0",
             "--data-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--exit-with-parent"],
            env=_entrypoint_env(nd.data_dir, shared, **extra), stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        log.close()
        nd.proc, nd.log_path = p, nd.data_dir / "node.log"
        procs.append(p)
        nodes.append(nd)
        return nd

    try:
        boot = start("bootstrap", "bootstrap")
        boot.wait_up()
        published = (shared / "bootstrap.peer-id").read_text().strip()
        assert published == boot.call("status")["peer_id"]
        workers = [start(f"worker{i}", "worker", boot.p2p_port) for i in range(2)]
        for w in workers:
            w.wait_up()
        ids = {nd.call("status")["peer_id"] for nd in nodes}
        assert len(ids) == 3
        wait_for(lambda: all({p["peer_id"] for p in nd.call("peers")} >= ids for nd in nodes), 120,
                 "bootstrap and workers to see each other")
        # the image's healthcheck: `mesh-node status` exits 0 while the node answers
        env = _entrypoint_env(boot.data_dir, shared)
        assert run(str(DEPLOY / "docker-entrypoint.sh"), "status", "--json", env=env, cwd=REPO).returncode == 0
        # the healthcheck fails once the node is gone; its identity stays in the data dir (the volume)
        assert boot.stop() == 0
        assert run(str(DEPLOY / "docker-entrypoint.sh"), "status", env=env, cwd=REPO).returncode != 0
        r = run(str(DEPLOY / "docker-entrypoint.sh"), "id", env=env, cwd=REPO)
        assert r.returncode == 0 and r.stdout.strip() == published
    except Exception:
        for nd in nodes:
            print(f"--- {nd.data_dir.name}\n{nd.log_tail()}")
        raise
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# ---- Prometheus: config, rules, rule unit tests -------------------------------------------------------------
def _config_with_local_rules(tmp_path: Path) -> Path:
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    cfg["rule_files"] = [str(PROM / "rules" / "*.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_promtool_check_config(tmp_path):
    promtool = need("promtool", "prometheus")
    r = run(promtool, "check", "config", str(_config_with_local_rules(tmp_path)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout and "rules found" in r.stdout  # the rule files were loaded too


def test_promtool_check_rules():
    promtool = need("promtool", "prometheus")
    files = [str(p) for p in sorted((PROM / "rules").glob("*.yml"))]
    assert files
    r = run(promtool, "check", "rules", *files)
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_rule_unit_tests():
    promtool = need("promtool", "prometheus")
    files = [str(p) for p in sorted((PROM / "tests").glob("*.test.yml"))]
    assert files
    r = run(promtool, "test", "rules", *files, cwd=PROM / "tests")
    assert r.returncode == 0, r.stdout + r.stderr


def test_rule_unit_tests_catch_a_broken_rule(tmp_path):
    """Weaken one alert (NodeDown waits 10m instead of 2m): the unit tests must notice."""
    promtool = need("promtool", "prometheus")
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    for f in (PROM / "rules").glob("*.yml"):
        text = f.read_text()
        (tmp_path / "rules" / f.name).write_text(
            re.sub(r"(alert: GpumeshNodeDown\n\s+expr: .*\n\s+for: )2m", r"\g<1>10m", text))
    assert (tmp_path / "rules" / "gpumesh-alerts.yml").read_text() != (PROM / "rules" / "gpumesh-alerts.yml").read_text()
    for f in (PROM / "tests").glob("*.test.yml"):
        shutil.copy(f, tmp_path / "tests" / f.name)
    r = run(promtool, "test", "rules", *[p.name for p in (tmp_path / "tests").glob("*.test.yml")],
            cwd=tmp_path / "tests")
    assert r.returncode != 0 and "GpumeshNodeDown" in r.stdout + r.stderr


def test_every_alert_has_a_firing_unit_test_and_a_runbook():
    alerts = {r["alert"]: r for r in opskit().load_rules() if "alert" in r}
    assert alerts
    fired = set()
    for f in (PROM / "tests").glob("*.test.yml"):
        for t in yaml.safe_load(f.read_text())["tests"]:
            for case in t.get("alert_rule_test", []):
                if case.get("exp_alerts"):
                    fired.add(case["alertname"])
    assert set(alerts) - fired == set(), "alerts without a test where they fire"
    for name, r in alerts.items():
        assert r["labels"]["severity"] in ("critical", "warning", "info"), name
        assert {"summary", "description", "runbook"} <= set(r["annotations"]), name
        assert r["annotations"]["runbook"] == f"docs/dashboards-and-alerts.md#{name.lower()}", name


# ---- metrics used by rules and dashboards exist on a real node ----------------------------------------------
def test_promql_metric_name_extraction():
    names = opskit().promql_metric_names
    assert names('sum by (kind) (rate(a_total{job=~"$job", x="y{z}"}[$__rate_interval])) / on(job) b') == {"a_total", "b"}
    assert names("max_over_time(c[15m]) < 0.8 * max without(instance) (d offset 5m) and e == bool 1e3") == {"c", "d", "e"}
    assert names('histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m])))') == {"h_bucket"}
    with pytest.raises(opskit().PromQLNameError):
        names("rat(a_total[5m])")


def test_alert_rules_use_only_metrics_a_node_exports(exported):
    missing = {}
    for r in opskit().load_rules():
        unknown = opskit().promql_metric_names(r["expr"]) - exported
        if unknown:
            missing[r.get("alert") or r.get("record")] = sorted(unknown)
    assert not missing, f"rules use metrics no node exports: {missing}"


def test_dashboards_use_only_metrics_a_node_exports(exported):
    missing = {}
    files = opskit().dashboard_files()
    assert {p.name for p in files} >= {"mesh-overview.json", "node-detail.json"}
    for path in files:
        for where, expr in opskit().dashboard_queries(json.loads(path.read_text())):
            unknown = opskit().promql_metric_names(expr) - exported
            if unknown:
                missing[where] = sorted(unknown)
    assert not missing, f"panels query metrics no node exports: {missing}"


@pytest.fixture(scope="module")
def labels_of(exported) -> dict[str, set[str]]:
    return opskit().series_labels(opskit().node_families(2)) | {n: set() for n in PROMETHEUS_SYNTHETIC}


def _label_problems(expr: str, legend: str, labels_of: dict[str, set[str]]) -> set[str]:
    names = opskit().promql_metric_names(expr)
    known = set().union(*(labels_of.get(n, set()) for n in names)) | opskit().TARGET_LABELS
    used = opskit().promql_label_refs(expr) | set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend or ""))
    return used - known


def test_labels_used_by_rules_and_panels_exist_on_their_metrics(labels_of):
    problems = {}
    for r in opskit().load_rules():
        bad = _label_problems(r["expr"], "", labels_of)
        if bad:
            problems[r.get("alert")] = sorted(bad)
    for path in opskit().dashboard_files():
        d = json.loads(path.read_text())
        for p in opskit().iter_panels(d):
            for t in p.get("targets", []):
                bad = _label_problems(t["expr"], t.get("legendFormat", ""), labels_of)
                if bad:
                    problems[f"{d['title']} / {p['title']}"] = sorted(bad)
    assert not problems, f"labels that the queried metrics do not have: {problems}"
    # and the check bites
    assert _label_problems('sum by (outcome) (rate(gpumesh_adverts_sent_total[5m]))', "", labels_of) == {"outcome"}


def test_metric_cross_check_can_fail(exported):
    """The check above is not vacuous: a typo in a metric name is caught."""
    assert "gpumesh_peers_known" in exported
    assert opskit().promql_metric_names("max(gpumesh_peer_known)") - exported == {"gpumesh_peer_known"}


# ---- Grafana ------------------------------------------------------------------------------------------------
def _dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in opskit().dashboard_files()}


def test_dashboards_are_what_the_generator_writes():
    pytest.importorskip("grafana_foundation_sdk", reason="pip install grafana-foundation-sdk")
    r = run(sys.executable, str(GRAFANA / "generate.py"), "--check")
    assert r.returncode == 0, r.stderr


def test_dashboards_load_in_the_sdk_dashboard_schema():
    """Decode each file with grafana-foundation-sdk's typed Dashboard model and encode it again: a key the schema
    does not know is dropped and a value of the wrong shape raises, so equality means the JSON fits the schema."""
    pytest.importorskip("grafana_foundation_sdk", reason="pip install grafana-foundation-sdk")
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    for name, d in _dashboards().items():
        back = json.loads(json.dumps(Dashboard.from_json(d), cls=JSONEncoder))
        assert back == d, f"{name} does not round-trip through the SDK's dashboard model"
    mutated = _dashboards()["node-detail.json"]
    mutated["panels"][1]["unknownPanelKey"] = 1
    assert json.loads(json.dumps(Dashboard.from_json(mutated), cls=JSONEncoder)) != mutated


def test_dashboard_structure():
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    ds_uid = ds["datasources"][0]["uid"]
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "gpumesh.yml").read_text())
    compose_grafana = compose()["services"]["grafana"]
    assert f"./grafana/dashboards:{prov['providers'][0]['options']['path']}:ro" in compose_grafana["volumes"]
    uids = set()
    for name, d in _dashboards().items():
        assert d["uid"] not in uids and len(d["uid"]) <= 40
        uids.add(d["uid"])
        variables = {v["name"]: v for v in d["templating"]["list"]}
        assert variables["datasource"]["current"]["value"] == ds_uid, name
        ids = [p["id"] for p in opskit().iter_panels(d)]
        assert len(ids) == len(set(ids)) and 0 not in ids, f"{name}: panel ids must be unique and non-zero"
        cells = set()
        for p in opskit().iter_panels(d):
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, f"{name}/{p.get('title')}: {g}"
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{name}/{p.get('title')} overlaps another panel"
                    cells.add((x, y))
            if p["type"] == "row":
                continue
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p.get("title") and p.get("description"), f"{name}: every panel has a title and a description"
            assert p["targets"], p["title"]
            for t in p["targets"]:
                for var in re.findall(r"\$(?!__)\{?(\w+)", t["expr"]):
                    assert var in variables, f"{name}/{p['title']}: ${var} is not a dashboard variable"
    node = _dashboards()["node-detail.json"]
    assert "instance" in {v["name"] for v in node["templating"]["list"]}
    for p in opskit().iter_panels(node):
        for t in p.get("targets", []):
            assert '$instance' in t["expr"], f"node detail panel {p['title']} is not scoped to $instance"
