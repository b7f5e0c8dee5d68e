#!/usr/bin/env bash
# Validates deploy/*.yaml:
#  1. against the Kubernetes OpenAPI schema, strictly (unknown fields are errors), with
#     kubernetes-validate from PyPI (installed into $VALIDATE_VENV, default .cache/venv-validate);
#  2. against the launcher pod's own rules (docs/packaging.md, "What the pod needs and why"):
#     capabilities drop ALL and add exactly what the pod's bindings and libvirtd need (none for
#     passt), port 67 through the pod sysctl net.ipv4.ip_unprivileged_port_start instead of
#     NET_BIND_SERVICE, allowPrivilegeEscalation false, the device plugin resources, the emptyDirs,
#     terminationGracePeriodSeconds = the VMI's + 15, the readiness probe `launcher status`,
#     terminationMessagePath, the VMI from a ConfigMap;
#  3. the VMI in each ConfigMap with `launcher validate --strict` (the launcher accepts it);
#  4. negative cases: mutated copies (a typo'd field, a wrong type, a forbidden capability, ...)
#     must each be rejected, so the checks above can fail.
# Usage: scripts/validate-manifests.sh [FILE...]   (default deploy/*.yaml). Prints "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=${K8S_VERSION:-1.35.0}
VALIDATOR='kubernetes-validate==1.37.0'
VENV=${VALIDATE_VENV:-$PWD/.cache/venv-validate}

log() { printf '[validate-manifests] %s\n' "$*" >&2; }

if [[ ! -x $VENV/bin/kubernetes-validate ]] || ! "$VENV/bin/pip" show -q kubernetes-validate >/dev/null 2>&1; then
  log "installing $VALIDATOR into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "$VALIDATOR"
fi

# The launcher itself checks the VMIs inside the ConfigMaps (`launcher validate --strict`).
# LAUNCHER_BIN overrides; otherwise the debug build (a no-op after `cargo test` in CI).
if [[ -z ${LAUNCHER_BIN:-} ]]; then
  cargo build --quiet --locked -p launcher --bin launcher
  LAUNCHER_BIN=$PWD/target/debug/launcher
fi
export LAUNCHER_BIN

if (($#)); then files=("$@"); else files=(deploy/*.yaml); fi
((${#files[@]})) || { log "no manifests"; exit 1; }

exec "$VENV/bin/python" - "$K8S_VERSION" "${files[@]}" <<'PY'
import copy, io, os, subprocess, sys
import yaml
import kubernetes_validate
from kubernetes_validate.utils import ValidationError, SchemaNotFoundError, InvalidSchemaError

k8s_version, files = sys.argv[1], sys.argv[2:]
passed = failed = 0

# Capabilities by reason (docs/packaging.md, "What the pod needs and why"): the pod must add
# exactly the union of the reasons that apply, after dropping ALL.
NET_CAPS = {"NET_ADMIN", "NET_RAW"}              # tap-based bindings: plumbing, raw sockets (RA)
ROOT_LIBVIRT_CAPS = {"SETPCAP", "DAC_OVERRIDE"}  # libvirtd as root probes qemu (measured)
# The DHCP servers' ports (67, 547) without NET_BIND_SERVICE: this pod-level (safe, namespaced)
# sysctl must make port 67 unprivileged.
PORT_SYSCTL, DHCP_PORT = "net.ipv4.ip_unprivileged_port_start", 67
RT_CAPS = {"SYS_NICE"}                                               # realtime / dedicated CPUs
ALLOWED_CAPS = NET_CAPS | ROOT_LIBVIRT_CAPS | RT_CAPS
KVM, TUN = "devices.kubevirt.io/kvm", "devices.kubevirt.io/tun"
GRACE_MARGIN = 15

def schema_errors(doc):
    """Strict OpenAPI validation; returns a list of messages (empty = valid)."""
    try:
        kubernetes_validate.validate(doc, k8s_version, strict=True)
        return []
    except ValidationError as e:
        path = "/".join(str(p) for p in e.path)
        return [f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}: {path}: {e.message}"]
    except (SchemaNotFoundError, InvalidSchemaError) as e:
        return [f"{doc.get('kind')}: no schema: {e}"]

def launcher_rules(docs):
    """The launcher pod's own rules. Returns a list of violations."""
    errs = []
    cms = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ConfigMap"}
    pods = [d for d in docs if d.get("kind") == "Pod"]
    if len(pods) != 1:
        return [f"expected exactly one Pod, found {len(pods)}"]
    pod = pods[0]
    spec = pod["spec"]
    c = next((c for c in spec.get("containers", []) if c.get("name") == "compute"), None)
    if c is None:
        return ["no container named compute"]
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}

    # The VMI, from a ConfigMap mounted where LAUNCHER_VMI points.
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    vmi_path = env.get("LAUNCHER_VMI")
    vmi = None
    if not vmi_path:
        errs.append("compute: env LAUNCHER_VMI is not set")
    else:
        d, key = vmi_path.rsplit("/", 1)
        m = mounts.get(d)
        v = vols.get(m["name"]) if m else None
        cm = cms.get(v["configMap"]["name"]) if v and "configMap" in v else None
        if cm is None or key not in cm.get("data", {}):
            errs.append(f"LAUNCHER_VMI={vmi_path} is not a key of a ConfigMap mounted at {d}")
        else:
            vmi = yaml.safe_load(cm["data"][key])
            if vmi.get("kind") != "VirtualMachineInstance":
                errs.append(f"ConfigMap {cm['metadata']['name']}/{key} is not a VirtualMachineInstance")

    # Capabilities: drop ALL; add only what the bindings need.
    sc = c.get("securityContext", {})
    caps = sc.get("capabilities", {})
    if caps.get("drop") != ["ALL"]:
        errs.append(f"capabilities.drop must be [ALL], is {caps.get('drop')}")
    added = set(caps.get("add", []))
    if added - ALLOWED_CAPS:
        errs.append(f"capabilities.add has {sorted(added - ALLOWED_CAPS)}: only {sorted(ALLOWED_CAPS)} are allowed")
    if sc.get("privileged"):
        errs.append("privileged must not be set")
    if sc.get("allowPrivilegeEscalation") is not False:
        errs.append("allowPrivilegeEscalation must be false")
    bindings = set()
    realtime = False
    if vmi:
        for i in vmi["spec"]["domain"]["devices"].get("interfaces", []):
            bindings |= {k for k in ("bridge", "masquerade", "macvtap", "sriov", "passt") if k in i}
            if "binding" in i:
                bindings.add(i["binding"]["name"])
        cpu = vmi["spec"]["domain"].get("cpu", {})
        realtime = "realtime" in cpu or cpu.get("dedicatedCpuPlacement", False)
    needs_net = bool(bindings - {"passt"})
    uid = sc.get("runAsUser", spec.get("securityContext", {}).get("runAsUser"))
    as_root = uid in (None, 0)
    if needs_net and not as_root:
        errs.append(f"bindings {sorted(bindings)} plumb the pod network: the container must run as root")
    if not needs_net and (as_root or not sc.get("runAsNonRoot")):
        errs.append("the passt binding plumbs nothing: run as non-root (runAsUser != 0, runAsNonRoot: true)")
    want = (NET_CAPS if needs_net else set()) | (ROOT_LIBVIRT_CAPS if as_root else set()) \
        | (RT_CAPS if realtime else set())
    if added != want and not (added - ALLOWED_CAPS):
        why = "; ".join(f"{c}: {'missing' if c in want else 'not needed'}" for c in sorted(added ^ want))
        errs.append(f"capabilities.add must be exactly {sorted(want)} for bindings {sorted(bindings)}, "
                    f"{'root' if as_root else 'non-root'}, realtime={realtime} ({why})")

    # Port 67 for the DHCP servers through the pod's sysctl (tap-based bindings only).
    sysctls = {x.get("name"): x.get("value") for x in spec.get("securityContext", {}).get("sysctls", [])}
    if needs_net:
        v = sysctls.get(PORT_SYSCTL)
        if v is None or not str(v).isdigit() or int(v) > DHCP_PORT:
            errs.append(f"securityContext.sysctls must set {PORT_SYSCTL} <= {DHCP_PORT} (the DHCP server's port, "
                        f"instead of NET_BIND_SERVICE), is {v}")

    # Devices through the device plugins: kvm always, tun for tap-based bindings.
    limits = c.get("resources", {}).get("limits", {})
    if str(limits.get(KVM)) != "1":
        errs.append(f"limits[{KVM}] must be 1")
    if needs_net and str(limits.get(TUN)) != "1":
        errs.append(f"limits[{TUN}] must be 1 for tap-based bindings")
    if not needs_net and TUN in limits:
        errs.append(f"limits[{TUN}] is not needed by passt")
    for v in spec.get("volumes", []):
        if "hostPath" in v and v["hostPath"].get("path", "").startswith("/dev"):
            errs.append(f"volume {v['name']}: devices come from the device plugin, not hostPath")

    # emptyDirs for the launcher's private state and libvirt's sockets.
    for path in ("/var/run/kubevirt-private", "/var/run/libvirt"):
        m = mounts.get(path)
        if not m or "emptyDir" not in vols.get(m["name"], {}):
            errs.append(f"{path} must be an emptyDir mount")

    # Grace period: the VMI's (default 30) + the margin for destroy and teardown.
    if vmi is not None:
        want = vmi["spec"].get("terminationGracePeriodSeconds", 30) + GRACE_MARGIN
        if spec.get("terminationGracePeriodSeconds") != want:
            errs.append(f"terminationGracePeriodSeconds must be the VMI's + {GRACE_MARGIN} = {want}, "
                        f"is {spec.get('terminationGracePeriodSeconds')}")

    probe = c.get("readinessProbe", {}).get("exec", {}).get("command")
    if probe != ["/usr/bin/launcher", "status"]:
        errs.append(f"readinessProbe must exec [/usr/bin/launcher, status], is {probe}")
    if c.get("terminationMessagePath") != "/dev/termination-log":
        errs.append("terminationMessagePath must be /dev/termination-log")
    if c.get("command") or c.get("args"):
        errs.append("command/args must not override the image's ENTRYPOINT (launcher run)")
    return errs

def launcher_validate(vmi_text):
    """`launcher validate --strict` on a VMI; returns a list of messages (empty = accepted)."""
    r = subprocess.run([os.environ["LAUNCHER_BIN"], "validate", "--strict", "--log-format", "text", "--vmi", "-"],
                       input=vmi_text, capture_output=True, text=True)
    return [] if r.returncode == 0 else [f"launcher validate exit {r.returncode}: {(r.stderr or r.stdout).strip()[:300]}"]

def vmi_texts(docs):
    return [(d["metadata"]["name"], k, v) for d in docs if d.get("kind") == "ConfigMap"
            for k, v in d.get("data", {}).items() if k.endswith((".yaml", ".yml", ".json"))]

def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}")
        for line in detail.splitlines():
            print(f"       | {line}")

def all_errors(docs):
    errs = []
    for d in docs:
        errs += schema_errors(d)
    return errs + launcher_rules(docs)

def pod_of(docs):
    return next(d for d in docs if d.get("kind") == "Pod")

def compute(docs):
    return pod_of(docs)["spec"]["containers"][0]

def rename(obj, old, new):
    obj[new] = obj.pop(old)

# Each mutation must be rejected, by the schema or by the launcher rules.
MUTATIONS = [
    ("typo'd field terminationGracePeriodSecond", lambda ds: rename(pod_of(ds)["spec"], "terminationGracePeriodSeconds", "terminationGracePeriodSecond")),
    ("typo'd field securityContxt", lambda ds: rename(compute(ds), "securityContext", "securityContxt")),
    ("typo'd field in a probe (comand)", lambda ds: rename(compute(ds)["readinessProbe"]["exec"], "command", "comand")),
    ("wrong type: terminationGracePeriodSeconds as a string", lambda ds: pod_of(ds)["spec"].__setitem__("terminationGracePeriodSeconds", "45s")),
    ("unknown capability list key (adds)", lambda ds: rename(compute(ds)["securityContext"]["capabilities"], "drop", "drops")),
    ("capability SYS_ADMIN added", lambda ds: compute(ds)["securityContext"]["capabilities"].setdefault("add", []).append("SYS_ADMIN")),
    ("capabilities not dropped", lambda ds: compute(ds)["securityContext"]["capabilities"].pop("drop")),
    ("grace period without margin", lambda ds: pod_of(ds)["spec"].__setitem__("terminationGracePeriodSeconds", 30)),
    ("no kvm device resource", lambda ds: compute(ds)["resources"]["limits"].pop("devices.kubevirt.io/kvm")),
    ("libvirt runtime dir not an emptyDir", lambda ds: [v.pop("emptyDir") or v.__setitem__("hostPath", {"path": "/var/run/libvirt"}) for v in pod_of(ds)["spec"]["volumes"] if v["name"] == "libvirt-runtime"]),
    ("readiness probe not launcher status", lambda ds: compute(ds)["readinessProbe"]["exec"].__setitem__("command", ["true"])),
    ("ENTRYPOINT overridden", lambda ds: compute(ds).__setitem__("command", ["/bin/sh"])),
    ("SYS_NICE for a VMI without realtime or dedicated CPUs", lambda ds: compute(ds)["securityContext"]["capabilities"].setdefault("add", []).append("SYS_NICE")),
    ("a device as a hostPath volume", lambda ds: pod_of(ds)["spec"]["volumes"].append({"name": "kvm", "hostPath": {"path": "/dev/kvm"}})),
]
# Mutations that only make sense for one kind of pod: "tap" (bridge, masquerade: NET_ADMIN/NET_RAW
# and tun) or "passt" (no capability, no tun).
MUTATIONS_BY_KIND = {
    "tap": [
        ("no NET_RAW for a tap-based binding", lambda ds: compute(ds)["securityContext"]["capabilities"]["add"].remove("NET_RAW")),
        ("no tun device for a tap-based binding", lambda ds: compute(ds)["resources"]["limits"].pop("devices.kubevirt.io/tun")),
        ("NET_BIND_SERVICE (the sysctl opens port 67)", lambda ds: compute(ds)["securityContext"]["capabilities"]["add"].append("NET_BIND_SERVICE")),
        ("SETUID (qemu runs as libvirtd's own uid)", lambda ds: compute(ds)["securityContext"]["capabilities"]["add"].append("SETUID")),
        ("no port sysctl for the DHCP server", lambda ds: pod_of(ds)["spec"]["securityContext"].pop("sysctls")),
        ("the port sysctl above 67", lambda ds: pod_of(ds)["spec"]["securityContext"]["sysctls"][0].__setitem__("value", "1024")),
        ("no SETPCAP for libvirtd as root", lambda ds: compute(ds)["securityContext"]["capabilities"]["add"].remove("SETPCAP")),
        ("no DAC_OVERRIDE for libvirtd as root", lambda ds: compute(ds)["securityContext"]["capabilities"]["add"].remove("DAC_OVERRIDE")),
        ("privilege escalation allowed", lambda ds: compute(ds)["securityContext"].__setitem__("allowPrivilegeEscalation", True)),
        ("a tap-based binding as non-root", lambda ds: compute(ds)["securityContext"].update(runAsUser=107, runAsNonRoot=True)),
    ],
    "passt": [
        ("NET_ADMIN for the passt binding", lambda ds: compute(ds)["securityContext"]["capabilities"].setdefault("add", []).append("NET_ADMIN")),
        ("SETUID for a non-root pod", lambda ds: compute(ds)["securityContext"]["capabilities"].setdefault("add", []).append("SETUID")),
        ("the passt pod as root", lambda ds: compute(ds)["securityContext"].update(runAsUser=0, runAsNonRoot=False)),
    ],
}

for f in files:
    with open(f) as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d]
    for d in docs:
        errs = schema_errors(d)
        check(f"{f}: {d['kind']} {d['metadata']['name']} is valid Kubernetes {k8s_version} (strict)", not errs, "\n".join(errs))
    errs = launcher_rules(docs)
    check(f"{f}: follows the launcher pod's rules", not errs, "\n".join(errs))
    for cm, key, text in vmi_texts(docs):
        errs = launcher_validate(text)
        check(f"{f}: ConfigMap {cm}/{key} passes `launcher validate --strict`", not errs, "\n".join(errs))
        bad = text.replace("terminationGracePeriodSeconds", "terminationGracePeriodSecond", 1)
        errs = launcher_validate(bad)
        check(f"{f}: `launcher validate --strict` rejects a typo'd field in {cm}/{key}", bool(errs),
              "accepted a VMI that must be rejected")
    kind = "passt" if compute(docs).get("securityContext", {}).get("runAsNonRoot") else "tap"
    for what, mutate in MUTATIONS + MUTATIONS_BY_KIND[kind]:
        ds = copy.deepcopy(docs)
        mutate(ds)
        errs = all_errors(ds)
        check(f"{f}: rejects {what}", bool(errs), "accepted a manifest that must be rejected")
        if errs:
            print(f"       ({errs[0][:150]})")

print(f"validate-manifests: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
