#!/usr/bin/env python3
"""Render, lint and inspect the tally chart with real Helm (helm-python-sdk embeds Helm 4).

No helm binary is needed: the venv of tests/requirements.txt has `helm-python-sdk`.

    python3 helm/chart.py render [-f values.yaml] [--set a.b=c] [--json] [--include-crds]
    python3 helm/chart.py lint   [-f values.yaml] [--set a.b=c]
    python3 helm/chart.py images [-f values.yaml] [--set global.imageRegistry=mirror.local]
    python3 helm/chart.py yaml2json FILE

`render` checks the values against values.schema.json first (as `helm install` and
`helm template` do), then prints the manifests as YAML, or with --json as one JSON object
{"objects": [...], "notes": "..."} (every object parsed). `images` prints every image the
chart references with these values, one per line: the list to mirror for an air-gapped
install. Exit status: 0 fine, 1 lint errors or a Helm failure, 2 values rejected by the schema.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

import helm_python as helm

CHART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tally")
KUBE_VERSION = "v1.20.2"


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merges `override` into `base` the way Helm merges -f files and --set."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def user_values(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for path in args.values or []:
        with open(path, encoding="utf-8") as f:
            values = merge(values, helm.values_from_yaml(f.read()))
    for text in args.values_json or []:
        values = merge(values, json.loads(text))
    for expr in args.set or []:
        values = merge(values, helm.parse_set_string(expr))
    for expr in args.set_string or []:
        values = merge(values, helm.parse_set_string_values(expr))
    return values


def split_documents(text: str) -> list[str]:
    docs = re.split(r"^---[ \t]*$", text, flags=re.MULTILINE)
    return [d for d in docs if re.search(r"^[a-zA-Z]", d, flags=re.MULTILINE)]


def parse_documents(text: str) -> list[dict[str, Any]]:
    return [helm.values_from_yaml(doc) for doc in split_documents(text)]


def render(args: argparse.Namespace) -> tuple[list[tuple[str, str]], str]:
    """(template path, manifest) pairs in a stable order, and NOTES.txt."""
    values = user_values(args)
    with helm.Chart.load(args.chart) as chart:
        try:
            chart.validate_schema(values)
        except helm.HelmValuesError as e:
            print(f"values rejected by values.schema.json: {e}", file=sys.stderr)
            sys.exit(2)
        rendered = chart.render(
            values, name=args.name, namespace=args.namespace, is_install=True
        )
        crds = [(c["filename"], c["data"]) for c in chart.crds] if args.include_crds else []
    notes = ""
    manifests = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            notes = rendered[path]
        elif split_documents(rendered[path]):
            manifests.append((path, rendered[path]))
    return crds + manifests, notes


def cmd_render(args: argparse.Namespace) -> int:
    manifests, notes = render(args)
    if args.json:
        objects = []
        for path, text in manifests:
            for obj in parse_documents(text):
                obj.setdefault("metadata", {})
                objects.append({"source": path, "object": obj})
        json.dump({"objects": objects, "notes": notes}, sys.stdout)
        print()
    else:
        for path, text in manifests:
            print(f"---\n# Source: {path}\n{text.strip()}")
    return 0


def cmd_lint(args: argparse.Namespace) -> int:
    report = helm.lint(
        args.chart,
        user_values(args),
        strict=args.strict,
        namespace=args.namespace,
        kube_version=KUBE_VERSION,
    )
    json.dump(report, sys.stdout, indent=2)
    print()
    severities = [m.get("severity", 0) for m in report.get("messages", [])]
    failed = bool(report.get("errors")) or any(s >= 3 for s in severities)
    if args.strict:
        failed = failed or any(s >= 2 for s in severities)
    return 1 if failed else 0


def images_of(obj: dict[str, Any]) -> list[str]:
    spec = obj.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or (spec if obj.get("kind") == "Pod" else {})
    containers = (pod.get("initContainers") or []) + (pod.get("containers") or [])
    return [c["image"] for c in containers if "image" in c]


def cmd_images(args: argparse.Namespace) -> int:
    manifests, _ = render(args)
    images: set[str] = set()
    for _, text in manifests:
        for obj in parse_documents(text):
            images.update(images_of(obj))
    for image in sorted(images):
        print(image)
    return 0


def cmd_yaml2json(args: argparse.Namespace) -> int:
    with open(args.file, encoding="utf-8") as f:
        json.dump(parse_documents(f.read()), sys.stdout)
    print()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func in [("render", cmd_render), ("lint", cmd_lint), ("images", cmd_images)]:
        p = sub.add_parser(name)
        p.set_defaults(func=func)
        p.add_argument("--chart", default=CHART, help="chart directory (default: helm/tally)")
        p.add_argument("-f", "--values", action="append", help="a values YAML file (repeatable)")
        p.add_argument("--values-json", action="append", help="values as a JSON object")
        p.add_argument("--set", action="append", help="a --set expression (repeatable)")
        p.add_argument("--set-string", action="append", help="a --set-string expression")
        p.add_argument("--name", default="tally", help="release name")
        p.add_argument("--namespace", default="tally", help="release namespace")
        if name == "render":
            p.add_argument("--json", action="store_true", help="print parsed objects as JSON")
            p.add_argument("--include-crds", action="store_true", help="also print crds/")
        if name == "images":
            p.set_defaults(include_crds=False)
        if name == "lint":
            p.add_argument("--strict", action="store_true", help="warnings fail too")
    p = sub.add_parser("yaml2json", help="print a multi-document YAML file as a JSON array")
    p.add_argument("file")
    p.set_defaults(func=cmd_yaml2json)
    args = parser.parse_args()
    try:
        return int(args.func(args))
    except helm.HelmError as e:
        print(f"helm: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
