#!/usr/bin/env python3
"""Render a kustomization without kustomize, for the subset deploy/k8s uses.

    render.py DIR                 print the rendered documents (multi-document YAML)
    render.py --compare DIR FILE  exit 1 unless FILE (kustomize's rendering of DIR) holds the
                                  same documents as this script's rendering

Supported kustomization keys: `resources` (files, and directories holding a kustomization),
`namespace`, `images` (name, newName, newTag, digest) and `patches` given by `path` (strategic
merge patches: maps merge, lists of containers, volumes, mounts, ports and env entries merge by
their key, other lists are replaced, null removes a key). Anything else is an error, so the
kustomizations stay inside what this script renders the way kustomize does; deploy/check.sh
compares the two whenever a kustomize binary is there.
"""

import copy
import os
import sys

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PriorityClass", "StorageClass", "PersistentVolume"}
# Strategic merge keys of the lists the patches here touch (k8s.io/api patchMergeKey).
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name",
              "volumeMounts": "mountPath", "ports": "containerPort", "env": "name",
              "imagePullSecrets": "name"}


def fail(msg):
    sys.exit(f"render.py: {msg}")


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def merge(base, patch):
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(key, str) and key.startswith("$"):
            fail(f"strategic merge directive {key} is not supported")
        if value is None:
            out.pop(key, None)
        elif key in out and isinstance(value, list) and MERGE_KEYS.get(key):
            out[key] = merge_list(out[key], value, MERGE_KEYS[key])
        elif key in out:
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merge_list(base, patch, key):
    if not all(isinstance(i, dict) and key in i for i in base + patch):
        fail(f"cannot merge a list by {key!r}: an entry lacks it (render.py knows pod lists only)")
    out = copy.deepcopy(base)
    for item in patch:
        match = [i for i, b in enumerate(out) if b.get(key) == item.get(key)]
        if match:
            out[match[0]] = merge(out[match[0]], item)
        else:
            out.append(copy.deepcopy(item))
    return out


def set_image(container, images):
    ref = container.get("image", "")
    name, tag = ref, None
    if "@" in name:
        name = name.split("@", 1)[0]
    elif ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    for image in images:
        if image["name"] != name:
            continue
        new = image.get("newName", name)
        if "digest" in image:
            container["image"] = f"{new}@{image['digest']}"
        elif "newTag" in image:
            container["image"] = f"{new}:{image['newTag']}"
        else:
            container["image"] = new if tag is None else f"{new}:{tag}"


def render(directory):
    path = os.path.join(directory, "kustomization.yaml")
    with open(path) as f:
        k = yaml.safe_load(f)
    unknown = set(k) - SUPPORTED
    if unknown:
        fail(f"{path}: unsupported keys {sorted(unknown)} (render.py renders a subset)")
    docs = []
    for res in k.get("resources", []):
        full = os.path.join(directory, res)
        docs.extend(render(full) if os.path.isdir(full) else load_docs(full))
    for entry in k.get("patches", []):
        if set(entry) != {"path"}:
            fail(f"{path}: only `patches: - path: FILE` is supported")
        for patch in load_docs(os.path.join(directory, entry["path"])):
            ident = (patch["kind"], patch["metadata"]["name"])
            hits = [i for i, d in enumerate(docs) if (d["kind"], d["metadata"]["name"]) == ident]
            if len(hits) != 1:
                fail(f"{path}: patch {ident} matches {len(hits)} resources")
            docs[hits[0]] = merge(docs[hits[0]], patch)
    if "namespace" in k:
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED:
                d["metadata"]["namespace"] = k["namespace"]
    for d in docs:
        pod = d.get("spec", {}).get("template", {}).get("spec", {})
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            set_image(c, k.get("images", []))
    return docs


def key(doc):
    m = doc["metadata"]
    return (doc["kind"], m.get("namespace", ""), m["name"])


def main(argv):
    if len(argv) == 2:
        yaml.safe_dump_all(render(argv[1]), sys.stdout, sort_keys=True)
        return 0
    if len(argv) == 4 and argv[1] == "--compare":
        ours = {key(d): d for d in render(argv[2])}
        theirs = {key(d): d for d in load_docs(argv[3])}
        if ours == theirs:
            return 0
        for k in sorted(set(ours) | set(theirs)):
            if ours.get(k) != theirs.get(k):
                print(f"render.py and kustomize differ on {k}", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
