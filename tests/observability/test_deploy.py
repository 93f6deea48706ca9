"""deploy/: promtool checks the scrape config and the rules, runs the rule unit tests;
every metric the rules and the Grafana dashboards name is exported by nacf_core.metrics;
the Kubernetes manifests have the guide's probes on the sidecar port."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from nacf_core.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "rules" / "nacf-alerts.yml"
RULE_TESTS = PROM / "tests" / "nacf-alerts.test.yml"
GRAFANA = ROOT / "deploy" / "grafana"
K8S = ROOT / "deploy" / "k8s"

# Series Prometheus itself makes, not the service.
PROMETHEUS_OWN = {"up"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
             "or", "unless", "offset", "inf", "nan"}


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not installed (apt-get install prometheus)"
    return path


def run(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def metric_names(expr: str) -> set[str]:
    """Names of the series a PromQL expression selects (functions and keywords removed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        tail = e[m.end():].lstrip()
        if tail.startswith("("):
            continue  # a function or aggregation
        if m.group().lower() in _KEYWORDS:
            continue
        names.add(m.group())
    return names


def exported_series_names() -> set[str]:
    reg = CollectorRegistry()
    Metrics(reg)
    names = set()
    for fam in reg.collect():
        if fam.type == "histogram":
            names |= {fam.name + s for s in ("_bucket", "_sum", "_count")}
        elif fam.type == "counter":
            names.add(fam.name + "_total")
        else:
            names.add(fam.name)
    return names


def rule_exprs() -> dict[str, str]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for path in sorted(GRAFANA.glob("*.json")):
        doc = json.loads(path.read_text())
        for panel in doc["panels"]:
            for t in panel.get("targets", []):
                out.append((f"{path.name}: {panel['title']}", t["expr"]))
    return out


def test_metric_name_extraction():
    assert metric_names('histogram_quantile(0.95, sum by (le) (rate(a_bucket{x="y(z)"}[5m])))'
                        ) == {"a_bucket"}
    assert metric_names("sum(rate(b_total[5m])) / sum(rate(c_total[5m])) > bool 0.5"
                        ) == {"b_total", "c_total"}
    assert metric_names('up{job="nacfauth-api"} == 0') == {"up"}


SCRAPE_CONFIGS = ("prometheus.yml", "prometheus-k8s.yml")


@pytest.mark.parametrize("name", SCRAPE_CONFIGS)
def test_scrape_config_is_valid(name):
    out = run("check", "config", name)
    assert out.returncode == 0, out.stdout + out.stderr


def _job_label(job: dict) -> str:
    for r in job.get("relabel_configs", []):
        if r.get("target_label") == "job" and "replacement" in r:
            return r["replacement"]
    return job["job_name"]


def test_each_scrape_config_finds_the_replicas_one_way():
    """A scrape config with a static target and Kubernetes DNS discovery side by side:
    in the cluster, its static target (127.0.0.1:9464, the Prometheus pod's own loopback)
    is a replica that is always down, so NACFServiceDown pages for ever; outside it, the
    DNS job finds nothing. One way per file, both environments covered, every config
    scraping job="nacfauth-api" (what the alert rules look for)."""
    found = set()
    for name in sorted(p.name for p in PROM.glob("prometheus*.yml")):
        doc = yaml.safe_load((PROM / name).read_text())
        jobs = [j for j in doc["scrape_configs"] if _job_label(j) == "nacfauth-api"]
        assert jobs, f"{name} scrapes no job=nacfauth-api"
        ways = {k for j in jobs for k in j if k.endswith("_configs")
                and k not in ("relabel_configs", "metric_relabel_configs")}
        assert len(ways) == 1, f"{name} finds the replicas {len(ways)} ways: {sorted(ways)}"
        found |= ways
    assert found == {"static_configs", "dns_sd_configs"}


def test_rules_are_valid():
    out = run("check", "rules", "rules/nacf-alerts.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_rule_unit_tests_pass():
    out = run("test", "rules", "tests/nacf-alerts.test.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_firing_and_a_quiet_test():
    alerts = set(rule_exprs())
    assert {"NACFHighErrorRate", "NACFServiceDown", "NACFDatabaseDown", "NACFLowSuccessRate",
            "NACFHighLatency", "NACFSignalQualityDegraded", "NACFBruteForceDetected",
            "NACFSuspiciousActivity"} <= alerts
    fires, quiet = set(), set()
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert alerts - fires == set(), "alerts without a firing test"
    assert alerts - quiet == set(), "alerts without a quiet test"


def _rule_mutants() -> list[tuple[str, str, dict]]:
    """``(alert, what was changed, rules document)``: each alert with one thing broken
    that its unit tests must notice: its ``for`` dropped, halved or doubled, its
    threshold doubled or halved, a label matcher dropped, ``instance`` added to a
    grouping (one alert per replica instead of per job)."""
    import copy

    doc = yaml.safe_load(RULES.read_text())
    out = []
    for gi, group in enumerate(doc["groups"]):
        for ri, rule in enumerate(group["rules"]):
            def mutant(what: str, **change) -> None:
                d = copy.deepcopy(doc)
                r = d["groups"][gi]["rules"][ri]
                for k, v in change.items():
                    if v is None:
                        r.pop(k)
                    else:
                        r[k] = v
                out.append((rule["alert"], what, d))

            expr, hold = rule["expr"].strip(), rule["for"]
            n, unit = int(hold[:-1]), hold[-1]
            mutant("no for", **{"for": None})
            if n > 1:
                mutant("for halved", **{"for": f"{n // 2}{unit}"})
            mutant("for doubled", **{"for": f"{2 * n}{unit}"})
            m = re.search(r"([0-9.]+)$", expr)
            if m and float(m.group(1)):
                t = float(m.group(1))
                mutant("threshold doubled", expr=f"{expr[:m.start()]}{2 * t:g}")
                mutant("threshold halved", expr=f"{expr[:m.start()]}{t / 2:g}")
            for sel in sorted(set(re.findall(r"\{[^}]*\}", expr))):
                mutant(f"{sel} dropped", expr=expr.replace(sel, ""))
            for by in sorted(set(re.findall(r"by \(([^)]*)\)", expr))):
                mutant(f"by ({by}, instance)",
                       expr=expr.replace(f"by ({by})", f"by ({by}, instance)"))
    return out


@pytest.mark.slow
def test_the_rule_unit_tests_notice_a_broken_rule(tmp_path):
    """Passing unit tests must mean the rules are right: an alert whose ``for``, threshold,
    label matcher or grouping is wrong has to fail one of them. (They fired on a
    synthetic series far past the threshold and were quiet far below it, with no check
    before ``for`` had elapsed: a rule with no ``for``, a doubled threshold, or
    NACFServiceDown without its job matcher, paging for any exporter that is down,
    passed them all.)"""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    shutil.copy(RULE_TESTS, tmp_path / "tests" / RULE_TESTS.name)
    rules = tmp_path / "rules" / RULES.name
    shutil.copy(RULES, rules)
    out = run("test", "rules", f"tests/{RULE_TESTS.name}", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    mutants = _rule_mutants()
    assert len(mutants) >= 40
    survivors = []
    for alert, what, doc in mutants:
        rules.write_text(yaml.safe_dump(doc, sort_keys=False))
        if run("test", "rules", f"tests/{RULE_TESTS.name}", cwd=tmp_path).returncode == 0:
            survivors.append(f"{alert}: {what}")
    assert not survivors, "broken rules the unit tests pass: " + "; ".join(survivors)


def test_the_guide_mistakes_are_fixed_and_commented():
    exprs = rule_exprs()
    text = RULES.read_text()
    # quality: no bare histogram name
    assert "nacfauth_signal_quality_score_sum" in exprs["NACFSignalQualityDegraded"]
    assert "nacfauth_signal_quality_score <" not in exprs["NACFSignalQualityDegraded"]
    # error rate: summed on both sides, gRPC names not HTTP codes
    assert exprs["NACFHighErrorRate"].count("sum by") == 2
    assert "5.." not in exprs["NACFHighErrorRate"] and "INTERNAL" in exprs["NACFHighErrorRate"]
    # brute force: increase over 5 minutes, not a per-second rate
    assert "increase(nacfauth_failed_auth_attempts_total[5m])" in exprs["NACFBruteForceDetected"]
    for alert in ("NACFSignalQualityDegraded", "NACFHighErrorRate", "NACFBruteForceDetected"):
        before = text[: text.index(f"- alert: {alert}")].rsplit("\n\n", 1)[-1]
        assert "Fixed from the guide" in before, f"{alert} lacks its comment"
    # bounded labels only
    assert "ip_address" not in "".join(exprs.values()) and "user_id" not in "".join(exprs.values())


def test_every_metric_in_rules_and_dashboards_is_exported():
    exported = exported_series_names() | PROMETHEUS_OWN
    used = {}
    for alert, expr in rule_exprs().items():
        for name in metric_names(expr):
            used.setdefault(name, []).append(f"rule {alert}")
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    for where, expr in exprs:
        for name in metric_names(expr):
            used.setdefault(name, []).append(where)
    missing = {n: w for n, w in used.items() if n not in exported}
    assert not missing, f"not exported by nacf_core.metrics: {missing}"
    # and the dashboards and rules together cover the METRICS.md table
    for name in ("nacfauth_auth_requests_total", "nacfauth_auth_duration_seconds_bucket",
                 "nacfauth_auth_success_rate", "nacfauth_signal_quality_score_bucket",
                 "nacfauth_active_sessions", "nacfauth_failed_auth_attempts_total",
                 "nacfauth_suspicious_activities_total", "nacfauth_daily_active_users"):
        assert name in used, name


def test_dashboard_queries_are_valid_promql(tmp_path):
    """Each dashboard query, as a recording rule, passes promtool's parser."""
    rules = [{"record": f"nacf:dashboard_query_{i}",
              "expr": expr.replace("$__rate_interval", "5m")}
             for i, (_, expr) in enumerate(dashboard_exprs())]
    f = tmp_path / "dash.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dash", "rules": rules}]}))
    out = run("check", "rules", str(f))
    assert out.returncode == 0, out.stdout + out.stderr


def test_dashboards_have_titles_and_unique_ids():
    titles = set()
    for path in GRAFANA.glob("*.json"):
        doc = json.loads(path.read_text())
        titles.add(doc["title"])
        ids = [p["id"] for p in doc["panels"]]
        assert len(ids) == len(set(ids))
    assert titles == {"NACF Overview", "NACF Security"}


def _k8s_docs() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_k8s_deployment_has_the_guide_probes_on_the_sidecar_port():
    docs = _k8s_docs()
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "Secret"} <= kinds
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    assert dep["spec"]["replicas"] >= 2
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert set(ports) >= {"grpc", "metrics"}
    guide = {
        "livenessProbe": ("/health/live", 30, 10, 5, 3),
        "readinessProbe": ("/health/ready", 5, 5, 3, 3),
        "startupProbe": ("/health/live", 10, 10, 5, 30),
    }
    for probe, (path, delay, period, timeout, failures) in guide.items():
        p = c[probe]
        assert p["httpGet"]["path"] == path
        assert p["httpGet"]["port"] in ("metrics", ports["metrics"])
        assert (p["initialDelaySeconds"], p["periodSeconds"], p["timeoutSeconds"],
                p["failureThreshold"]) == (delay, period, timeout, failures), probe
    env = {e["name"]: e for e in c["env"]}
    for secret_env in ("NACF_STORE_URL", "NACF_API_KEYS", "NACF_TEMPLATE_KEY"):
        assert "secretKeyRef" in env[secret_env]["valueFrom"], secret_env
    # the Service the scrape config finds replicas by
    svc_names = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert "nacf-metrics" in svc_names
    assert "nacf-metrics.nacf.svc.cluster.local" in (PROM / "prometheus-k8s.yml").read_text()


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in K8S.glob("*.yaml")))
def test_k8s_manifests_parse(path):
    for d in yaml.safe_load_all((ROOT / path).read_text()):
        if d:
            assert {"apiVersion", "kind", "metadata"} <= set(d), path


def test_k8s_pod_outlives_the_servers_whole_shutdown():
    """SIGTERM: the server drains for grace_period_s, then waits up to max(5, grace) more
    for handlers gRPC cancelled (NacfServer.stop) before it closes the store and logs
    server_stopped. A pod killed before that (terminationGracePeriodSeconds 30 against
    20 + 20) loses that end and the store's clean close."""
    import tomllib

    docs = _k8s_docs()
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    (toml_text,) = cm["data"].values()
    cfg = tomllib.loads(toml_text)
    grace = float(cfg.get("nacf", cfg)["grace_period_s"])
    budget = grace + max(5.0, grace)
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > budget


def _quantity_bytes(q: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 10 ** 3, "M": 10 ** 6,
             "G": 10 ** 9}
    for u in sorted(units, key=len, reverse=True):
        if q.endswith(u):
            return int(float(q[: -len(u)]) * units[u])
    return int(q)


def test_k8s_memory_limit_holds_the_requests_the_server_admits():
    """nacf serve admits max_concurrent_rpcs unary calls at once, each holding its request
    (up to max_message_bytes) about twice while it is decoded: measured against nacf serve
    with this ConfigMap, 16 Authenticate calls of 16 MiB at once took its peak RSS from
    263 MiB to 778 MiB and 40 (one API key's burst) to 1047 MiB, past the 1 GiB limit: one
    client could have the kubelet OOM-kill every replica in turn. Beside them it serves
    max_streams open streams, each on a thread of its own, each holding up to four of its
    messages (two read ahead, one in its reader's hands, one being decided). The limit
    must hold the idle process (under 300 MiB), max_concurrent_rpcs requests of the
    largest size admitted twice over and max_streams streams of four such messages."""
    import tomllib

    from nacf_core.config import Config

    docs = _k8s_docs()
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    (toml_text,) = cm["data"].values()
    cfg = tomllib.loads(toml_text)
    defaults = Config()
    rpcs = int(cfg.get("max_concurrent_rpcs", defaults.max_concurrent_rpcs))
    streams = int(cfg.get("max_streams", defaults.max_streams))
    size = int(cfg.get("max_message_bytes", defaults.max_message_bytes))
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    limit = _quantity_bytes(c["resources"]["limits"]["memory"])
    need = 300 * (1 << 20) + rpcs * 2 * size + streams * 4 * size
    assert limit >= need, (f"memory limit {limit >> 20} MiB < {need >> 20} MiB: 300 MiB + "
                           f"{rpcs} calls x 2 x {size >> 20} MiB + {streams} streams x 4 x "
                           f"{size >> 20} MiB")

