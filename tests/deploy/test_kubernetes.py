"""deploy/kubernetes: base and evaluation overlay validate against the Kubernetes 1.30 schemas
(kubernetes-validate, strict: unknown fields fail) and keep the pod's security properties.

kustomize is not installed, so :func:`render` applies the small subset of it that these files
use, and refuses any kustomization key it does not implement (so nothing is silently ignored):
``resources`` (files or directories with their own kustomization), ``images`` (newName/newTag),
``replicas`` and ``patches`` with strategic-merge patch files, matched to a resource by
apiVersion/kind/metadata.name. The merge (:func:`strategic_merge`) follows Kubernetes'
strategic-merge rules for what the patches here need: maps merge recursively; a ``null`` value
deletes the key; lists of objects with a known merge key (containers/initContainers/volumes/env by
``name``, volumeMounts by ``mountPath``, ports by ``containerPort``/``port``) merge element by
element, ``$patch: delete`` removes an element and a ``{$patch: replace}`` element makes the
patch's list replace the original; any other list is replaced; a patch whose top level says
``$patch: delete`` removes the whole resource.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

from deploy_support import DEPLOY  # noqa: E402

K8S = DEPLOY / "kubernetes"
K8S_VERSION = "1.30"
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "env": "name",
              "volumeMounts": "mountPath", "ports": ("containerPort", "port")}  # fmt: skip
SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "images", "replicas", "patches"}


def _key_of(field: str, item: dict[str, Any]) -> tuple[str, Any] | None:
    keys = MERGE_KEYS.get(field)
    for k in (keys,) if isinstance(keys, str) else keys or ():
        if k in item:
            return k, item[k]
    return None


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = strategic_merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        if {"$patch": "replace"} in patch:
            return [copy.deepcopy(p) for p in patch if p != {"$patch": "replace"}]
        out = list(base)
        for item in patch:
            key = _key_of(field, item)
            assert key, f"{field}: patch element without merge key: {item}"
            idx = next((i for i, b in enumerate(out) if _key_of(field, b) == key), None)
            if item.get("$patch") == "delete":
                assert idx is not None, f"{field}: nothing to delete for {key}"
                del out[idx]
            elif idx is None:
                out.append(copy.deepcopy(item))
            else:
                out[idx] = strategic_merge(out[idx], item, field)
        return out
    return copy.deepcopy(patch)


def _ident(doc: dict[str, Any]) -> tuple[str, str, str]:
    return doc["apiVersion"], doc["kind"], doc["metadata"]["name"]


def render(directory: Path) -> list[dict[str, Any]]:
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(kust) <= SUPPORTED_KEYS, set(kust) - SUPPORTED_KEYS
    docs: list[dict[str, Any]] = []
    for res in kust.get("resources", []):
        path = directory / res
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for p in kust.get("patches", []):
        assert set(p) == {"path"}, p  # no inline patches or targets in this subset
        patch = yaml.safe_load((directory / p["path"]).read_text())
        matches = [i for i, d in enumerate(docs) if _ident(d) == _ident(patch)]
        assert len(matches) == 1, f"{p['path']}: no single target {_ident(patch)}"
        if patch.get("$patch") == "delete":
            del docs[matches[0]]
        else:
            docs[matches[0]] = strategic_merge(docs[matches[0]], patch)
    for r in kust.get("replicas", []):
        hits = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")
                and d["metadata"]["name"] == r["name"]]  # fmt: skip
        assert hits, r
        for d in hits:
            d["spec"]["replicas"] = r["count"]
    for img in kust.get("images", []):
        hit = False
        for c in _all_containers(docs):
            name, _, tag = c["image"].rpartition(":")
            if name == img["name"]:
                c["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag)}"
                hit = True
        assert hit, img
    return docs


def _pod_specs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for d in docs:
        if d["kind"] == "Deployment":
            out.append(d["spec"]["template"]["spec"])
        elif d["kind"] == "CronJob":
            out.append(d["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return out


def _all_containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for spec in _pod_specs(docs)
            for c in spec.get("initContainers", []) + spec["containers"]]  # fmt: skip


def _deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    return dep


BASE = render(K8S / "base")
EVALUATION = render(K8S / "overlays" / "evaluation")


def test_schema_version_is_shipped_offline():
    assert K8S_VERSION in {v.rsplit(".", 1)[0] for v in kubernetes_validate.utils.all_versions()}


@pytest.mark.parametrize("name,docs", [("base", BASE), ("evaluation", EVALUATION)])
def test_every_resource_validates_strictly(name, docs):
    assert docs
    for d in docs:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)


def test_validation_has_teeth():
    dep = copy.deepcopy(_deployment(BASE))
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)


def test_base_has_the_expected_resources():
    kinds = sorted(d["kind"] for d in BASE)
    assert kinds == sorted(["ConfigMap", "Deployment", "Service", "Service", "PodDisruptionBudget",
                            "HorizontalPodAutoscaler", "NetworkPolicy", "CronJob"])  # fmt: skip
    (hpa,) = [d for d in BASE if d["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


@pytest.mark.parametrize("name,docs", [("base", BASE), ("evaluation", EVALUATION)])
def test_pods_are_locked_down(name, docs):
    for spec in _pod_specs(docs):
        sc = spec["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
    for c in _all_containers(docs):
        csc = c["securityContext"]
        assert csc["readOnlyRootFilesystem"] is True, c["name"]
        assert csc["allowPrivilegeEscalation"] is False, c["name"]
        assert csc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert "add" not in csc["capabilities"]


@pytest.mark.parametrize("name,docs", [("base", BASE), ("evaluation", EVALUATION)])
def test_probes_and_graceful_stop(name, docs):
    spec = _deployment(docs)["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/ping"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    sleep_cmd = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep_cmd[0] == "/bin/sleep"
    pre_stop_s = int(sleep_cmd[1])
    drain_s = 10  # the proxy's graceful stop (deploy/OPERATIONS.md)
    assert spec["terminationGracePeriodSeconds"] >= pre_stop_s + drain_s
    # Everything the proxy writes is a mounted volume; the rest of the tree is read-only.
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert {"/var/lib/xksproxy", "/tmp"} <= set(mounts)
    for path, m in mounts.items():
        if path not in ("/var/lib/xksproxy", "/tmp"):
            assert m.get("readOnly") is True, path


def test_base_takes_config_and_secrets_from_configmap_and_secrets():
    dep = _deployment(BASE)
    spec = dep["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["config"]["configMap"]["name"] == "xksproxy-config"
    assert vols["tls"]["secret"]["secretName"] == "xksproxy-tls"
    (c,) = spec["containers"]
    secret_env = {e["name"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    (cm,) = [d for d in BASE if d["kind"] == "ConfigMap"]
    toml_text = cm["data"]["xksproxy.toml"]
    import tomllib

    config = tomllib.loads(toml_text)
    refs = {config["hsm"][0]["pin"], config["audit"]["key"]}
    refs |= {c["secret"] for s in config["keystore"] for c in s["credentials"]}
    assert {r.removeprefix("env:") for r in refs} == secret_env
    assert config["server"]["workers"] >= 1  # 0 would mean one per node core
    assert all(r.startswith("env:") for r in refs)  # no secret in the ConfigMap itself


def test_network_policy_opens_only_the_xks_and_metrics_ports():
    (np,) = [d for d in BASE if d["kind"] == "NetworkPolicy"]
    assert np["spec"]["policyTypes"] == ["Ingress"]
    rules = np["spec"]["ingress"]
    ports = sorted(p["port"] for r in rules for p in r["ports"])
    assert ports == [8443, 9464]
    metrics_rule = next(r for r in rules if r["ports"][0]["port"] == 9464)
    peer = metrics_rule["from"][0]
    assert "namespaceSelector" in peer and "podSelector" in peer


def test_key_maintenance_cronjob_runs_both_commands():
    (cj,) = [d for d in BASE if d["kind"] == "CronJob"]
    assert cj["spec"]["suspend"] is False  # the commands exist (issue 12)
    script = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert script.index("keys rotate-due") < script.index("keys destroy-due")


def test_evaluation_overlay():
    dep = _deployment(EVALUATION)
    assert dep["spec"]["replicas"] == 1
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["image"].endswith(":0.1.0-eval")
    assert c["args"] == ["serve", "--state-dir", "/var/lib/xksproxy"]
    assert "initContainers" not in spec or not spec["initContainers"]
    assert not any("valueFrom" in e for e in c.get("env", []))  # no Secrets needed
    assert {v["name"] for v in spec["volumes"]} == {"state", "tmp"}
    kinds = {d["kind"] for d in EVALUATION}
    assert not kinds & {"HorizontalPodAutoscaler", "PodDisruptionBudget", "CronJob", "ConfigMap"}
    svc = next(
        d for d in EVALUATION if d["kind"] == "Service" and d["metadata"]["name"] == "xksproxy"
    )
    assert svc["spec"]["type"] == "ClusterIP" and "annotations" not in svc["metadata"]


def test_merge_rules():
    base = {"a": {"b": 1, "c": 2}, "env": [{"name": "X", "value": "1"}, {"name": "Y"}],
            "args": [1, 2]}  # fmt: skip
    patch = {"a": {"c": None, "d": 3}, "env": [{"name": "Y", "$patch": "delete"},
             {"name": "Z", "value": "z"}], "args": [3]}  # fmt: skip
    assert strategic_merge(base, patch) == {
        "a": {"b": 1, "d": 3}, "env": [{"name": "X", "value": "1"}, {"name": "Z", "value": "z"}],
        "args": [3]}  # fmt: skip
    assert strategic_merge(base, {"env": [{"$patch": "replace"}, {"name": "Q"}]})["env"] == [
        {"name": "Q"}]  # fmt: skip
