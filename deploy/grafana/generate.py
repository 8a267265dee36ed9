#!/usr/bin/env python3
"""Generate the gpumesh Grafana dashboards with grafana-foundation-sdk.

    .venv/bin/python deploy/grafana/generate.py           # (re)write deploy/grafana/dashboards/*.json
    .venv/bin/python deploy/grafana/generate.py --check   # exit 1 if a committed file differs from the code

The JSON files are committed (Grafana's file provisioning reads them; operators need no Python). Every panel
queries only metrics a real node exports: tests/test_deploy.py scrapes a running node and compares, checks that
the files are what this script generates, and loads each into the SDK's dashboard model.

The SDK is pinned to its Grafana 10.4 flavour (grafana-foundation-sdk==1769699796!10.4.0), the Grafana that
deploy/docker-compose.yml runs; another SDK version may write different (equivalent) JSON.

Dashboards share a `datasource` variable (default: the provisioned "gpumesh-prometheus") and a `job` variable,
so they also work when imported into another Grafana with a differently named Prometheus.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

OUT_DIR = Path(__file__).resolve().parent / "dashboards"
DATASOURCE_UID = "gpumesh-prometheus"  # deploy/grafana/provisioning/datasources/prometheus.yml
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
J = 'job=~"$job"'  # every query is scoped to the chosen scrape job(s)
RATE = "$__rate_interval"


# ---- small vocabulary over the SDK builders ------------------------------------------------------------------
def q(expr: str, legend: str = "", *, instant: bool = False, table_fmt: bool = False) -> prom.Dataquery:
    t = prom.Dataquery().expr(expr).datasource(DS)
    if legend:
        t = t.legend_format(legend)
    if instant:
        t = t.instant()
    else:
        t = t.range()
    if table_fmt:
        t = t.format(pm.PromQueryFormat.TABLE)
    return t


def _with_refs(panel, targets: list[prom.Dataquery]):
    for i, t in enumerate(targets):
        panel = panel.with_target(t.ref_id(chr(ord("A") + i)))
    return panel


def ts(title: str, description: str, targets: list[prom.Dataquery], *, unit: str = "short", w: int = 12,
       h: int = 8, stacked: bool = False, min_zero: bool = True) -> timeseries.Panel:
    p = (timeseries.Panel().title(title).description(description).datasource(DS).unit(unit).span(w).height(h)
         .line_width(1).fill_opacity(10 if not stacked else 40).show_points(cm.VisibilityMode.NEVER)
         .legend(cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.LIST)
                 .placement(cm.LegendPlacement.BOTTOM).show_legend(True))
         .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)))
    if min_zero:
        p = p.min(0)
    if stacked:
        p = p.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
    return _with_refs(p, targets)


def st(title: str, description: str, target: prom.Dataquery, *, unit: str = "short", w: int = 4, h: int = 4,
       red_below: float | None = None, red_above: float | None = None) -> stat.Panel:
    steps = [dm.Threshold(value=None, color="green")]
    if red_below is not None:
        steps = [dm.Threshold(value=None, color="red"), dm.Threshold(value=red_below, color="green")]
    if red_above is not None:
        steps.append(dm.Threshold(value=red_above, color="red"))
    p = (stat.Panel().title(title).description(description).datasource(DS).unit(unit).span(w).height(h)
         .graph_mode(cm.BigValueGraphMode.AREA).color_mode(cm.BigValueColorMode.VALUE)
         .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
         .thresholds(db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(steps)))
    return _with_refs(p, [target])


def tbl(title: str, description: str, targets: list[prom.Dataquery], *, w: int = 12, h: int = 8,
        hide: tuple[str, ...] = ("Time", "__name__", "job")) -> table.Panel:
    p = (table.Panel().title(title).description(description).datasource(DS).span(w).height(h)
         .show_header(True).cell_height(cm.TableCellHeight.SM)
         .with_transformation(dm.DataTransformerConfig(
             id_val="organize", options={"excludeByName": {k: True for k in hide}})))
    return _with_refs(p, targets)


def variables(node_var: bool = False) -> list:
    out = [
        db.DatasourceVariable("datasource").label("Data source").type("prometheus")
        .current(dm.VariableOption(selected=True, text="Prometheus (gpumesh)", value=DATASOURCE_UID)),
        db.QueryVariable("job").label("Job").datasource(DS)
        .query({"query": "label_values(gpumesh_build_info, job)", "refId": "job"})
        .refresh(dm.VariableRefresh.ON_DASHBOARD_LOAD).sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True).include_all(True).all_value(".+")
        .current(dm.VariableOption(selected=True, text="gpumesh", value="gpumesh")),
    ]
    if node_var:
        out.append(
            db.QueryVariable("instance").label("Node").datasource(DS)
            .query({"query": 'label_values(gpumesh_build_info{job=~"$job"}, instance)', "refId": "instance"})
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC))
    return out


def dashboard(uid: str, title: str, description: str, rows: list[tuple[str, list]], *, node_var: bool = False):
    d = (db.Dashboard(title).uid(uid).description(description).tags(["gpumesh"]).editable()
         .tooltip(dm.DashboardCursorSync.CROSSHAIR).time("now-1h", "now").refresh("30s").timezone("browser")
         .variables(variables(node_var))
         .link(db.DashboardLink("gpumesh").type(dm.DashboardLinkType.DASHBOARDS).tags(["gpumesh"])
               .as_dropdown(True).include_vars(True).keep_time(True)))
    for title_, panels in rows:
        d = d.with_row(db.Row(title_))
        for p in panels:
            d = d.with_panel(p)
    model = d.build()
    for i, panel in enumerate(model.panels or [], 1):  # stable, unique panel ids (links and alerts use them)
        panel.id_val = i
    return model


# ---- the dashboards ------------------------------------------------------------------------------------------
def mesh_overview():
    return dashboard(
        "gpumesh-overview", "gpumesh / Mesh overview",
        "Who is in the mesh, what it can compute, how healthy its gossip is. Mesh-wide gauges are each node's "
        "own view, so they are shown as the max over nodes.",
        [
            ("Mesh", [
                st("Nodes up", "Nodes Prometheus scrapes successfully.",
                   q(f'count(up{{{J}}} == 1)', instant=True), red_below=1),
                st("Nodes in view", "Largest membership view (self included).",
                   q(f"max(gpumesh_peers_known{{{J}}}) + 1", instant=True), red_below=1),
                st("Devices", "Compute devices in the mesh (largest view).",
                   q(f"sum(max by (kind) (gpumesh_mesh_devices{{{J}}}))", instant=True)),
                st("Free slots", "Job slots free in the mesh (largest view).",
                   q(f"sum(max by (kind) (gpumesh_mesh_free_slots{{{J}}}))", instant=True), red_below=1),
                st("Nodes down", "Scrape targets that do not answer.",
                   q(f'count(up{{{J}}} == 0) or vector(0)', instant=True), red_above=1),
                st("Software versions", "Distinct versions running (more than one during an upgrade).",
                   q(f"count(count by (version) (gpumesh_build_info{{{J}}}))", instant=True), red_above=2),
            ]),
            ("Capacity", [
                ts("Devices by kind", "Devices in the mesh by kind (gpu, cpu, accelerator), largest view.",
                   [q(f"max by (kind) (gpumesh_mesh_devices{{{J}}})", "{{kind}}")], stacked=True, w=8),
                ts("Free slots by kind", "Free job slots by device kind, largest view.",
                   [q(f"max by (kind) (gpumesh_mesh_free_slots{{{J}}})", "{{kind}}")], stacked=True, w=8),
                ts("Peers in each node's view", "Peers each node knows (self excluded). Nodes that disagree "
                   "for long point at partitions or a blocked port.",
                   [q(f"gpumesh_peers_known{{{J}}}", "{{instance}}")], w=8),
            ]),
            ("Gossip", [
                ts("Adverts sent / received", "Capacity adverts published and accepted, per second, mesh total.",
                   [q(f"sum(rate(gpumesh_adverts_sent_total{{{J}}}[{RATE}]))", "sent"),
                    q(f"sum(rate(gpumesh_adverts_received_total{{{J}}}[{RATE}]))", "received")], unit="ops"),
                ts("Adverts rejected by reason", "Adverts dropped: malformed, signature, oversized, version, "
                   "stale, not_admitted. Anything but stale deserves a look.",
                   [q(f"sum by (reason) (rate(gpumesh_adverts_rejected_total{{{J}}}[{RATE}]))", "{{reason}}")],
                   unit="ops"),
                ts("Membership events", "Join / update / leave events in the nodes' views, per second.",
                   [q(f"sum by (event) (rate(gpumesh_membership_events_total{{{J}}}[{RATE}]))", "{{event}}"),
                    q(f"sum(rate(gpumesh_adverts_expired_total{{{J}}}[{RATE}]))", "expired")], unit="ops"),
                ts("libp2p connections", "Open libp2p connections per node.",
                   [q(f"gpumesh_libp2p_connected_peers{{{J}}}", "{{instance}}")]),
                ts("Gossip publish errors", "Advert publishes that raised, per second, per node.",
                   [q(f"rate(gpumesh_gossip_publish_errors_total{{{J}}}[{RATE}])", "{{instance}}")], unit="ops"),
                ts("Adverts caught lying", "Adverts whose claims did not hold: replayed stale sequences, free "
                   "slots that claims never found. The peer's standing drops.",
                   [q(f"sum by (kind) (rate(gpumesh_advert_lies_total{{{J}}}[{RATE}]))", "{{kind}}")], unit="ops"),
                ts("Admission refusals", "Connections refused because the peer lacks the mesh key or is not on "
                   "the allow list, by plane (libp2p, data plane).",
                   [q(f"sum by (plane) (rate(gpumesh_peers_refused_total{{{J}}}[{RATE}]))", "{{plane}}")],
                   unit="ops"),
                tbl("Peer standing (lowest rating any node gives)", "1 = trusted, 0 = never placed on. "
                    "Falls when results fail verification or adverts lie.",
                    [q(f"min by (peer) (gpumesh_peer_standing{{{J}}})", instant=True, table_fmt=True)]),
            ]),
        ])


def node_detail():
    N = f'{J}, instance="$instance"'
    return dashboard(
        "gpumesh-node", "gpumesh / Node detail",
        "One node: its devices and calibration, its view of the mesh, its gossip and its process.",
        [
            ("Node", [
                st("Up", "1 when Prometheus scrapes the node.", q(f"up{{{N}}}", instant=True), red_below=1),
                st("Peers known", "Peers in this node's view (self excluded).",
                   q(f"gpumesh_peers_known{{{N}}}", instant=True)),
                st("libp2p connections", "Open libp2p connections.",
                   q(f"gpumesh_libp2p_connected_peers{{{N}}}", instant=True)),
                st("Devices offered", "OpenCL devices this node offers.",
                   q(f"gpumesh_devices{{{N}}}", instant=True)),
                st("Discovery problem", "1 while device discovery reports a problem (see the node's log).",
                   q(f"gpumesh_device_discovery_problem{{{N}}}", instant=True), red_above=1),
                st("Resident memory", "Resident memory of the node process.",
                   q(f"process_resident_memory_bytes{{{N}}}", instant=True), unit="bytes"),
            ]),
            ("Devices", [
                tbl("Devices", "Devices this node offers, with their identity labels.",
                    [q(f"gpumesh_device_info{{{N}}}", instant=True, table_fmt=True)], w=24, h=6,
                    hide=("Time", "__name__", "job", "instance", "Value")),
                ts("Global memory", "Global memory of each device.",
                   [q(f"gpumesh_device_global_memory_bytes{{{N}}}", "{{device}}")], unit="bytes", w=6),
                ts("Compute units", "Compute units of each device.",
                   [q(f"gpumesh_device_compute_units{{{N}}}", "{{device}}")], w=6),
                ts("Calibration: Goldilocks mul-mod", "Calibrated 64-bit modular multiplications per second.",
                   [q(f"gpumesh_device_goldilocks_mulmod_ops_per_second{{{N}}}", "{{device}}")], unit="ops", w=6),
                ts("Calibration: fp32", "Calibrated float32 FMA throughput (flops).",
                   [q(f"gpumesh_device_fp32_flops_per_second{{{N}}}", "{{device}}")], unit="flops", w=6),
            ]),
            ("Gossip and view", [
                ts("Adverts", "Adverts this node published, accepted, and peers it expired, per second.",
                   [q(f"rate(gpumesh_adverts_sent_total{{{N}}}[{RATE}])", "sent"),
                    q(f"rate(gpumesh_adverts_received_total{{{N}}}[{RATE}])", "received"),
                    q(f"rate(gpumesh_adverts_expired_total{{{N}}}[{RATE}])", "expired")], unit="ops", w=8),
                ts("Adverts rejected", "Adverts this node dropped, by reason.",
                   [q(f"rate(gpumesh_adverts_rejected_total{{{N}}}[{RATE}])", "{{reason}}")], unit="ops", w=8),
                ts("Peers and connections", "Peers in the view and open libp2p connections.",
                   [q(f"gpumesh_peers_known{{{N}}}", "peers known"),
                    q(f"gpumesh_libp2p_connected_peers{{{N}}}", "libp2p connections")], w=8),
                tbl("Standing of peers, as this node rates them", "1 = trusted, 0 = never placed on.",
                    [q(f"gpumesh_peer_standing{{{N}}}", instant=True, table_fmt=True)],
                    hide=("Time", "__name__", "job", "instance"), w=24, h=6),
            ]),
            ("Executor", [
                ts("Jobs finished", "Jobs this node's executor finished, by outcome, per second.",
                   [q(f"sum by (outcome) (rate(gpumesh_executor_jobs_total{{{N}}}[{RATE}]))", "{{outcome}}")],
                   unit="ops", w=8),
                ts("Slots by device", "Running jobs, queued jobs and free slots on each device.",
                   [q(f"gpumesh_executor_running_jobs{{{N}}}", "running {{device}}"),
                    q(f"gpumesh_executor_queue_depth{{{N}}}", "queued {{device}}"),
                    q(f"gpumesh_executor_free_slots{{{N}}}", "free {{device}}")], w=8),
                ts("Queue wait by priority class", "Admission to first start, p50 and p99.",
                   p_quantiles("gpumesh_executor_queue_wait_seconds", "priority", scope=N), unit="s", w=8),
            ]),
            ("Data plane", [
                ts("Bytes per second by peer", "Data-plane bytes this node sends to and receives from each peer.",
                   [q(f"sum by (peer) (rate(gpumesh_transport_sent_bytes_total{{{N}}}[{RATE}]))", "out {{peer}}"),
                    q(f"sum by (peer) (rate(gpumesh_transport_received_bytes_total{{{N}}}[{RATE}]))",
                      "in {{peer}}")], unit="Bps", w=8),
                ts("Connections and streams", "Open data-plane connections and streams, by direction.",
                   [q(f"gpumesh_transport_connections_open{{{N}}}", "connections {{direction}}"),
                    q(f"gpumesh_transport_streams_open{{{N}}}", "streams {{direction}}")], w=8),
                ts("Round trip by peer", "Last keepalive round trip to each peer.",
                   [q(f"gpumesh_transport_rtt_seconds{{{N}}}", "{{peer}}")], unit="s", w=8),
            ]),
            ("Process", [
                ts("CPU", "CPU time used by the node process (1 = one core).",
                   [q(f"rate(process_cpu_seconds_total{{{N}}}[{RATE}])", "cpu")], unit="percentunit", w=8),
                ts("Memory", "Resident and virtual memory of the node process.",
                   [q(f"process_resident_memory_bytes{{{N}}}", "resident")], unit="bytes", w=8),
                ts("Open file descriptors", "Sockets and files the node holds open, and its limit.",
                   [q(f"process_open_fds{{{N}}}", "open"), q(f"process_max_fds{{{N}}}", "limit")], w=8),
            ]),
        ], node_var=True)


def p_quantiles(metric: str, by: str, scope: str = J, qs: tuple[float, ...] = (0.5, 0.99)) -> list:
    return [q(f"histogram_quantile({x}, sum by (le, {by}) (rate({metric}_bucket{{{scope}}}[{RATE}])))",
              f"p{int(x * 100)} {{{{{by}}}}}") for x in qs]


def jobs():
    EX = "gpumesh_executor"
    return dashboard(
        "gpumesh-jobs", "gpumesh / Jobs",
        "Jobs end to end as their coordinators see them (submitted, outcomes, latency per priority class, "
        "retries, verification rejects, claims, deadline misses), then as the workers' executors run them "
        "(queue wait, run time, slots), and raw compute jobs.",
        [
            ("Coordinators: end to end", [
                st("Submitted /s", "Jobs accepted by coordinators, per second.",
                   q(f"sum(rate(gpumesh_jobs_submitted_total{{{J}}}[{RATE}]))", instant=True), unit="ops"),
                st("Failure ratio", "Jobs that ended failed over all that ended, last 10 minutes (after retries).",
                   q(f'sum(rate(gpumesh_jobs_finished_total{{{J}, state="failed"}}[10m])) / '
                     f"sum(rate(gpumesh_jobs_finished_total{{{J}}}[10m]))", instant=True), unit="percentunit",
                   red_above=0.1),
                st("Active jobs", "Jobs held by coordinators and not finished.",
                   q(f"sum(gpumesh_jobs_active{{{J}}})", instant=True)),
                st("Queued at coordinators", "Jobs waiting at a coordinator for capacity.",
                   q(f"sum(gpumesh_coordinator_queued_jobs{{{J}}})", instant=True)),
                st("Deadline misses (1h)", "Accepted realtime jobs that missed their deadline.",
                   q(f"sum(increase(gpumesh_deadline_misses_total{{{J}}}[1h]))", instant=True), red_above=1),
                st("Retries (1h)", "Attempts lost and placed again.",
                   q(f"sum(increase(gpumesh_job_retries_total{{{J}}}[1h]))", instant=True)),
                ts("Submitted by priority class", "Jobs accepted per second.",
                   [q(f"sum by (priority) (rate(gpumesh_jobs_submitted_total{{{J}}}[{RATE}]))", "{{priority}}")],
                   unit="ops", w=8),
                ts("Finished by state", "done / failed / cancelled, per second.",
                   [q(f"sum by (state) (rate(gpumesh_jobs_finished_total{{{J}}}[{RATE}]))", "{{state}}")],
                   unit="ops", w=8),
                ts("Active jobs by state", "Jobs held by coordinators, by lifecycle state.",
                   [q(f"sum by (state) (gpumesh_jobs_active{{{J}}})", "{{state}}")], w=8),
                ts("End-to-end latency by priority class", "Submission to final state, p50 and p99.",
                   p_quantiles("gpumesh_job_latency_seconds", "priority"), unit="s", w=8),
                ts("Queue wait by priority class", "Submission to start of the attempt that ran it, p50 and p99.",
                   p_quantiles("gpumesh_job_queue_wait_seconds", "priority"), unit="s", w=8),
                ts("Run time by priority class", "Start to result of the attempt that finished, p50 and p99.",
                   p_quantiles("gpumesh_job_run_seconds", "priority"), unit="s", w=8),
            ]),
            ("Coordinators: faults and pressure", [
                ts("Retries by reason", "Attempts lost and placed again: worker lost, lease or advert expired, "
                   "retryable error, verification.",
                   [q(f"sum by (reason) (rate(gpumesh_job_retries_total{{{J}}}[{RATE}]))", "{{reason}}")],
                   unit="ops", w=8),
                ts("Verification rejects", "Results that failed the coordinator's verification (placed again), "
                   "and render spot-checks by outcome, per second.",
                   [q(f'sum(rate(gpumesh_job_retries_total{{{J}, reason="verification"}}[{RATE}]))', "rejected"),
                    q(f"sum by (outcome) (rate(gpumesh_render_tiles_verified_total{{{J}}}[{RATE}]))",
                      "render spot-check {{outcome}}")], unit="ops", w=8),
                ts("Deadline misses", "Accepted realtime jobs that missed their deadline, per second.",
                   [q(f"sum(rate(gpumesh_deadline_misses_total{{{J}}}[{RATE}]))", "misses")], unit="ops", w=8),
                ts("Claims by outcome", "Offers to workers: accepted, rejected (no room), timeout, stale.",
                   [q(f"sum by (outcome) (rate(gpumesh_claims_total{{{J}}}[{RATE}]))", "{{outcome}}")],
                   unit="ops", w=8),
                ts("Refused at submit", "Submissions refused at once: saturated, no match, deadline, invalid...",
                   [q(f"sum by (reason) (rate(gpumesh_jobs_refused_total{{{J}}}[{RATE}]))", "{{reason}}"),
                    q(f"sum by (limit) (rate(gpumesh_quota_refusals_total{{{J}}}[{RATE}]))", "quota: {{limit}}")],
                   unit="ops", w=8),
                ts("Results dropped", "Late duplicates and results of stale attempts, not delivered.",
                   [q(f"sum by (reason) (rate(gpumesh_results_dropped_total{{{J}}}[{RATE}]))", "{{reason}}")],
                   unit="ops", w=8),
                ts("Placement decision time", "Time to rank the candidates for one job, p50 and p99.",
                   [q(f"histogram_quantile({x}, sum by (le) (rate(gpumesh_placement_decision_seconds_bucket"
                      f"{{{J}}}[{RATE}])))", f"p{int(x * 100)}") for x in (0.5, 0.99)], unit="s", w=8),
                ts("Offers answered by workers", "Offers received by workers, by answer, and cancels that reached "
                   "a job a worker held.",
                   [q(f"sum by (answer) (rate(gpumesh_worker_offers_total{{{J}}}[{RATE}]))", "{{answer}}"),
                    q(f"sum(rate(gpumesh_worker_cancels_total{{{J}}}[{RATE}]))", "cancels")],
                   unit="ops", w=8),
                ts("Jobs under lease by worker", "Jobs each worker holds under lease.",
                   [q(f"gpumesh_worker_claimed_jobs{{{J}}}", "{{instance}}")], w=8),
                ts("Active jobs by API token", "Unfinished jobs per client token (top 10), what quotas count.",
                   [q(f"topk(10, sum by (token) (gpumesh_token_active_jobs{{{J}}}))", "{{token}}")], w=24),
            ]),
            ("Executors: devices", [
                ts("Jobs finished by outcome", "Jobs the executors finished: done / failed / cancelled, per second.",
                   [q(f"sum by (outcome) (rate({EX}_jobs_total{{{J}}}[{RATE}]))", "{{outcome}}")], unit="ops",
                   w=8),
                ts("Jobs finished by kind", "Per job kind, per second.",
                   [q(f"sum by (kind) (rate({EX}_jobs_total{{{J}}}[{RATE}]))", "{{kind}}")], unit="ops", w=8),
                ts("Device queue wait by priority class", "Admission on the device to first start, p50 and p99.",
                   p_quantiles(f"{EX}_queue_wait_seconds", "priority"), unit="s", w=8),
                ts("Run time by kind", "First start to end on a device, p50 and p99.",
                   p_quantiles(f"{EX}_run_seconds", "kind"), unit="s", w=8),
                ts("Refused by executors", "Jobs an executor refused (queue full, deadline, invalid...).",
                   [q(f"sum by (reason) (rate({EX}_refused_total{{{J}}}[{RATE}]))", "{{reason}}"),
                    q(f"sum(rate({EX}_deadline_misses_total{{{J}}}[{RATE}]))", "deadline misses")],
                   unit="ops", w=8),
                ts("Preemptions", "Running batch/interactive jobs that gave their slot to a more urgent one.",
                   [q(f"sum(rate({EX}_preemptions_total{{{J}}}[{RATE}]))", "preemptions")], unit="ops", w=8),
                ts("Queue depth by node", "Jobs waiting for a device slot, per node.",
                   [q(f"sum by (instance) ({EX}_queue_depth{{{J}}})", "{{instance}}")], w=8),
                ts("Running jobs by node", "Jobs holding a slot, per node.",
                   [q(f"sum by (instance) ({EX}_running_jobs{{{J}}})", "{{instance}}")], w=8),
                ts("Free slots by node", "Slots not held by a job, per node.",
                   [q(f"sum by (instance) ({EX}_free_slots{{{J}}})", "{{instance}}")], w=8),
            ]),
            ("Raw compute jobs", [
                ts("Compute jobs by outcome", "compute.opencl jobs: ok, spec/build/kernel/memory/device errors, "
                   "time limit, cancelled.",
                   [q(f"sum by (outcome) (rate(gpumesh_compute_jobs_total{{{J}}}[{RATE}]))", "{{outcome}}")],
                   unit="ops", w=8),
                ts("Kernel device time", "Device time of a compute job's kernels, p50 and p99.",
                   [q(f"histogram_quantile({x}, sum by (le) (rate(gpumesh_compute_kernel_seconds_bucket"
                      f"{{{J}}}[{RATE}])))", f"p{int(x * 100)}") for x in (0.5, 0.99)], unit="s", w=8),
                ts("Program builds", "Compute programs compiled and found in the build cache, per second; "
                   "devices in quarantine.",
                   [q(f"sum(rate(gpumesh_compute_build_cache_misses_total{{{J}}}[{RATE}]))", "compiled"),
                    q(f"sum(rate(gpumesh_compute_build_cache_hits_total{{{J}}}[{RATE}]))", "cache hits"),
                    q(f"sum(gpumesh_compute_quarantined_devices{{{J}}})", "quarantined devices"),
                    q(f"sum(rate(gpumesh_compute_quarantines_total{{{J}}}[{RATE}]))", "quarantines /s")], w=8),
                ts("Compute transfers", "Bytes uploaded to and read back from devices, per second.",
                   [q(f"sum(rate(gpumesh_compute_bytes_in_total{{{J}}}[{RATE}]))", "to devices"),
                    q(f"sum(rate(gpumesh_compute_bytes_out_total{{{J}}}[{RATE}]))", "from devices")],
                   unit="Bps", w=8),
                ts("Kernel launches and build time", "Kernel launches per second; program build time p99.",
                   [q(f"sum(rate(gpumesh_compute_launches_total{{{J}}}[{RATE}]))", "launches /s"),
                    q(f"histogram_quantile(0.99, sum by (le) (rate(gpumesh_compute_build_seconds_bucket"
                      f"{{{J}}}[{RATE}])))", "build p99 (s)")], w=8),
            ]),
            ("Rendering and proofs", [
                ts("Frames and tiles rendered", "Frames or tiles workers rendered, by path (opencl or reference).",
                   [q(f"sum by (path) (rate(gpumesh_render_tiles_rendered_total{{{J}}}[{RATE}]))", "{{path}}")],
                   unit="ops", w=8),
                ts("Render time by device", "Render time of one frame or tile, p50 and p99.",
                   p_quantiles("gpumesh_render_device_seconds", "device"), unit="s", w=8),
                ts("Scene cache", "Scene cache lookups and evictions per second; scenes cached.",
                   [q(f"sum by (event) (rate(gpumesh_render_scene_cache_total{{{J}}}[{RATE}]))", "{{event}}"),
                    q(f"sum(gpumesh_render_scenes_cached{{{J}}})", "scenes cached")], w=8),
                ts("Proofs", "Proofs generated, verified and rejected, per second.",
                   [q(f"sum by (event) (rate(gpumesh_zk_proofs_total{{{J}}}[{RATE}]))", "{{event}}")],
                   unit="ops", w=8),
                ts("Prove and verify time", "Time to generate and to verify a proof, p50 and p99.",
                   [q(f"histogram_quantile({x}, sum by (le) (rate(gpumesh_zk_{w}_seconds_bucket{{{J}}}[{RATE}])))",
                      f"{w} p{int(x * 100)}") for w in ("prove", "verify") for x in (0.5, 0.99)], unit="s", w=16),
            ]),
        ])


def transport():
    T = "gpumesh_transport"
    return dashboard(
        "gpumesh-transport", "gpumesh / Transport",
        "The bigtcp data plane: throughput, connections and streams, errors, flow-control blocking, round "
        "trips, and the client API's requests.",
        [
            ("Throughput", [
                ts("Bytes per second", "Bytes written to and read from data-plane connections, mesh total.",
                   [q(f"sum(rate({T}_sent_bytes_total{{{J}}}[{RATE}]))", "sent"),
                    q(f"sum(rate({T}_received_bytes_total{{{J}}}[{RATE}]))", "received")], unit="Bps", w=8),
                ts("Frames per second", "Frames written and read, mesh total.",
                   [q(f"sum(rate({T}_sent_frames_total{{{J}}}[{RATE}]))", "sent"),
                    q(f"sum(rate({T}_received_frames_total{{{J}}}[{RATE}]))", "received")], unit="ops", w=8),
                ts("Sent by node", "Bytes per second each node writes.",
                   [q(f"sum by (instance) (rate({T}_sent_bytes_total{{{J}}}[{RATE}]))", "{{instance}}")],
                   unit="Bps", w=8),
            ]),
            ("Connections and streams", [
                ts("Open connections", "Open data-plane connections by direction, mesh total.",
                   [q(f"sum by (direction) ({T}_connections_open{{{J}}})", "{{direction}}")], w=8),
                ts("Open streams", "Open streams, by who opened them.",
                   [q(f"sum by (direction) ({T}_streams_open{{{J}}})", "{{direction}}")], w=8),
                ts("Connections established and lost", "New connections per second, and connections that ended "
                   "without a clean close, by reason.",
                   [q(f"sum by (direction) (rate({T}_connections_total{{{J}}}[{RATE}]))", "new {{direction}}"),
                    q(f"sum by (reason) (rate({T}_connections_lost_total{{{J}}}[{RATE}]))", "lost: {{reason}}")],
                   unit="ops", w=8),
            ]),
            ("Errors and back-pressure", [
                ts("Handshake failures", "Connections refused or failed before use, by reason (peer id "
                   "mismatch, missing identity, TLS, timeout...).",
                   [q(f"sum by (reason) (rate({T}_handshake_failures_total{{{J}}}[{RATE}]))", "{{reason}}")],
                   unit="ops", w=8),
                ts("Protocol errors", "Connections killed by a peer's protocol error, by kind.",
                   [q(f"sum by (kind) (rate({T}_protocol_errors_total{{{J}}}[{RATE}]))", "{{kind}}")],
                   unit="ops", w=8),
                ts("Stream resets", "Streams reset, by who reset them.",
                   [q(f"sum by (by) (rate({T}_stream_resets_total{{{J}}}[{RATE}]))", "{{by}}")], unit="ops", w=8),
                ts("Flow-control blocking", "Seconds per second senders waited for credit, per node (1 = a "
                   "sender blocked all the time).",
                   [q(f"sum by (instance) (rate({T}_flow_control_blocked_seconds_total{{{J}}}[{RATE}]))",
                      "{{instance}}")], unit="s", w=12),
                ts("Keepalive round trip", "Slowest and average last round trip to a peer, per node.",
                   [q(f"max by (instance) ({T}_rtt_seconds{{{J}}})", "max {{instance}}"),
                    q(f"avg by (instance) ({T}_rtt_seconds{{{J}}})", "avg {{instance}}")], unit="s", w=12),
            ]),
            ("Client API", [
                ts("Requests by method and code", "RPC requests served per second.",
                   [q(f"sum by (method, code) (rate(gpumesh_dataplane_rpc_requests_total{{{J}}}[{RATE}]))",
                      "{{method}} {{code}}")], unit="ops"),
                ts("Request duration by method", "Time to serve a request, p50 and p99.",
                   p_quantiles("gpumesh_dataplane_rpc_duration_seconds", "method"), unit="s"),
            ]),
        ])


# Defined, but generated only once a running node exports their metrics (tests/test_deploy.py checks the
# metrics of every generated dashboard against a real scrape): move them into DASHBOARDS then.
PENDING: dict = {}

DASHBOARDS = {
    "mesh-overview.json": mesh_overview,
    "jobs.json": jobs,
    "transport.json": transport,
    "node-detail.json": node_detail,
}


def render(build) -> str:
    return json.dumps(json.loads(json.dumps(build(), cls=JSONEncoder)), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    args = ap.parse_args(argv)
    stale = []
    args.out.mkdir(parents=True, exist_ok=True)
    for name, build in DASHBOARDS.items():
        text = render(build)
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    extra = sorted(p.name for p in args.out.glob("*.json") if p.name not in DASHBOARDS)
    if stale or (args.check and extra):
        print(f"out of date: {', '.join(stale)}; not generated here: {', '.join(extra)}; "
              f"run {Path(__file__).name} to regenerate", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
