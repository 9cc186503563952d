"""Render deploy/k8s kustomizations in Python, for tests on machines without kubectl.

Only the kustomize features deploy/k8s uses: ``resources`` (files and directories), ``namespace``,
``labels`` (``includeTemplates``), ``images``, ``configMapGenerator`` with ``files`` and
``generatorOptions.disableNameSuffixHash``, and ``patches`` holding JSON 6902 operations with a
``target``. Anything else raises, so a new feature in a kustomization cannot be silently ignored.
Where ``kubectl`` is installed, tests/infra/test_k8s_manifests.py checks that this renders the same
objects as ``kubectl kustomize``.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "namespace", "labels", "resources", "images", "generatorOptions",
             "configMapGenerator", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
                  "CustomResourceDefinition", "PriorityClass"}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class Unsupported(ValueError):
    pass


def render(directory: Path) -> list[dict[str, Any]]:
    directory = Path(directory)
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(k) - SUPPORTED
    if unknown:
        raise Unsupported(f"{directory}: kustomize features not supported here: {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for entry in k.get("resources", []):
        path = directory / entry
        if path.is_dir():
            objects += render(path)
        else:
            objects += [d for d in yaml.safe_load_all(path.read_text()) if d]
    objects += _generate(directory, k)
    for obj in objects:
        if k.get("namespace") and obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = k["namespace"]
        for spec in k.get("labels", []):
            _label(obj, spec)
        for image in k.get("images", []):
            _image(obj, image)
    for patch in k.get("patches", []):
        _patch(directory, objects, patch)
    return objects


def _generate(directory: Path, k: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    if k.get("configMapGenerator") and not (k.get("generatorOptions") or {}).get("disableNameSuffixHash"):
        raise Unsupported("configMapGenerator without disableNameSuffixHash (name hashing is not emulated)")
    for gen in k.get("configMapGenerator", []):
        if set(gen) - {"name", "files"}:
            raise Unsupported(f"configMapGenerator keys {sorted(set(gen) - {'name', 'files'})}")
        data = {}
        for item in gen["files"]:
            key, _, path = item.partition("=") if "=" in item else (Path(item).name, "", item)
            data[key] = (directory / path).read_text()
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    return out


def _label(obj: dict[str, Any], spec: dict[str, Any]) -> None:
    if spec.get("includeSelectors"):
        raise Unsupported("labels.includeSelectors")
    pairs = spec["pairs"]
    obj["metadata"].setdefault("labels", {}).update(pairs)
    if spec.get("includeTemplates") and obj["kind"] in POD_TEMPLATE_KINDS:
        obj["spec"]["template"].setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
        for claim in obj["spec"].get("volumeClaimTemplates", []):  # kustomize labels these too
            claim.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] in POD_TEMPLATE_KINDS:
        return obj["spec"]["template"]["spec"]
    if obj["kind"] == "Pod":
        return obj["spec"]
    return None


def _image(obj: dict[str, Any], rule: dict[str, Any]) -> None:
    spec = _pod_spec(obj)
    if spec is None:
        return
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        image = container["image"]
        name, tag = (image.rsplit(":", 1) + [""])[:2] if ":" in image.rsplit("/", 1)[-1] else (image, "")
        if name != rule["name"]:
            continue
        name = rule.get("newName", name)
        tag = rule.get("newTag", tag)
        container["image"] = f"{name}:{tag}" if tag else name


def _matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    checks = {"group": group, "version": version, "kind": obj["kind"], "name": obj["metadata"]["name"]}
    return all(target[key] == value for key, value in checks.items() if key in target)


def _patch(directory: Path, objects: list[dict[str, Any]], patch: dict[str, Any]) -> None:
    ops = yaml.safe_load((directory / patch["path"]).read_text())
    if not isinstance(ops, list):
        raise Unsupported(f"{patch['path']}: only JSON 6902 patches (a list of operations)")
    targets = [o for o in objects if _matches(o, patch["target"])]
    if not targets:
        raise ValueError(f"{patch['path']}: no object matches {patch['target']}")
    for obj in targets:
        for op in ops:
            _apply(obj, op)


def _apply(obj: dict[str, Any], op: dict[str, Any]) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
    parent: Any = obj
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    kind = op["op"]
    if kind in ("add", "replace"):
        value = copy.deepcopy(op["value"])
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if kind == "add":
                parent.insert(index, value)
            else:
                parent[index] = value
        else:
            if kind == "replace" and last not in parent:
                raise ValueError(f"replace of missing {op['path']}")
            parent[last] = value
    elif kind == "remove":
        del parent[int(last) if isinstance(parent, list) else last]
    else:
        raise Unsupported(f"JSON patch op {kind!r}")
