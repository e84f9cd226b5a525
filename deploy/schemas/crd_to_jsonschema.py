"""Turn a CustomResourceDefinition's openAPIV3Schema into a JSON Schema file per served version.

    python deploy/schemas/crd_to_jsonschema.py CRD.yaml --source "owner/repo path@commit" \
        [--out-dir deploy/schemas]

Writes ``<kind>-<group>-<version>.json`` (lower case), e.g. ``scaledobject-keda.sh-v1alpha1.json``.
What changes on the way, so that a JSON Schema validator judges a manifest as the API server does:

- ``apiVersion`` and ``kind`` become constants: a manifest of another kind or version fails.
- An object that lists ``properties`` and no ``additionalProperties`` gets
  ``additionalProperties: false``: a misspelt field fails, as it does under kubectl's default
  server-side strict field validation (Kubernetes >= 1.27), instead of being pruned silently.
  ``x-kubernetes-preserve-unknown-fields: true`` keeps an object open.
- ``x-kubernetes-int-or-string`` becomes ``anyOf: [integer, string]`` where the CRD did not
  spell that out; ``nullable: true`` adds ``"null"`` to the type.
- ``description`` and the other ``x-kubernetes-*`` markers are dropped (no effect on validity).
- A ``pattern`` with inline flags after ``^`` (``^(?i)abort``, fine in Go's RE2, an error in
  Python's re) gets them moved to the front (``(?i)^abort``), which means the same in both.

Only PyYAML and the standard library are needed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

JSON_SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"


def portable_pattern(pattern: str) -> str:
    """``^(?i)...`` -> ``(?i)^...``: Go's RE2 takes inline flags anywhere, Python's re only first.

    Both mean the same; moved, the pattern works in both (jsonschema checks patterns with re).
    """
    match = re.match(r"^\^(\(\?[a-zA-Z]+\))", pattern)
    return match.group(1) + "^" + pattern[match.end():] if match else pattern


def convert_node(node: Any) -> Any:
    """Convert one openAPIV3Schema node (recursively) to its JSON Schema equivalent."""
    if isinstance(node, list):
        return [convert_node(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "description" or key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: convert_node(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            out[key] = convert_node(value)
        elif key == "pattern" and isinstance(value, str):
            out[key] = portable_pattern(value)
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    open_object = node.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in out and "additionalProperties" not in out and not open_object:
        out["additionalProperties"] = False
    return out


def crd_to_schemas(crd: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """One JSON Schema per served version of ``crd``, keyed by output file name."""
    if crd.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"not a CustomResourceDefinition: kind={crd.get('kind')!r}")
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    schemas = {}
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        schema = convert_node(version["schema"]["openAPIV3Schema"])
        schema["properties"]["apiVersion"] = {"const": f"{group}/{version['name']}"}
        schema["properties"]["kind"] = {"const": kind}
        schema["required"] = sorted({"apiVersion", "kind", *schema.get("required", [])})
        schema = {
            "$schema": JSON_SCHEMA_DIALECT,
            "$comment": f"{kind} ({group}/{version['name']}) from {source}; "
            "converted by deploy/schemas/crd_to_jsonschema.py",
            **schema,
        }
        schemas[f"{kind.lower()}-{group}-{version['name']}.json"] = schema
    return schemas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crd", type=Path, help="CustomResourceDefinition YAML file")
    parser.add_argument("--source", required=True, help="where the CRD came from (repo, path, commit)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent)
    args = parser.parse_args(argv)
    crd = yaml.safe_load(args.crd.read_text(encoding="utf-8"))
    for name, schema in crd_to_schemas(crd, args.source).items():
        path = args.out_dir / name
        path.write_text(json.dumps(schema, indent=1, sort_keys=False) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
