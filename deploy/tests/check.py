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


def kustomize(name, path):
    @check(f"kustomize: build {path.relative_to(REPO)}")
    def _():
        r = run(["kubectl", "kustomize", str(path)])
        if r.returncode != 0:
            return r.stderr.strip()
        rendered[name] = docs(r.stdout)
        (WORK / f"{name}.yaml").write_text(r.stdout)
        return ""


kustomize("base", KUST / "base")
for overlay in ("single", "tls", "monitoring"):
    kustomize(overlay, KUST / "overlays" / overlay)

HELM_FULL = ["--set", "tls.enabled=true", "--set", "tls.certManager.enabled=true",
             "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true",
             "--set", "engram.extraArgs={--grpc-keepalive-interval=30m}"]
HELM_TLS_NO_CCA = ["--set", "tls.enabled=true", "--set", "tls.clientCertAuth=false"]


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


@check("helm: replicaCount=2 is refused (single member only)")
def _():
    r = run(["helm", "template", "engram", str(CHART), "--set", "replicaCount=2"])
    return "" if r.returncode != 0 and "replicaCount must be 1" in r.stderr else "rendered anyway"


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
    validate_schemas(name, rendered[name])


# ---------------------------------------------------------------------------------------
# 5. What the brief requires of the objects.
def policy(name, objs, tls):
    @check(f"policy: {name}: StatefulSet, Services, PDB, ServiceAccount as required")
    def _():
        errs = []
        sts = find(objs, "StatefulSet")
        spec = sts["spec"]
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"]["labels"]
        c = pod["containers"][0]
        if spec.get("replicas") != 1:
            errs.append("replicas != 1")
        if not spec.get("volumeClaimTemplates"):
            errs.append("no volumeClaimTemplates")
        if not any(m["mountPath"] == "/var/lib/engram" for m in c["volumeMounts"]):
            errs.append("data volume not at /var/lib/engram")
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
        if not pod.get("terminationGracePeriodSeconds"):
            errs.append("no terminationGracePeriodSeconds")
        if not (c.get("resources", {}).get("requests") and c["resources"].get("limits", {}).get("memory")):
            errs.append("resources requests/memory limit missing")
        want_port = "metrics" if tls else "client"
        for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz"), ("startupProbe", "/readyz")):
            g = c.get(probe, {}).get("httpGet", {})
            if g.get("path") != path or g.get("port") != want_port:
                errs.append(f"{probe} is {g}, want {path} on port {want_port}")
        args = c["args"]
        scheme = "https" if tls else "http"
        if f"--listen-client-urls={scheme}://0.0.0.0:2379" not in args:
            errs.append(f"not listening on {scheme}://0.0.0.0:2379")
        if tls and not {"--client-cert-auth", "--cert-file=/etc/engram/tls/tls.crt"} <= set(args):
            errs.append("TLS flags missing")
        # Services and the PDB select the pod; the StatefulSet's serviceName is headless.
        for svc in [o for o in objs if o["kind"] == "Service"]:
            sel = svc["spec"]["selector"]
            if any(labels.get(k) != v for k, v in sel.items()):
                errs.append(f"Service {svc['metadata']['name']} selector {sel} misses pod labels")
        members = find(objs, "Service", spec["serviceName"])
        if members["spec"].get("clusterIP") != "None":
            errs.append("serviceName is not headless")
        client = [s for s in objs if s["kind"] == "Service" and s["metadata"]["name"].endswith("-client")]
        if len(client) != 1 or client[0]["spec"]["ports"][0]["port"] != 2379:
            errs.append("no <name>-client Service on 2379")
        pdb = find(objs, "PodDisruptionBudget")
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
        return "; ".join(errs)


POLICY = {"single": False, "tls": True, "monitoring": False, "helm-default": False, "helm-full": True}
for name, tls in POLICY.items():
    if name in rendered:
        policy(name, rendered[name], tls)


def sts_args(name):
    return find(rendered[name], "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["args"]


@check("consistency: helm defaults give the single overlay's exact args")
def _():
    a, b = sts_args("single"), sts_args("helm-default")
    return "" if a == b else f"single={a} helm={b}"


@check("consistency: helm TLS gives the tls overlay's exact args (+ extraArgs)")
def _():
    a, b = sts_args("tls"), sts_args("helm-full")
    return "" if a + ["--grpc-keepalive-interval=30m"] == b else f"tls={a} helm={b}"


alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())


@check("consistency: chart files/alerts.yaml is a copy of deploy/prometheus/alerts.yaml")
def _():
    same = (CHART / "files" / "alerts.yaml").read_bytes() == (DEPLOY / "prometheus" / "alerts.yaml").read_bytes()
    return "" if same else "differ: cp deploy/prometheus/alerts.yaml deploy/helm/engram/files/alerts.yaml"


@check("consistency: rendered PrometheusRules (kustomize, helm) carry alerts.yaml's groups")
def _():
    errs = []
    for name in ("monitoring", "helm-full"):
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


def swap_args(args, tmp, client_port, metrics_port, certs):
    """The manifest's args, with only the data dir, listen addresses and TLS paths swapped
    (and $(VAR) expanded, as the kubelet does)."""
    out = []
    for a in args:
        a = a.replace("$(POD_NAME)", "engram-0").replace("$(POD_NAMESPACE)", "engram")
        flag, _, val = a.partition("=")
        if flag == "--data-dir":
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


def run_engram(name, args):
    @check(f"engram: runs with the {name} args and /readyz answers 200")
    def _():
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
                      "--key-file", "--trusted-ca-file", "--name", "--advertise-client-urls")]
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
            # One gRPC call (Maintenance/Status, empty request) through curl's HTTP/2, like
            # `etcdctl endpoint status`: it also makes the grpc_server_* series appear.
            frame = tmp / "status.grpc"
            frame.write_bytes(b"\x00\x00\x00\x00\x00")
            curl = ["curl", "-s", "-o", "/dev/null", "-D", "-", "--max-time", "5", "--http2-prior-knowledge",
                    "-H", "content-type: application/grpc", "-H", "te: trailers", "--data-binary", f"@{frame}"]
            if tls:
                curl = [c for c in curl if c != "--http2-prior-knowledge"] + [
                    "--http2", "--cacert", str(certs / "ca.crt"), "--cert", str(certs / "client.crt"),
                    "--key", str(certs / "client.key")]
            r = run([*curl, f"{client}/etcdserverpb.Maintenance/Status"])
            if "grpc-status: 0" not in r.stdout:
                errs.append(f"gRPC Maintenance/Status failed: {r.stdout} {r.stderr}")
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
            return "; ".join(errs)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


for name in ("single", "tls", "helm-default", "helm-tls-no-client-auth"):
    if name in rendered:
        run_engram(f"{name} StatefulSet", sts_args(name))
try:
    run_engram("Dockerfile CMD", dockerfile_cmd())
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
