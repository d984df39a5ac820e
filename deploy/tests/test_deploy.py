"""Checks of deploy/ that need no container runtime and no cluster.

- the Grafana dashboard and the alert rules name only metrics a running node
  exports: a real `polity node` process is started, decides a few tasks, and its
  /metrics is read;
- the alert rules pass `promtool check rules` and their unit tests
  (`promtool test rules`), and both Prometheus configurations `promtool check config`;
- every Kubernetes manifest validates against the Kubernetes schemas
  (`kubernetes-validate --strict`, offline), a broken one does not, and the
  manifests keep what the deployment relies on (probes, non-root, read-only root,
  resources, a disruption budget that keeps every region's quorum);
- the compose file is the demo's shape and Prometheus scrapes all of it;
- both Dockerfiles produce the same runtime layout.

Run: python3 -m unittest discover -s deploy/tests -v
Environment: POLITY_BIN (the polity binary; default: release, then debug build
under $CARGO_TARGET_DIR or target/); POLITY_REQUIRE_DEPLOY_TOOLS=1 turns a missing
promtool, kubernetes-validate or PyYAML into a failure instead of a skip (CI sets it).
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
REQUIRE_TOOLS = os.environ.get("POLITY_REQUIRE_DEPLOY_TOOLS") == "1"

try:
    import yaml
except ImportError:  # PyYAML comes with kubernetes-validate
    yaml = None


def need(tool_present, what):
    """Skips the test when a tool is missing, unless CI requires the tools."""
    if tool_present:
        return
    if REQUIRE_TOOLS:
        raise AssertionError(f"{what} is required (POLITY_REQUIRE_DEPLOY_TOOLS=1) but missing")
    raise unittest.SkipTest(f"{what} missing")


def polity_binary():
    if os.environ.get("POLITY_BIN"):
        return Path(os.environ["POLITY_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    for profile in ("release", "debug"):
        candidate = target / profile / "polity"
        if candidate.exists():
            return candidate
    raise AssertionError(
        f"no polity binary under {target}: cargo build --bin polity, or set POLITY_BIN"
    )


# PromQL words that look like metric names but are not.
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
    "unless", "bool", "offset", "inf", "nan",
}


def metric_names(expr):
    """The metric names a PromQL expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        token = match.group(0)
        if expr[match.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if token.lower() in PROMQL_KEYWORDS:
            continue
        names.add(token)
    return names


def exposition_names(text):
    """Sample names in a Prometheus text exposition, and the names its TYPE lines
    declare (with a histogram's _bucket, _sum and _count)."""
    samples, declared = set(), set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            declared.add(name)
            if kind in ("histogram", "summary"):
                declared.update({name + "_bucket", name + "_sum", name + "_count"})
        elif line and not line.startswith("#"):
            samples.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return samples, declared


def dashboard_exprs():
    dashboard = json.loads((DEPLOY / "grafana/polity-dashboard.json").read_text())
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs.append((panel["title"], target["expr"]))
    return exprs


def alert_exprs():
    need(yaml is not None, "PyYAML")
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    return [
        (rule["alert"], rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]


class PromqlNames(unittest.TestCase):
    """The name extraction itself, so the metrics test cannot pass by finding none."""

    def test_names_are_found_and_words_are_not(self):
        self.assertEqual(
            metric_names(
                'histogram_quantile(0.99, sum by (le, level) (rate('
                'federation_decision_latency_seconds_bucket{job="polity",le="+Inf"}[5m]))) > 2e0'
            ),
            {"federation_decision_latency_seconds_bucket"},
        )
        self.assertEqual(
            metric_names('sum by (region) (up{job="polity"}) * 2 <= count by (region) (up)'),
            {"up"},
        )
        self.assertEqual(
            metric_names("a_total / on (instance) group_left b_gauge offset 5m"),
            {"a_total", "b_gauge"},
        )

    def test_every_panel_and_rule_names_a_metric(self):
        for title, expr in dashboard_exprs() + alert_exprs():
            self.assertTrue(metric_names(expr), f"{title}: no metric in {expr!r}")


class MetricsOfARunningNode(unittest.TestCase):
    """Every metric the dashboard and the alert rules name is on a real node's /metrics."""

    @classmethod
    def setUpClass(cls):
        cls.binary = polity_binary()
        cls.dir = Path(tempfile.mkdtemp(prefix="polity-deploy-test-"))
        data = cls.dir / "data"
        cls.log = open(cls.dir / "node.log", "wb")
        cls.node = subprocess.Popen(
            [
                str(cls.binary), "node", "--data-dir", str(data),
                "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
                "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns",
                "--region", "region-0", "--continent", "continent-0",
            ],
            stdout=cls.log, stderr=subprocess.STDOUT,
        )
        endpoints = data / "endpoints.json"
        deadline = time.monotonic() + 60
        while not endpoints.exists():
            if cls.node.poll() is not None or time.monotonic() > deadline:
                cls.tearDownClass()
                raise AssertionError(f"the node did not start; see {cls.dir / 'node.log'}")
            time.sleep(0.2)
        cls.endpoints = json.loads(endpoints.read_text())
        # Work on every path, so the labelled families (tasks by outcome and path,
        # latency by level, raft groups) have samples, not only declarations.
        for path in ("bft", "raft", "stake"):
            subprocess.run(
                [
                    str(cls.binary), "submit", "--addr", cls.endpoints["grpc"],
                    "--capability", "sha256", "--payload", f"deploy-test {path}",
                    "--scope", "global", "--path", path,
                ],
                check=True, stdout=subprocess.DEVNULL, timeout=60,
            )
        with urllib.request.urlopen(cls.endpoints["http"] + "/metrics", timeout=10) as reply:
            cls.exposition = reply.read().decode()

    @classmethod
    def tearDownClass(cls):
        if cls.node.poll() is None:
            cls.node.terminate()
            try:
                cls.node.wait(timeout=15)
            except subprocess.TimeoutExpired:
                cls.node.kill()
                cls.node.wait()
        cls.log.close()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def check_names(self, exprs):
        samples, declared = exposition_names(self.exposition)
        self.assertIn("federation_tasks_total", samples, "the node decided nothing")
        missing, declared_only = [], []
        for title, expr in exprs:
            for name in sorted(metric_names(expr) - {"up"}):  # `up` is Prometheus's own
                if name in samples:
                    continue
                (declared_only if name in declared else missing).append(f"{title}: {name}")
        self.assertEqual(missing, [], "metrics the node does not export")
        if declared_only:
            print("\n  declared on /metrics but without samples yet (no such event): "
                  + ", ".join(declared_only))

    def test_dashboard_metrics_exist(self):
        self.check_names(dashboard_exprs())

    def test_alert_rule_metrics_exist(self):
        self.check_names(alert_exprs())

    def test_seed_panels_are_there(self):
        titles = {title for title, _ in dashboard_exprs()}
        for wanted in (
            "Agents by level", "Tasks by outcome and path", "Decision latency by level (p50, p99)",
            "Byzantine attacks detected", "Cascades prevented", "Raft leaders per group",
            "Raft terms", "Trust distribution",
        ):
            self.assertIn(wanted, titles)


class PrometheusRules(unittest.TestCase):
    def promtool(self, *args, cwd):
        need(shutil.which("promtool"), "promtool (Debian package prometheus)")
        result = subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        return result.stdout

    def test_rules_check(self):
        out = self.promtool("check", "rules", "alerts.yml", cwd=DEPLOY / "prometheus")
        self.assertIn("SUCCESS: 6 rules found", out)

    def test_rules_unit_tests(self):
        self.promtool("test", "rules", "alerts.test.yml", cwd=DEPLOY / "prometheus")

    def test_configurations(self):
        for config in (DEPLOY / "compose/prometheus.yml", DEPLOY / "prometheus/prometheus-k8s.yml"):
            with tempfile.TemporaryDirectory() as scratch:
                # Both name alerts.yml next to themselves, as they are mounted.
                shutil.copy(config, Path(scratch) / "prometheus.yml")
                shutil.copy(DEPLOY / "prometheus/alerts.yml", scratch)
                self.promtool("check", "config", "prometheus.yml", cwd=scratch)


class KubernetesManifests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        need(yaml is not None, "PyYAML")
        cls.dir = DEPLOY / "k8s"
        kustomization = yaml.safe_load((cls.dir / "kustomization.yaml").read_text())
        cls.files = [cls.dir / name for name in kustomization["resources"]]
        cls.docs = [
            doc for path in cls.files for doc in yaml.safe_load_all(path.read_text()) if doc
        ]

    def validate(self, *paths):
        need(shutil.which("kubernetes-validate"), "kubernetes-validate (PyPI)")
        return subprocess.run(
            ["kubernetes-validate", "--strict", "--quiet", *map(str, paths)],
            capture_output=True, text=True,
        )

    def test_every_manifest_validates(self):
        for path in self.files:
            self.assertTrue(path.exists(), path)
        result = self.validate(*self.files)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_a_broken_manifest_does_not(self):
        text = (self.dir / "statefulset-region-0.yaml").read_text()
        for broken in (
            text.replace("replicas: 3", "replicas: three"),
            text.replace("serviceName:", "servicename:"),
            text.replace("readOnlyRootFilesystem: true", "readOnlyRootFilesystem: yes please"),
        ):
            self.assertNotEqual(broken, text)
            with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
                file.write(broken)
                file.flush()
                self.assertNotEqual(self.validate(file.name).returncode, 0, broken[:200])

    def kind(self, kind):
        return [doc for doc in self.docs if doc["kind"] == kind]

    def test_statefulsets_keep_the_deployment_rules(self):
        statefulsets = self.kind("StatefulSet")
        self.assertEqual(len(statefulsets), 3)
        regions = set()
        for statefulset in statefulsets:
            spec = statefulset["spec"]
            pod = spec["template"]["spec"]
            (container,) = pod["containers"]
            regions.add(spec["template"]["metadata"]["labels"]["polity.dev/region"])
            self.assertEqual(spec["serviceName"], "polity-p2p")
            self.assertEqual(container["readinessProbe"]["httpGet"]["path"], "/ready")
            self.assertEqual(container["livenessProbe"]["httpGet"]["path"], "/health")
            self.assertTrue(pod["securityContext"]["runAsNonRoot"])
            self.assertNotEqual(pod["securityContext"]["runAsUser"], 0)
            self.assertTrue(container["securityContext"]["readOnlyRootFilesystem"])
            self.assertFalse(container["securityContext"]["allowPrivilegeEscalation"])
            for kind in ("requests", "limits"):
                self.assertIn("memory", container["resources"][kind])
            mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
            self.assertIn("/var/lib/polity", mounts)
            volumes = {v["name"]: v for v in pod["volumes"]}
            self.assertEqual(volumes["genesis"]["configMap"]["name"], "polity-genesis")
            self.assertEqual(volumes["token"]["secret"]["secretName"], "polity-api-token")
            self.assertTrue(any(a.startswith("--bootstrap=/dns4/") for a in container["args"]))
        self.assertEqual(regions, {"region-0", "region-1", "region-2"})

    def test_disruption_budgets_keep_every_region_quorum(self):
        replicas = {
            s["spec"]["template"]["metadata"]["labels"]["polity.dev/region"]: s["spec"]["replicas"]
            for s in self.kind("StatefulSet")
        }
        budgets = {
            b["spec"]["selector"]["matchLabels"]["polity.dev/region"]: b["spec"]["minAvailable"]
            for b in self.kind("PodDisruptionBudget")
        }
        self.assertEqual(set(budgets), set(replicas))
        for region, count in replicas.items():
            self.assertGreater(2 * budgets[region], count, region)

    def test_services(self):
        services = {s["metadata"]["name"]: s["spec"] for s in self.kind("Service")}
        self.assertEqual(services["polity-p2p"]["clusterIP"], "None")
        self.assertEqual(services["polity-grpc"]["sessionAffinity"], "ClientIP")


class ComposeCluster(unittest.TestCase):
    def test_the_demo_shape_and_every_node_scraped(self):
        need(yaml is not None, "PyYAML")
        compose = yaml.safe_load((DEPLOY / "compose/docker-compose.yml").read_text())
        nodes = {name: s for name, s in compose["services"].items() if name.startswith("node-")}
        self.assertEqual(len(nodes), 9)
        places, grpc_ports, volumes = set(), set(), set()
        for name, service in nodes.items():
            command = service["command"]
            region = command[command.index("--region") + 1]
            continent = command[command.index("--continent") + 1]
            places.add((region, continent))
            bootstrap = [command[i + 1] for i, a in enumerate(command) if a == "--bootstrap"]
            self.assertTrue(bootstrap and all(b.startswith("/dns4/node-") for b in bootstrap))
            self.assertNotIn(f"/dns4/{name}/tcp/7100", bootstrap)
            grpc_ports.update(p for p in service["ports"] if p.endswith(":7001"))
            volumes.add(service["volumes"][0].split(":")[0])
            self.assertTrue(any(v.endswith("genesis.pb:ro") for v in service["volumes"]))
        self.assertEqual(len({r for r, _ in places}), 3)
        self.assertEqual(len({c for _, c in places}), 2)
        self.assertEqual(len(grpc_ports), 9)
        self.assertEqual(volumes, set(nodes))
        scrape = yaml.safe_load((DEPLOY / "compose/prometheus.yml").read_text())
        targets = {
            target
            for config in scrape["scrape_configs"][0]["static_configs"]
            for target in config["targets"]
        }
        self.assertEqual(targets, {f"{name}:7002" for name in nodes})


class Dockerfiles(unittest.TestCase):
    def test_both_produce_the_same_runtime_layout(self):
        marker = "# --- runtime layout"
        layouts = []
        for path in (ROOT / "Dockerfile", DEPLOY / "docker/Dockerfile.local"):
            text = path.read_text()
            self.assertIn(marker, text, path)
            layouts.append(text[text.index(marker):])
        self.assertEqual(layouts[0], layouts[1])
        for needed in ("USER 10001", "HEALTHCHECK", "/health", "VOLUME", "EXPOSE", "tini"):
            self.assertIn(needed, layouts[0])


if __name__ == "__main__":
    unittest.main()
