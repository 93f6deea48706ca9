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
    threshold doubled or halved, a label matcher dropped, one alternative of a regex
    matcher left out, ``instance`` or one of the
    metric's own labels added to a grouping (one alert per replica instead of per job,
    per reason or severity instead of over them)."""
    import copy

    doc = yaml.safe_load(RULES.read_text())
    own = _exported_labels()
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
            # one alternative of a regex matcher left out (a status, a method)
            for m in sorted(set(re.findall(r'[a-z_]+(?:=~|!~)"[^"]*\|[^"]*"', expr))):
                head, alts = m.split('"', 1)[0], m.split('"')[1].split("|")
                for drop in alts:
                    rest = "|".join(a for a in alts if a != drop)
                    mutant(f"{drop} left out of {head}", expr=expr.replace(m, f'{head}"{rest}"'))
            for by in sorted(set(re.findall(r"by \(([^)]*)\)", expr))):
                mutant(f"by ({by}, instance)",
                       expr=expr.replace(f"by ({by})", f"by ({by}, instance)"))
                # one more of the metric's own labels kept apart: the rule no longer sums
                # over it (per reason, per severity, per method, ...)
                grouped = {x.strip() for x in by.split(",")}
                for label in sorted(set().union(*(own.get(n, ()) for n in metric_names(expr)))
                                    - grouped):
                    mutant(f"by ({by}, {label})",
                           expr=expr.replace(f"by ({by})", f"by ({by}, {label})"))
    return out


def _exported_labels() -> dict[str, tuple[str, ...]]:
    """``{series name: label names}`` of every series nacf_core.metrics exports (a
    histogram's ``_bucket`` without ``le``)."""
    from prometheus_client.metrics import MetricWrapperBase

    out = {}
    reg = CollectorRegistry()
    metrics = Metrics(reg)
    metrics.observe_rpc("Authenticate", "OK", 0.01, "api_key")  # the success rate's sample
    for fam in reg.collect():  # collectors of their own (the success rate)
        for sample in fam.samples:
            out.setdefault(sample.name, tuple(k for k in sample.labels if k != "le"))
    for m in vars(metrics).values():
        if isinstance(m, MetricWrapperBase):
            base = m._name
            names = {"counter": [base + "_total"], "histogram": [
                base + s for s in ("_bucket", "_sum", "_count")]}.get(m._type, [base])
            for n in names:
                out[n] = tuple(m._labelnames)
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
    for handlers gRPC cancelled (NacfServer.stop) and up to 3 s for the sidecar's
    connections before it closes the store and logs server_stopped. A pod killed before
    that (terminationGracePeriodSeconds 30 against 20 + 20) loses that end and the
    store's clean close."""
    import tomllib

    docs = _k8s_docs()
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    (toml_text,) = cm["data"].values()
    cfg = tomllib.loads(toml_text)
    grace = float(cfg.get("nacf", cfg)["grace_period_s"])
    # + the sidecar's stop: its open connections closed, a thread in a check (2 s) awaited
    budget = grace + max(5.0, grace) + 3.0
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



# ------------------------------------------------- the manifests against the real code
def _container() -> dict:
    (dep,) = [d for d in _k8s_docs() if d["kind"] == "Deployment"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return c


def _deployment_env() -> dict[str, str]:
    """The container's environment as the pod gets it, the example Secret's values in
    place of the secretKeyRefs (a ConfigMap or field ref would fail the test)."""
    docs = _k8s_docs()
    secrets = {d["metadata"]["name"]: d.get("stringData", {}) for d in docs
               if d["kind"] == "Secret"}
    env = {}
    for e in _container()["env"]:
        if "value" in e:
            env[e["name"]] = str(e["value"])
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def _mounts() -> dict[str, dict]:
    """``{mountPath: {"volume": the pod volume, "subPath": ..., "readOnly": ...}}``."""
    (dep,) = [d for d in _k8s_docs() if d["kind"] == "Deployment"]
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    return {m["mountPath"]: {"volume": volumes[m["name"]], "subPath": m.get("subPath"),
                             "readOnly": m.get("readOnly", False)}
            for m in _container()["volumeMounts"]}


def _mount_of(path: str) -> tuple[str, dict]:
    """The mount a file of the container lies on (the longest mountPath holding it)."""
    best = max((m for m in _mounts() if path == m or path.startswith(m.rstrip("/") + "/")),
               key=len, default=None)
    assert best is not None, f"{path} is on no mounted volume (the root file system)"
    return best, _mounts()[best]


def _deployed_config(tmp_path):
    """The Config ``nacf serve`` starts with in the pod: the ConfigMap's file, the
    Deployment's environment (with the example Secret), the container's arguments."""
    from nacf_core.cli import build_parser
    from nacf_core.commands import serve
    from nacf_core.config import load_config

    (cm,) = [d for d in _k8s_docs() if d["kind"] == "ConfigMap"]
    env = _deployment_env()
    mount, m = _mount_of(env["NACF_CONFIG"])
    assert m["volume"].get("configMap", {}).get("name") == cm["metadata"]["name"]
    key = m["subPath"] or env["NACF_CONFIG"][len(mount):].lstrip("/")
    f = tmp_path / "nacf.toml"
    f.write_text(cm["data"][key])
    env["NACF_CONFIG"] = str(f)
    c = _container()
    argv = [*c.get("command", [])[1:], *c.get("args", [])]
    args = build_parser().parse_args(argv)
    assert args.func is serve.run, argv
    return load_config(args.config, env=env,
                       **{k: getattr(args, k, None) for k in serve._FLAG_KEYS})


def test_k8s_environment_names_only_variables_nacf_reads():
    """A misspelt NACF_ variable in the Deployment (NACF_STORE_URI) is ignored with a
    warning in the log, and the pod runs without what it was meant to set."""
    from nacf_core.config import _KINDS, _OTHER_VARIABLES

    known = {"NACF_" + k.upper() for k in _KINDS} | _OTHER_VARIABLES
    names = [e["name"] for e in _container()["env"]]
    assert len(names) == len(set(names)), "a variable given twice"
    assert [n for n in names if n.startswith("NACF_") and n not in known] == []


def test_k8s_deployment_config_loads_and_matches_its_ports_and_volumes(tmp_path):
    """The ConfigMap, the environment and the arguments give a Config the code accepts,
    and the Deployment around it fits it: the container ports are the ports nacf listens
    on, on an address the kubelet and the Services reach; the TLS files and the data
    directory are on the volumes mounted for them; the scrape annotation names the
    sidecar's port."""
    from nacf_core.config import parse_address

    cfg = _deployed_config(tmp_path)
    c = _container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    ghost, gport = parse_address("grpc_address", cfg.grpc_address)
    assert cfg.metrics_address, "no sidecar: the probes have nothing to ask"
    mhost, mport = parse_address("metrics_address", cfg.metrics_address)
    assert (ports["grpc"], ports["metrics"]) == (gport, mport)
    for host in (ghost, mhost):
        assert host in ("0.0.0.0", "::"), f"{host}: the kubelet and the Services cannot reach it"
    (dep,) = [d for d in _k8s_docs() if d["kind"] == "Deployment"]
    ann = dep["spec"]["template"]["metadata"].get("annotations", {})
    if "prometheus.io/port" in ann:
        assert int(ann["prometheus.io/port"]) == mport
    # TLS (required off loopback): the files on the Secret volume, under the Secret's keys
    assert cfg.tls_cert_file and cfg.tls_key_file
    for path in (cfg.tls_cert_file, cfg.tls_key_file):
        mount, m = _mount_of(path)
        assert "secret" in m["volume"], path
        assert path[len(mount):].lstrip("/") in ("tls.crt", "tls.key"), path
    # the data directory is written (readOnlyRootFilesystem): a writable volume
    mount, m = _mount_of(cfg.data_dir)
    assert not m["readOnly"] and ("emptyDir" in m["volume"]
                                  or "persistentVolumeClaim" in m["volume"])
    for svc in (d for d in _k8s_docs() if d["kind"] == "Service"):
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports or p["targetPort"] in ports.values(), p


def test_k8s_replicas_share_one_postgresql_store_and_key(tmp_path):
    """Several replicas must share the store (templates, sessions, lockouts, rate limits)
    and the key its templates are encrypted with: a replica on SQLite in its emptyDir, or
    with a key file of its own, would serve users the others cannot see."""
    from nacf_core.config import store_url_scheme
    from nacf_core.store.crypto import load_key

    (dep,) = [d for d in _k8s_docs() if d["kind"] == "Deployment"]
    cfg = _deployed_config(tmp_path)
    env = _deployment_env()
    assert dep["spec"]["replicas"] > 1
    assert store_url_scheme(cfg.resolved_store_url) in ("postgresql", "postgres")
    assert not cfg.store_key_file and "NACF_TEMPLATE_KEY" in env
    assert {e["name"]: e for e in _container()["env"]}["NACF_TEMPLATE_KEY"]["valueFrom"]
    # the Secret's example is the format the code reads (base64 of 32 bytes), once filled
    # in as secret.example.yaml says (openssl rand -base64 32)
    import base64
    import os

    assert len(load_key(base64.b64encode(os.urandom(32)).decode())) == 32
    assert "openssl rand -base64 32" in (K8S / "secret.example.yaml").read_text()


@pytest.mark.parametrize("probe", ["livenessProbe", "readinessProbe", "startupProbe"])
def test_k8s_probe_paths_are_served_by_the_sidecar(probe):
    """Each probe's path answers on a running sidecar (not 404): a misspelt path fails
    every probe, and the kubelet restarts the pod for ever."""
    import urllib.error
    import urllib.request

    from nacf_core.sidecar import Sidecar

    path = _container()[probe]["httpGet"]["path"]
    sc = Sidecar("127.0.0.1:0", registry=CollectorRegistry(), checks={})
    sc.start()
    try:
        sc.set_ready(True)
        try:
            with urllib.request.urlopen(sc.url + path, timeout=10) as r:
                code = r.status
        except urllib.error.HTTPError as e:
            code = e.code
    finally:
        sc.stop()
    assert code == 200, f"{probe} {path}: {code}"


# ------------------------------------------------------- label values the code exports
_SELECTOR = re.compile(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def _label_values() -> dict[str, set[str]]:
    """``{label: the values nacf exports}``: the closed vocabularies of nacf_core.metrics,
    the RPCs of the proto, and for the free-text labels the literals the service and the
    server pass (read from their source: they are given nowhere else)."""
    from nacf_core import metrics, pad
    from nacf_core._proto.nacf.v1 import auth_pb2

    src = (ROOT / "nacf_core" / "service.py").read_text()
    app = (ROOT / "nacf_core" / "server" / "app.py").read_text()
    proof_kinds = set(re.findall(r'_ProofRejected\("([a-z_]+)"', src))
    assert {"wrong", "replayed", "missing"} <= proof_kinds
    events = set(re.findall(r'_security_event\([^,]+,\s*"([a-z_]+)"', src))
    return {
        "job": {"nacfauth-api"},
        "status": set(metrics.GRPC_STATUS_NAMES),
        "method": {m.name for m in auth_pb2.DESCRIPTOR.services_by_name["AuthService"].methods},
        "user_type": set(metrics.USER_TYPES),
        "decision": set(metrics.DECISIONS),
        "severity": set(metrics.SEVERITIES),
        "quality": {"good", "fair", "poor"},
        "reason": set(re.findall(r'record_failed_auth\("([a-z_]+)"\)', src))
        | {"poor_quality", "presentation_attack", "score_below_threshold"}
        | {f"device_proof_{k}" for k in proof_kinds},
        "activity_type": events | {f"device_proof_{k}" for k in proof_kinds}
        | set(re.findall(r'record_suspicious\("([a-z_]+)"', src))
        | {pad.REPLAY, pad.NON_PHYSIOLOGICAL},
        "signal_type": set(re.findall(r'observe_signal\("([a-z_]+)"', src)),
        "operation": set(re.findall(r'_store\(\s*"([a-z_]+)"', src)),
        "component": set(re.findall(r'checks=\{"([a-z_]+)"', app)),
    }


def _matchers(expr: str) -> list[tuple[str, str, str, str]]:
    """``(metric, label, op, value)`` of every label matcher in ``expr``."""
    return [(m[1], *mm.groups()) for m in _SELECTOR.finditer(expr)
            for mm in _MATCHER.finditer(m[2])]


def _bad_values(where: str, metric: str, label: str, op: str, value: str,
                vocab: dict[str, set[str]]) -> list[str]:
    own = _exported_labels().get(metric, ()) + ("job", "instance")
    if metric not in _exported_labels() and metric not in PROMETHEUS_OWN:
        return [f"{where}: {metric} is not exported"]
    if metric != "up" and label not in own:
        return [f"{where}: {metric} has no label {label!r}"]
    if label == "instance":
        return []
    values = value.split("|") if op in ("=~", "!~") else [value]
    return [f"{where}: {metric}{{{label}{op}\"{value}\"}}: {v!r} is never exported "
            f"(the code's: {sorted(vocab[label])})" for v in values if v not in vocab[label]]


def test_the_vocabulary_is_read_from_the_code():
    v = _label_values()
    assert v["component"] == {"store"}
    assert {"authenticate", "enroll", "stream", "continuous", "identify"} <= v["signal_type"]
    assert {"unknown_user", "locked", "device_proof_wrong"} <= v["reason"]
    assert {"rate_limited", "lockout", "device_proof_replayed", "replay"} <= v["activity_type"]
    assert {"get_template", "finish_authentication"} <= v["operation"]


def test_rules_and_dashboards_match_only_label_values_the_code_exports():
    """A matcher on a value nacf never exports selects nothing, and an alert on it never
    fires (the guide's status=~"5.." against gRPC status names); the rules, the
    dashboards and the label sets of the promtool tests' series must use the code's
    label names and values: gRPC status names, the proto's RPC names, the decisions,
    the failure reasons, the activity types, the store operations, the components."""
    vocab = _label_values()
    bad = []
    for alert, expr in rule_exprs().items():
        for metric, label, op, value in _matchers(expr):
            bad += _bad_values(f"rule {alert}", metric, label, op, value, vocab)
    for where, expr in dashboard_exprs():
        for metric, label, op, value in _matchers(expr):
            bad += _bad_values(where, metric, label, op, value, vocab)
    # the unit tests' series: their label values too (but another job and another
    # component, which the matchers must leave out, are there on purpose)
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for s in test["input_series"]:
            for metric, label, op, value in _matchers(s["series"]):
                if label in ("job", "component", "le"):
                    continue
                bad += _bad_values(f"test {test['name']!r}", metric, label, op, value, vocab)
    assert not bad, "\n".join(bad)


def test_the_example_secret_applied_as_it_is_starts_no_server_with_a_known_key(tmp_path):
    """secret.example.yaml's api-keys was "CHANGE-ME", a valid API key: a Secret made from
    the example with the store URL and the template key filled in but api-keys left as it
    was gave every replica a key anyone can read here, with every scope (admin too). Each
    placeholder must be one nacf refuses: no API key at all (nacf serve then refuses to
    start off loopback), a template key that is no key."""
    from nacf_core.config import load_api_keys
    from nacf_core.store.crypto import load_key

    (secret,) = [d for d in _k8s_docs() if d["kind"] == "Secret"
                 and d["metadata"]["name"] == "nacf-secrets"]
    data = secret["stringData"]
    assert load_api_keys(None, env=data["api-keys"]) == {}, \
        "the example's api-keys is an API key nacf accepts"
    with pytest.raises(Exception):
        load_key(data["template-key"])
    # and the Deployment's config without a key refuses to start (not open on 0.0.0.0)
    cfg = _deployed_config(tmp_path)
    assert not cfg.api_keys and not cfg.allow_open_loopback and not cfg.tls_client_ca_file
