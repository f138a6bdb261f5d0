"""Generate the LLMChainApp CustomResourceDefinition from the pydantic models in `api`.

Pydantic emits JSON Schema 2020-12; the API server wants an OpenAPI v3.0 *structural* schema. The
conversion inlines `$ref`s, turns `anyOf: [X, null]` optionals into plain optional properties,
drops `title`s, turns `const` into a one-value `enum`, 2020-12 numeric exclusive bounds into
v3.0 booleans, and free-form objects into `x-kubernetes-preserve-unknown-fields`.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from llmchain_operator.api import (
    GROUP,
    KIND,
    MAX_NAME_LENGTH,
    NAME_NOT_A_LABEL,
    NAME_PATTERN,
    NAME_TOO_LONG,
    PLURAL,
    VERSION,
    LLMChainAppSpec,
    LLMChainAppStatus,
)

JsonSchema = dict[str, Any]

NAME_RULES = [
    {"rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH}", "message": NAME_TOO_LONG},
    {"rule": f"self.metadata.name.matches('{NAME_PATTERN}')", "message": NAME_NOT_A_LABEL},
]
"""The app's name becomes its children's names (see api.name_problems, which says the same)."""

DESCRIPTION = "An LLM chain app: a model, a chain, and how to serve, cache, scale and watch them."

# Keys of pydantic's output that a structural schema has no use for.
DROPPED_KEYS = {"title", "discriminator", "$defs"}


def _resolve(schema: JsonSchema, defs: dict[str, JsonSchema]) -> JsonSchema:
    """Inline a `$ref`, keeping sibling keys (description, default) of the referring schema."""
    if "$ref" not in schema:
        return schema
    target = defs[schema["$ref"].rsplit("/", 1)[-1]]
    siblings = {k: v for k, v in schema.items() if k != "$ref"}
    return {**target, **siblings}


def _strip_null(schema: JsonSchema) -> JsonSchema:
    """`anyOf: [X, {type: null}]` → X, carrying over description and default."""
    options = schema.get("anyOf")
    if not options:
        return schema
    non_null = [o for o in options if o.get("type") != "null"]
    if len(non_null) != 1:
        raise ValueError(f"cannot express anyOf {options!r} in a structural schema")
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    if rest.get("default", ...) is None:
        del rest["default"]
    return {**non_null[0], **rest}


def _flatten(options: list[JsonSchema], defs: dict[str, JsonSchema]) -> JsonSchema:
    """A `oneOf` of object kinds told apart by their `type` (chain steps) as one object: every
    kind's properties, those of all kinds required when all require them, and CEL rules for the
    rest: each kind's required fields, and fields only the kinds that have them may set.
    Defaults of fields not every kind has are dropped (the API server would set them on every
    kind); the server's models apply them."""
    kinds = [_convert(o, defs) for o in options]
    tags = [
        k["properties"]["type"].get("enum", [k["properties"]["type"].get("default")])[0]
        for k in kinds
    ]
    properties: JsonSchema = {}
    for kind in kinds:
        for name, sub in kind["properties"].items():
            properties.setdefault(name, dict(sub))
    properties["type"] = {**properties["type"], "enum": tags}
    everywhere = set.intersection(*(set(k["properties"]) for k in kinds))
    for name in set(properties) - everywhere:
        properties[name].pop("default", None)
    rules = []
    for tag, kind in zip(tags, kinds, strict=True):
        needed = [r for r in kind.get("required", []) if r not in ("type",)]
        needed = [r for r in needed if not all(r in k.get("required", []) for k in kinds)]
        if needed:
            test = " && ".join(f"has(self.{r})" for r in needed)
            rules.append(
                {
                    "rule": f"self.type != '{tag}' || ({test})",
                    "message": f"{tag} steps need {', '.join(needed)}",
                }
            )
    for name in sorted(set(properties) - everywhere):
        having = [t for t, k in zip(tags, kinds, strict=True) if name in k["properties"]]
        rules.append(
            {
                "rule": f"!has(self.{name}) || self.type in {having!r}".replace("'", "'"),
                "message": f"{name} is a field of {' and '.join(having)} steps only",
                "fieldPath": f".{name}",
            }
        )
    return {
        "type": "object",
        "properties": properties,
        "required": sorted(
            set.intersection(*(set(k.get("required", [])) for k in kinds)) - {"type"}
        ),
        "x-kubernetes-validations": rules,
    }


def _convert(schema: JsonSchema, defs: dict[str, JsonSchema]) -> JsonSchema:
    schema = _strip_null(_resolve(schema, defs))
    schema = _strip_null(_resolve(schema, defs))  # a ref inside the anyOf
    if "oneOf" in schema:
        rest = {k: v for k, v in schema.items() if k not in ("oneOf", *DROPPED_KEYS)}
        return {**_flatten(schema["oneOf"], defs), **rest}
    out: JsonSchema = {}
    for key, value in schema.items():
        if key in DROPPED_KEYS:
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, dict) and value:
                out[key] = _convert(value, defs)
            elif value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            # additionalProperties: false is the default for structural schemas: dropped
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        else:
            out[key] = value
    if (
        out.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
    ):
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def structural_schema(model: type[BaseModel]) -> JsonSchema:
    """The OpenAPI v3.0 structural schema of a pydantic model, as the API server accepts it."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(raw, raw.get("$defs", {}))


def build_crd() -> JsonSchema:
    """The whole CustomResourceDefinition object."""
    spec = structural_schema(LLMChainAppSpec)
    status = structural_schema(LLMChainAppStatus)
    ready = '.status.conditions[?(@.type=="Ready")].status'
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {
                "app.kubernetes.io/name": "llmchain-operator",
                "app.kubernetes.io/part-of": "llmchain-operator",
            },
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["lca"],
                "categories": ["all", "llmchain"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": DESCRIPTION,
                            "required": ["spec"],
                            "x-kubernetes-validations": NAME_RULES,
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.serving.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": [
                        {"name": "Ready", "type": "string", "jsonPath": ready},
                        {
                            "name": "Replicas",
                            "type": "integer",
                            "jsonPath": ".status.readyReplicas",
                        },
                        {
                            "name": "Quantization",
                            "type": "string",
                            "jsonPath": ".spec.model.quantization",
                        },
                        {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                }
            ],
        },
    }


def render_crd_yaml() -> str:
    header = (
        "# Generated by `make crds` (llmchain crd) from llmchain_operator/api.py: do not edit.\n"
    )
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)
