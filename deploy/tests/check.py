#!/usr/bin/env python3
"""The checks of scripts/check-deploy (run it through that script: it installs the tools).

Each check prints "PASS name" or "FAIL name: why"; the last line is "N passed, N failed".
"""
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUST = DEPLOY / "kubernetes"
CHART = DEPLOY / "helm" / "engram"
ENGRAM_BIN = os.environ["ENGRAM_BIN"]
NODE_MODULES = os.environ["ENGRAM_DEPLOY_NODE_MODULES"]
# Oldest version the chart supports (Chart.yaml kubeVersion) and the newest bundled schema.
K8S_VERSIONS = ["1.27.0", "1.37.0"]
BUILTIN_GROUPS = ("v1", "apps/v1", "policy/v1")

passed = 0
failed = 0
WORK = Path(tempfile.mkdtemp(prefix="check-deploy-"))


def result(name, ok, why=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"PASS {name}", flush=True)
    else:
        failed += 1
        print(f"FAIL {name}: {why}", flush=True)
    return ok


def check(name):
    """Decorator-free helper: run fn, turn exceptions into failures."""
    def wrap(fn):
        try:
            why = fn()
            result(name, not why, why or "")
        except Exception as e:  # noqa: BLE001 - any error is a failed check
            result(name, False, f"{type(e).__name__}: {e}")
        return fn
    return wrap


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def docs(text):
    return [d for d in yaml.safe_load_all(text) if d]


def find(objs, kind, name=None):
    out = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    if len(out) != 1:
        raise AssertionError(f"expected one {kind} {name or ''}, found {len(out)}")
    return out[0]


# ---------------------------------------------------------------------------------------
# 1. Every YAML file parses (Helm templates are checked by rendering them).
@check("yaml: every deploy/**/*.yaml parses")
def _():
    bad = []
    files = [p for p in DEPLOY.rglob("*.y*ml") if "templates" not in p.parts]
    for p in files:
        try:
            list(yaml.safe_load_all(p.read_text()))
        except yaml.YAMLError as e:
            bad.append(f"{p.relative_to(REPO)}: {e}")
    return "; ".join(bad) if bad else ("" if files else "no yaml files found")


# 2. Dockerfile: structure (BuildKit's own parser) and hadolint.
@check("dockerfile: multi-stage rust:1-bookworm -> distroless, uid 65532, ENTRYPOINT engram")
def _():
    import dockerfile
    cmds = dockerfile.parse_file(str(DEPLOY / "Dockerfile"))
    args = {c.value[0].split("=", 1)[0]: c.value[0].split("=", 1)[1] for c in cmds if c.cmd == "ARG" and "=" in c.value[0]}
    froms = [c.value[0] for c in cmds if c.cmd == "FROM"]
    froms = [args.get(f.strip("${}"), f) for f in froms]
    errs = []
    if len(froms) != 2:
        errs.append(f"expected 2 stages, got {froms}")
    elif froms[0] != "rust:1-bookworm" or not (froms[1].startswith("gcr.io/distroless/cc") or froms[1].startswith("debian:bookworm-slim")):
        errs.append(f"unexpected base images {froms}")
    user = [c.value[0] for c in cmds if c.cmd == "USER"]
    if not user or not user[-1].startswith("65532"):
        errs.append(f"last USER is {user}")
    ep = [c for c in cmds if c.cmd == "ENTRYPOINT"]
    if not ep or not ep[-1].json or list(ep[-1].value) != ["engram"]:
        errs.append("ENTRYPOINT must be exec-form [\"engram\"]")
    labels = " ".join(" ".join(c.value) for c in cmds if c.cmd == "LABEL")
    if "org.opencontainers.image.version" not in labels:
        errs.append("no org.opencontainers.image.version label")
    if not any(c.cmd == "VOLUME" and "/var/lib/engram" in c.value for c in cmds):
        errs.append("no VOLUME /var/lib/engram")
    return "; ".join(errs)


@check("dockerfile: hadolint")
def _():
    r = run(["hadolint", "--failure-threshold", "warning", str(DEPLOY / "Dockerfile")])
    return "" if r.returncode == 0 else (r.stdout + r.stderr).strip()


def dockerfile_cmd():
    import dockerfile
    cmds = [c for c in dockerfile.parse_file(str(DEPLOY / "Dockerfile")) if c.cmd == "CMD"]
    assert cmds and cmds[-1].json, "CMD must be exec-form"
    return list(cmds[-1].value)


# ---------------------------------------------------------------------------------------
# 3. Render kustomize and helm.
rendered = {}


def kustomize(name, path, label=None):
    @check(f"kustomize: build {label or path.relative_to(REPO)}")
    def _():
        r = run(["kubectl", "kustomize", str(path)])
        if r.returncode != 0:
            return r.stderr.strip()
        rendered[name] = docs(r.stdout)
        (WORK / f"{name}.yaml").write_text(r.stdout)
        return ""


def composed(name, label, kustomization):
    """An overlay written into WORK that composes the repo's overlays and components (what
    deploy/README.md tells users to write), built like the others. Paths in `kustomization`
    are relative to deploy/kubernetes (kustomize wants them relative)."""
    d = WORK / f"kustomization-{name}"
    d.mkdir()
    rel = os.path.relpath(KUST, d)
    for key in ("resources", "components"):
        if key in kustomization:
            kustomization[key] = [f"{rel}/{x}" for x in kustomization[key]]
    (d / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    kustomize(name, d, label=label)


kustomize("base", KUST / "base")
for overlay in ("single", "tls", "monitoring", "tikv"):
    kustomize(overlay, KUST / "overlays" / overlay)
# The tikv overlay with TLS and monitoring, as deploy/README.md says to combine them.
composed("tikv-tls-monitoring", "overlays/tikv + components/tls + components/monitoring", {
    "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
    "resources": ["overlays/tikv"], "components": ["components/tls", "components/monitoring"]})
# The misconfiguration the policy must catch: the embedded engine with three replicas
# (kustomize cannot refuse it; the policy check below must, see "policy: catches ...").
composed("single-3-replicas", "overlays/single patched to replicas: 3 (the policy must refuse it)", {
    "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
    "resources": ["overlays/single"],
    "patches": [{"target": {"kind": "StatefulSet", "name": "engram"},
                 "patch": "- op: replace\n  path: /spec/replicas\n  value: 3\n"}]})

HELM_FULL = ["--set", "tls.enabled=true", "--set", "tls.certManager.enabled=true",
             "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true",
             "--set", "engram.extraArgs={--grpc-keepalive-interval=30m}"]
HELM_TLS_NO_CCA = ["--set", "tls.enabled=true", "--set", "tls.clientCertAuth=false"]
# The PD endpoints and key prefix of the tikv overlay's ConfigMap, so the args compare equal.
TIKV_CM = yaml.safe_load((KUST / "overlays" / "tikv" / "kustomization.yaml").read_text())["configMapGenerator"][0]
TIKV_VALUES = dict(lit.split("=", 1) for lit in TIKV_CM["literals"])
HELM_TIKV = ["--set", "engine=tikv", "--set", "replicas=3",
             "--set-string", "tikv.pdEndpoints=" + TIKV_VALUES["pd-endpoints"].replace(",", "\\,"),
             "--set-string", "tikv.keyPrefix=" + TIKV_VALUES["key-prefix"]]
HELM_TIKV_FULL = HELM_TIKV + HELM_FULL


@check("helm: lint --strict")
def _():
    r = run(["helm", "lint", "--strict", str(CHART)])
    return "" if r.returncode == 0 else (r.stdout + r.stderr).strip()


def helm_template(name, extra):
    @check(f"helm: template ({name})")
    def _():
        r = run(["helm", "template", "engram", str(CHART), "--namespace", "engram", *extra])
        if r.returncode != 0:
            return r.stderr.strip()
        rendered[name] = docs(r.stdout)
        (WORK / f"{name}.yaml").write_text(r.stdout)
        return ""


helm_template("helm-default", [])
helm_template("helm-full", HELM_FULL)
helm_template("helm-tls-no-client-auth", HELM_TLS_NO_CCA)
helm_template("helm-tikv", HELM_TIKV)
helm_template("helm-tikv-full", HELM_TIKV_FULL)


@check("helm: lint --strict (engine=tikv, replicas=3)")
def _():
    r = run(["helm", "lint", "--strict", str(CHART), *HELM_TIKV])
    return "" if r.returncode == 0 else (r.stdout + r.stderr).strip()


def helm_refuses(what, extra, message):
    @check(f"helm: refuses {what}")
    def _():
        r = run(["helm", "template", "engram", str(CHART), *extra])
        if r.returncode == 0:
            return "rendered anyway"
        return "" if message in r.stderr else f"failed without saying {message!r}: {r.stderr.strip()}"


# The embedded engine is one data directory that one process opens: several replicas would
# be several diverging databases (or members fighting over one PVC). The chart must fail.
helm_refuses("engine=lsm with replicas=3", ["--set", "replicas=3"], "replicas must be 1 with engine=lsm")
helm_refuses("engine=btree with replicas=2", ["--set", "engine=btree", "--set", "replicas=2"],
             "replicas must be 1 with engine=btree")
helm_refuses("engine=tikv without tikv.pdEndpoints", ["--set", "engine=tikv", "--set", "replicas=3"],
             "engine=tikv needs tikv.pdEndpoints")
helm_refuses("terminationGracePeriodSeconds below 2 x electionLease + 10s",
             [*HELM_TIKV, "--set", "electionLease=30s", "--set", "terminationGracePeriodSeconds=60"],
             "must be at least 2 x electionLease + 10s")
helm_refuses("an electionLease Engram's flag would not take", ["--set", "electionLease=5"], "electionLease")
helm_refuses("an unknown engine", ["--set", "engine=rocksdb"], "engine must be")
helm_refuses("the old replicaCount value", ["--set", "replicaCount=3"], "replicaCount was renamed")


# ---------------------------------------------------------------------------------------
# 4. Schemas: built-in kinds with kubernetes-validate (strict: unknown fields fail),
#    custom resources with @kubernetes-models.
def validate_schemas(name, objs):
    import kubernetes_validate

    @check(f"schema: {name}: built-in objects vs Kubernetes {' and '.join(K8S_VERSIONS)} (strict)")
    def _():
        errs = []
        builtins = [o for o in objs if o["apiVersion"] in BUILTIN_GROUPS]
        if not builtins:
            return "no built-in objects"
        for v in K8S_VERSIONS:
            for o in builtins:
                try:
                    kubernetes_validate.validate(o, v, strict=True)
                except Exception as e:  # noqa: BLE001
                    errs.append(f"{v} {o['kind']}/{o['metadata']['name']}: {getattr(e, 'message', e)}")
        return "; ".join(errs)

    crds = [o for o in objs if o["apiVersion"] not in BUILTIN_GROUPS]
    if crds:
        @check(f"schema: {name}: custom resources ({', '.join(sorted({o['kind'] for o in crds}))})")
        def _():
            r = run(["node", str(DEPLOY / "tests" / "validate-crds.mjs"), NODE_MODULES], input=json.dumps(crds))
            return "" if r.returncode == 0 else (r.stdout + r.stderr).strip()


for name in list(rendered):
    if name != "single-3-replicas":
        validate_schemas(name, rendered[name])


# ---------------------------------------------------------------------------------------
# 5. What the brief requires of the objects.
POD = {"metadata.name": "engram-0", "metadata.namespace": "engram"}


def resolve_env(objs, container):
    """The container's env as the kubelet resolves it for pod engram-0 in namespace engram:
    literal values, the downward API, and ConfigMap keys (from the rendered ConfigMaps)."""
    env = {}
    maps = {o["metadata"]["name"]: o.get("data", {}) for o in objs if o["kind"] == "ConfigMap"}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
            continue
        src = e.get("valueFrom", {})
        if "fieldRef" in src:
            env[e["name"]] = POD[src["fieldRef"]["fieldPath"]]
        elif "configMapKeyRef" in src:
            ref = src["configMapKeyRef"]
            if ref["name"] not in maps or ref["key"] not in maps[ref["name"]]:
                raise AssertionError(f"env {e['name']}: ConfigMap {ref['name']} key {ref['key']} not rendered")
            env[e["name"]] = maps[ref["name"]][ref["key"]]
        else:
            raise AssertionError(f"env {e['name']}: unsupported source {src}")
    return env


def expand(arg, env):
    """$(VAR) expansion as the kubelet does it for args."""
    for k, v in env.items():
        arg = arg.replace(f"$({k})", v)
    if "$(" in arg:
        raise AssertionError(f"{arg}: a $(VAR) the container's env does not define")
    return arg


def engine_of(args):
    return next((a.split("=", 1)[1] for a in args if a.startswith("--engine=")), "lsm")


def lease_seconds(args):
    text = next((a.split("=", 1)[1] for a in args if a.startswith("--election-lease=")), "5s")
    for unit, scale in (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)):
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * scale
    raise AssertionError(f"--election-lease={text} not understood")


def policy_errors(objs, tls, replicas=None):
    errs = []
    sts = find(objs, "StatefulSet")
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    c = pod["containers"][0]
    raw = c["args"]
    env = resolve_env(objs, c)
    args = [expand(a, env) for a in raw]
    engine = engine_of(args)
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    pdb = find(objs, "PodDisruptionBudget")
    n = spec.get("replicas", 1)
    if replicas is not None and n != replicas:
        errs.append(f"replicas {n}, want {replicas}")
    if engine in ("lsm", "btree", "memory"):
        # One process per data directory: a second replica is a second, diverging database.
        if n != 1:
            errs.append(f"replicas {n} with --engine={engine}: the embedded engine allows one member only")
        if pdb["spec"].get("maxUnavailable") != 0:
            errs.append("a single member's PDB must be maxUnavailable 0")
    if engine in ("lsm", "btree"):
        if not spec.get("volumeClaimTemplates"):
            errs.append("no volumeClaimTemplates")
        if mounts.get("/var/lib/engram") != "data":
            errs.append("data volume not at /var/lib/engram")
        if "--data-dir=/var/lib/engram/data" not in args:
            errs.append("--data-dir not on the data volume")
    elif engine == "tikv":
        if spec.get("volumeClaimTemplates") or "/var/lib/engram" in mounts:
            errs.append("tikv brains are stateless: no volumeClaimTemplates / data volume")
        if any(a.startswith("--data-dir=") for a in args):
            errs.append("--data-dir given to a tikv brain")
        pd = next((a.split("=", 1)[1] for a in args if a.startswith("--pd-endpoints=")), "")
        if not pd or any(":" not in ep for ep in pd.split(",")):
            errs.append(f"--pd-endpoints must be host:port,...: {pd!r}")
        if not next((a.split("=", 1)[1] for a in args if a.startswith("--key-prefix=")), ""):
            errs.append("no --key-prefix")
        if n < 2:
            errs.append(f"replicas {n}: run several brains")
        if spec.get("podManagementPolicy") != "Parallel":
            errs.append("podManagementPolicy not Parallel")
        hard = pod.get("affinity", {}).get("podAntiAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution", [])
        if not any(t.get("topologyKey") == "kubernetes.io/hostname" and
                   all(labels.get(k) == v for k, v in t["labelSelector"]["matchLabels"].items()) for t in hard):
            errs.append("no required anti-affinity by hostname that selects the brains")
        if pdb["spec"].get("maxUnavailable") != 1:
            errs.append("PDB maxUnavailable must be 1")
    else:
        errs.append(f"unknown --engine={engine}")
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    if not (psc.get("runAsNonRoot") and psc.get("runAsUser") == 65532):
        errs.append("pod not runAsNonRoot uid 65532")
    if not csc.get("readOnlyRootFilesystem"):
        errs.append("root filesystem not read-only")
    if csc.get("capabilities", {}).get("drop") != ["ALL"]:
        errs.append("capabilities not drop ALL")
    if csc.get("allowPrivilegeEscalation") is not False:
        errs.append("allowPrivilegeEscalation not false")
    if not pod.get("affinity", {}).get("podAntiAffinity"):
        errs.append("no podAntiAffinity")
    # On SIGTERM a leader releases the lead at once; the process then takes up to
    # 2 x --election-lease + 4s to stop (its background tasks each wait out lease + 1s).
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace < 2 * lease_seconds(args) + 10:
        errs.append(f"terminationGracePeriodSeconds {grace} < 2 x --election-lease + 10s")
    if not (c.get("resources", {}).get("requests") and c["resources"].get("limits", {}).get("memory")):
        errs.append("resources requests/memory limit missing")
    want_port = "metrics" if tls else "client"
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz"), ("startupProbe", "/readyz")):
        g = c.get(probe, {}).get("httpGet", {})
        if g.get("path") != path or g.get("port") != want_port:
            errs.append(f"{probe} is {g}, want {path} on port {want_port}")
    scheme = "https" if tls else "http"
    if f"--listen-client-urls={scheme}://0.0.0.0:2379" not in args:
        errs.append(f"not listening on {scheme}://0.0.0.0:2379")
    if tls and not {"--client-cert-auth", "--cert-file=/etc/engram/tls/tls.crt"} <= set(args):
        errs.append("TLS flags missing")
    # Each pod advertises its own stable name through the headless Service: the URL the
    # other members forward writes to while it leads.
    want = f"--advertise-client-urls={scheme}://$(POD_NAME).{spec['serviceName']}.$(POD_NAMESPACE).svc:2379"
    if want not in raw:
        errs.append(f"advertise URL is not {want}")
    for var, field in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        if not any(e["name"] == var and e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == field
                   for e in c.get("env", [])):
            errs.append(f"env {var} is not the downward API's {field}")
    # Services and the PDB select the pod; the StatefulSet's serviceName is headless.
    for svc in [o for o in objs if o["kind"] == "Service"]:
        sel = svc["spec"]["selector"]
        if any(labels.get(k) != v for k, v in sel.items()):
            errs.append(f"Service {svc['metadata']['name']} selector {sel} misses pod labels")
    members = find(objs, "Service", spec["serviceName"])
    if members["spec"].get("clusterIP") != "None":
        errs.append("serviceName is not headless")
    if not members["spec"].get("publishNotReadyAddresses"):
        errs.append("members Service does not publish not-ready addresses")
    if 2379 not in [p["port"] for p in members["spec"]["ports"]]:
        errs.append("members Service has no client port 2379")
    client = [s for s in objs if s["kind"] == "Service" and s["metadata"]["name"].endswith("-client")]
    if len(client) != 1 or client[0]["spec"]["ports"][0]["port"] != 2379:
        errs.append("no <name>-client Service on 2379")
    if any(labels.get(k) != v for k, v in pdb["spec"]["selector"]["matchLabels"].items()):
        errs.append("PDB selector misses pod labels")
    sa = find(objs, "ServiceAccount")
    if pod.get("serviceAccountName") != sa["metadata"]["name"]:
        errs.append("pod does not use the ServiceAccount")
    for sm in [o for o in objs if o["kind"] == "ServiceMonitor"]:
        sel = sm["spec"]["selector"]["matchLabels"]
        if any(members["metadata"]["labels"].get(k) != v for k, v in sel.items()):
            errs.append("ServiceMonitor does not select the members Service")
        if members["metadata"]["labels"].get(sm["spec"]["jobLabel"]) != "engram":
            errs.append("ServiceMonitor job label would not be job=\"engram\" (alerts select on it)")
    if tls:
        vols = {v["name"]: v for v in pod["volumes"]}
        secret = vols.get("tls", {}).get("secret", {}).get("secretName")
        certs = [o for o in objs if o["kind"] == "Certificate" and o["spec"]["secretName"] == secret]
        if not secret:
            errs.append("no tls Secret volume")
        elif not certs:
            errs.append(f"no Certificate writes Secret {secret}")
        else:
            # Followers present it to the leader (client auth) at its member name.
            usages = certs[0]["spec"].get("usages", [])
            if "client auth" not in usages or "server auth" not in usages:
                errs.append(f"server Certificate usages {usages} lack server auth + client auth")
            if not any(d.startswith(f"*.{spec['serviceName']}.") for d in certs[0]["spec"].get("dnsNames", [])):
                errs.append("server Certificate does not name *.<members service>")
    return errs


def policy(name, objs, tls, replicas):
    @check(f"policy: {name}: StatefulSet, Services, PDB, ServiceAccount as required")
    def _():
        return "; ".join(policy_errors(objs, tls, replicas))


POLICY = {"single": (False, 1), "tls": (True, 1), "monitoring": (False, 1), "tikv": (False, 3),
          "tikv-tls-monitoring": (True, 3), "helm-default": (False, 1), "helm-full": (True, 1),
          "helm-tikv": (False, 3), "helm-tikv-full": (True, 3)}
for name, (tls, replicas) in POLICY.items():
    if name in rendered:
        policy(name, rendered[name], tls, replicas)


@check("policy: catches the embedded engine with 3 replicas (single overlay patched to replicas: 3)")
def _():
    errs = policy_errors(rendered["single-3-replicas"], False)
    return "" if any("embedded engine allows one member only" in e for e in errs) else f"accepted: {errs}"


def sts_container(name):
    return find(rendered[name], "StatefulSet")["spec"]["template"]["spec"]["containers"][0]


def sts_args(name):
    """The args as the kubelet passes them to engram-0 ($(VAR)s expanded)."""
    c = sts_container(name)
    env = resolve_env(rendered[name], c)
    return [expand(a, env) for a in c["args"]]


def sts_grace(name):
    return find(rendered[name], "StatefulSet")["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)


def consistent(what, a, b, extra=()):
    @check(f"consistency: {what}")
    def _():
        x, y = sts_args(a), sts_args(b)
        return "" if x + list(extra) == y else f"{a}={x} {b}={y}"


consistent("helm defaults give the single overlay's exact args", "single", "helm-default")
consistent("helm TLS gives the tls overlay's exact args (+ extraArgs)", "tls", "helm-full",
           ["--grpc-keepalive-interval=30m"])
consistent("helm engine=tikv gives the tikv overlay's exact args", "tikv", "helm-tikv")
consistent("helm tikv + TLS gives tikv + components/tls's exact args (+ extraArgs)", "tikv-tls-monitoring",
           "helm-tikv-full", ["--grpc-keepalive-interval=30m"])


alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())


@check("consistency: chart files/alerts.yaml is a copy of deploy/prometheus/alerts.yaml")
def _():
    same = (CHART / "files" / "alerts.yaml").read_bytes() == (DEPLOY / "prometheus" / "alerts.yaml").read_bytes()
    return "" if same else "differ: cp deploy/prometheus/alerts.yaml deploy/helm/engram/files/alerts.yaml"


@check("consistency: rendered PrometheusRules (kustomize, helm) carry alerts.yaml's groups")
def _():
    errs = []
    for name in ("monitoring", "helm-full", "tikv-tls-monitoring", "helm-tikv-full"):
        if find(rendered[name], "PrometheusRule")["spec"] != alerts["spec"]:
            errs.append(f"{name} differs")
    return "; ".join(errs)


# ---------------------------------------------------------------------------------------
# 6. Alerts: promtool check + unit tests, and every metric they use is one Engram exports.
rules_dir = WORK / "rules"
rules_dir.mkdir()
(rules_dir / "engram-rules.yaml").write_text(yaml.safe_dump({"groups": alerts["spec"]["groups"]}))
shutil.copy(DEPLOY / "prometheus" / "alerts_test.yaml", rules_dir / "alerts_test.yaml")


@check("alerts: promtool check rules")
def _():
    r = run(["promtool", "check", "rules", "engram-rules.yaml"], cwd=rules_dir)
    return "" if r.returncode == 0 else (r.stdout + r.stderr).strip()


@check("alerts: promtool test rules (deploy/prometheus/alerts_test.yaml)")
def _():
    r = run(["promtool", "test", "rules", "alerts_test.yaml"], cwd=rules_dir)
    return "" if r.returncode == 0 else (r.stdout + r.stderr).strip()[-3000:]


# ---------------------------------------------------------------------------------------
# 7. Run the binary with the manifests' args.
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certs(d):
    """A CA, a server cert for 127.0.0.1/localhost and a client cert, with openssl."""
    def ossl(*a):
        r = run(["openssl", *a], cwd=d)
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
         "-subj", "/CN=engram-test-ca", "-keyout", "ca.key", "-out", "ca.crt")
    for name, ext in (("tls", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        Path(d, f"{name}.ext").write_text(ext + "\n")
        ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr")
        ossl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt")


def swap_args(args, tmp, client_port, metrics_port, certs, pd_port=None):
    """The manifest's args (already $(VAR)-expanded), with only the data dir, listen
    addresses, TLS paths and PD endpoints swapped: PD goes to a closed port on this machine."""
    out = []
    for a in args:
        flag, _, val = a.partition("=")
        if flag == "--pd-endpoints":
            a = f"--pd-endpoints=127.0.0.1:{pd_port or free_port()}"
        elif flag == "--data-dir":
            a = f"--data-dir={tmp}/data"
        elif flag == "--listen-client-urls":
            a = f"--listen-client-urls={val.split('://')[0]}://127.0.0.1:{client_port}"
        elif flag == "--listen-metrics-urls":
            a = f"--listen-metrics-urls={val.split('://')[0]}://127.0.0.1:{metrics_port}"
        elif flag in ("--cert-file", "--key-file", "--trusted-ca-file"):
            a = f"{flag}={certs}/{Path(val).name}"
        out.append(a)
    return out


def get(url, ctx=None):
    try:
        with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except Exception as e:  # noqa: BLE001
        return None, str(e)


def grpc(client, tmp, method, tls, certs):
    """One unary gRPC call with an empty request through curl's HTTP/2, like etcdctl's:
    (headers and trailers, response body bytes)."""
    frame = tmp / "empty.grpc"
    frame.write_bytes(b"\x00\x00\x00\x00\x00")
    body = tmp / "response.grpc"
    curl = ["curl", "-s", "-o", str(body), "-D", "-", "--max-time", "5", "--http2-prior-knowledge",
            "-H", "content-type: application/grpc", "-H", "te: trailers", "--data-binary", f"@{frame}"]
    if tls:
        curl = [c for c in curl if c != "--http2-prior-knowledge"] + [
            "--http2", "--cacert", str(certs / "ca.crt"), "--cert", str(certs / "client.crt"),
            "--key", str(certs / "client.key")]
    r = run([*curl, f"{client}/{method}"])
    return r.stdout + r.stderr, body.read_bytes() if body.exists() else b""


def run_engram(name, args, grace, swap_engine=None):
    """Starts engram with `args` (swapped as in swap_args; `swap_engine` replaces --engine,
    for the tikv brains, which cannot reach a TiKV cluster here), checks what the kubelet,
    Prometheus and clients see, then stops it with SIGTERM as the kubelet does."""
    what = f" with --engine={swap_engine}" if swap_engine else ""
    @check(f"engram: runs with the {name} args{what}, /readyz answers 200, exits within its grace period")
    def _():
        nonlocal args
        if swap_engine:
            args = [f"--engine={swap_engine}" if a.startswith("--engine=") else a for a in args]
        tmp = WORK / ("run-" + name.replace(" ", "-"))
        certs = tmp / "certs"
        certs.mkdir(parents=True)
        tls = any(a.startswith("--listen-client-urls=https") for a in args)
        if tls:
            make_certs(certs)
        cp, mp = free_port(), free_port()
        argv = swap_args(args, tmp, cp, mp, certs)
        unchanged = [a for a in args if a.split("=")[0] not in
                     ("--data-dir", "--listen-client-urls", "--listen-metrics-urls", "--cert-file",
                      "--key-file", "--trusted-ca-file", "--pd-endpoints")]
        assert all(a in argv for a in unchanged)
        log = open(tmp / "engram.log", "w")
        proc = subprocess.Popen([ENGRAM_BIN, *argv], stdout=log, stderr=subprocess.STDOUT)
        try:
            has_metrics = any(a.startswith("--listen-metrics-urls") for a in argv)
            ctx = None
            if tls:
                ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
                ctx.load_cert_chain(str(certs / "client.crt"), str(certs / "client.key"))
            client = f"{'https' if tls else 'http'}://127.0.0.1:{cp}"
            deadline = time.time() + 60
            status = None
            while time.time() < deadline:
                if proc.poll() is not None:
                    return f"exited {proc.returncode}: {(tmp / 'engram.log').read_text()[-1500:]} args={argv}"
                status, _ = get(f"{client}/readyz", ctx)
                if status == 200:
                    break
                time.sleep(0.2)
            if status != 200:
                return f"client /readyz never answered 200 (last: {status}) args={argv}"
            errs = []
            if get(f"{client}/livez", ctx)[0] != 200:
                errs.append("client /livez not 200")
            # Maintenance/Status, like `etcdctl endpoint status`: it also makes the
            # grpc_server_* series appear.
            out, _ = grpc(client, tmp, "etcdserverpb.Maintenance/Status", tls, certs)
            if "grpc-status: 0" not in out:
                errs.append(f"gRPC Maintenance/Status failed: {out}")
            # Cluster/MemberList shows the URL the member registered: the one the other
            # members forward writes to while it leads.
            advertised = [a.split("=", 1)[1] for a in argv if a.startswith("--advertise-client-urls=")]
            out, body = grpc(client, tmp, "etcdserverpb.Cluster/MemberList", tls, certs)
            if "grpc-status: 0" not in out:
                errs.append(f"gRPC Cluster/MemberList failed: {out}")
            elif any(url.encode() not in body for url in advertised):
                errs.append(f"MemberList does not carry the advertised {advertised}: {body!r}")
            if has_metrics:
                # The metrics port is where the TLS overlay's probes go, and what Prometheus scrapes.
                for path in ("/readyz", "/livez"):
                    if get(f"http://127.0.0.1:{mp}{path}")[0] != 200:
                        errs.append(f"metrics port {path} not 200")
                st, body = get(f"http://127.0.0.1:{mp}/metrics")
                used = {"etcd_server_has_leader", "etcd_mvcc_db_total_size_in_bytes",
                        "grpc_server_handled_total", "grpc_server_handling_seconds"}
                missing = [m for m in used if f"# TYPE {m} " not in body]
                if st != 200 or missing:
                    errs.append(f"/metrics status {st}, metrics the alerts use missing: {missing}")
            if tls and "--client-cert-auth" in argv:
                nocert = ssl.create_default_context(cafile=str(certs / "ca.crt"))
                if get(f"{client}/readyz", nocert)[0] == 200:
                    errs.append("https client port answered a client without certificate")
            # SIGTERM, as the kubelet sends it: the leader releases the lead, drains, exits 0
            # well before SIGKILL (terminationGracePeriodSeconds).
            started = time.monotonic()
            proc.terminate()
            try:
                code = proc.wait(timeout=grace)
                took = time.monotonic() - started
                if code != 0:
                    errs.append(f"exited {code} on SIGTERM")
                elif took > grace / 2:
                    errs.append(f"took {took:.1f}s to stop on SIGTERM (grace period {grace}s)")
            except subprocess.TimeoutExpired:
                errs.append(f"still running {grace}s after SIGTERM: the kubelet would SIGKILL it")
            return "; ".join(errs)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


def tikv_flags(name, args):
    """The tikv brains' exact args, PD on a closed local port: every flag must be accepted.
    An engram built without the `tikv` feature (scripts/check-deploy builds the default
    features) then says so; one built with it keeps retrying PD until stopped."""
    @check(f"engram: accepts every flag of the {name} args (--engine=tikv, PD unreachable)")
    def _():
        tmp = WORK / ("flags-" + name.replace(" ", "-"))
        tmp.mkdir(parents=True)
        if any(a.startswith("--cert-file=") for a in args):
            make_certs(tmp)
        argv = swap_args(args, tmp, free_port(), free_port(), tmp)
        proc = subprocess.Popen([ENGRAM_BIN, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            out, _ = proc.communicate(timeout=30)
        if "error: " in out and ("argument" in out or "invalid value" in out or "Usage:" in out):
            return f"flags refused: {out[-1500:]}"
        if proc.returncode == 2:
            return f"exit 2 (usage error): {out[-1500:]}"
        return ""


RUNS = {"single": None, "tls": None, "helm-default": None, "helm-tls-no-client-auth": None,
        "tikv": "memory", "helm-tikv": "memory"}
for name, swap in RUNS.items():
    if name in rendered:
        run_engram(f"{name} StatefulSet", sts_args(name), sts_grace(name), swap)
for name in ("tikv", "tikv-tls-monitoring"):
    if name in rendered:
        tikv_flags(f"{name} StatefulSet", sts_args(name))
try:
    run_engram("Dockerfile CMD", dockerfile_cmd(), 30)
except Exception as e:  # noqa: BLE001
    result("engram: Dockerfile CMD args", False, str(e))


@check("engram: --version answers (as `docker run IMAGE --version` would)")
def _():
    r = run([ENGRAM_BIN, "--version"])
    return "" if r.returncode == 0 and r.stdout.startswith("engram ") else r.stdout + r.stderr


if failed == 0:
    shutil.rmtree(WORK, ignore_errors=True)
else:
    print(f"check-deploy: rendered manifests and logs kept in {WORK}", file=sys.stderr)
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
