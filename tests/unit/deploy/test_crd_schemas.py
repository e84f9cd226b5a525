"""The vendored CRD schemas: how they are converted, where they came from, what they reject."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import jsonschema
import pytest

SCHEMA_DIR = Path(__file__).resolve().parents[3] / "deploy" / "schemas"


@pytest.fixture(scope="module")
def converter(load_deploy_script: Callable[[Path, str], ModuleType]) -> ModuleType:
    return load_deploy_script(SCHEMA_DIR / "crd_to_jsonschema.py", "tagstream_crd_to_jsonschema")


def tiny_crd(schema: dict) -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "names": {"kind": "Widget", "plural": "widgets"},
            "versions": [
                {"name": "v1", "served": True, "schema": {"openAPIV3Schema": schema}},
                {"name": "v0", "served": False, "schema": {"openAPIV3Schema": schema}},
            ],
        },
    }


SCHEMA = {
    "type": "object",
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "spec": {
            "type": "object",
            "description": "dropped",
            "properties": {
                "replicas": {"type": "integer", "format": "int32"},
                "port": {"x-kubernetes-int-or-string": True},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {"type": "string"}}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "note": {"type": "string", "nullable": True},
            },
            "required": ["replicas"],
        },
    },
}


def widget(**spec: object) -> dict:
    return {"apiVersion": "example.com/v1", "kind": "Widget", "spec": {"replicas": 1, **spec}}


def test_converter_makes_served_versions_strict(converter: ModuleType) -> None:
    """Only served versions are written; unknown fields fail, apiVersion and kind are pinned."""
    schemas = converter.crd_to_schemas(tiny_crd(SCHEMA), "test")
    assert list(schemas) == ["widget-example.com-v1.json"]
    validator = jsonschema.Draft7Validator(schemas["widget-example.com-v1.json"])
    assert not list(validator.iter_errors(widget(port=8080, labels={"a": "b"}, note=None, free={"x": 1})))
    assert not list(validator.iter_errors(widget(port="metrics")))
    errors = [e.message for e in validator.iter_errors(widget(replica=2))]
    assert any("'replica' was unexpected" in m for m in errors), errors
    assert list(validator.iter_errors({**widget(), "kind": "Gadget"}))
    assert list(validator.iter_errors({**widget(), "apiVersion": "example.com/v2"}))
    assert list(validator.iter_errors(widget(port=1.5)))
    assert "description" not in json.dumps(schemas["widget-example.com-v1.json"])


def test_converter_refuses_a_non_crd(converter: ModuleType) -> None:
    """Feeding something other than a CRD is an error naming the kind found."""
    with pytest.raises(ValueError, match="not a CustomResourceDefinition: kind='Deployment'"):
        converter.crd_to_schemas({"kind": "Deployment"}, "test")


@pytest.mark.parametrize("path", sorted(SCHEMA_DIR.glob("*.json")), ids=lambda p: p.name)
def test_vendored_schema_is_valid_and_sourced(path: Path) -> None:
    """Each vendored schema is a valid draft-07 schema that names its upstream file and commit, and the README lists it."""
    schema = json.loads(path.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    assert "@" in schema["$comment"] and "converted by deploy/schemas/crd_to_jsonschema.py" in schema["$comment"]
    assert path.name in (SCHEMA_DIR / "README.md").read_text()


def test_scaledobject_schema_rejects_a_misspelt_field(validator: ModuleType) -> None:
    """The ScaledObject schema catches `maxReplicas` (should be maxReplicaCount) instead of pruning it."""
    obj = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "w"},
        "spec": {"scaleTargetRef": {"name": "w"}, "maxReplicas": 3, "triggers": [{"type": "kafka", "metadata": {}}]},
    }
    problems = [str(p) for p in validator.validate_schemas([obj], ["1.37"])]
    assert problems == [
        "ScaledObject/w: spec: Additional properties are not allowed ('maxReplicas' was unexpected) (keda.sh/v1alpha1 CRD schema)"
    ]


def test_converter_moves_inline_flags_that_python_rejects(converter: ModuleType) -> None:
    """RE2's `^(?i)x` becomes `(?i)^x` (same meaning, valid in Python's re); other patterns stay."""
    import re

    assert converter.portable_pattern("^(?i)(abort|warn)?$") == "(?i)^(abort|warn)?$"
    assert re.fullmatch(converter.portable_pattern("^(?i)(abort|warn)?$"), "WARN")
    assert converter.portable_pattern("^[0-9]+s$") == "^[0-9]+s$"


def test_prometheusrule_schema_rejects_a_misspelt_rule_field(validator: ModuleType) -> None:
    """The PrometheusRule schema catches `expression` (should be expr) in a rule."""
    obj = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "r"},
        "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expression": "up == 0"}]}]},
    }
    problems = " ".join(str(p) for p in validator.validate_schemas([obj], ["1.37"]))
    assert "'expression' was unexpected" in problems and "'expr' is a required property" in problems
