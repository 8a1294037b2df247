"""Offline checks for the custom resources in docker/kubernetes/components.

kubernetes-validate knows the built-in kinds only. These JSON schemas cover the fields of
KEDA's ScaledObject (keda.sh/v1alpha1) and Prometheus Operator's ServiceMonitor
(monitoring.coreos.com/v1) that the components use, written from each project's API reference:
required fields, types, and no unknown keys, so a misspelt field fails here, not in a cluster.
"""

from __future__ import annotations

from typing import Any

import jsonschema

_STR = {"type": "string"}
_INT = {"type": "integer"}


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props,
            "additionalProperties": False}  # fmt: skip


_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": _STR,
        "namespace": _STR,
        "labels": {"type": "object", "additionalProperties": _STR},
        "annotations": {"type": "object", "additionalProperties": _STR},
    },
    "additionalProperties": False,
}
_POLICY = _obj(["type", "value", "periodSeconds"], type={"enum": ["Pods", "Percent"]},
               value=_INT, periodSeconds=_INT)  # fmt: skip
_RULES = _obj([], stabilizationWindowSeconds=_INT, selectPolicy=_STR,
              policies={"type": "array", "items": _POLICY})  # fmt: skip

SCALED_OBJECT = _obj(
    ["apiVersion", "kind", "metadata", "spec"],
    apiVersion={"const": "keda.sh/v1alpha1"},
    kind={"const": "ScaledObject"},
    metadata=_METADATA,
    spec=_obj(
        ["scaleTargetRef", "triggers"],
        scaleTargetRef=_obj(
            ["name"], name=_STR, kind=_STR, apiVersion=_STR, envSourceContainerName=_STR
        ),
        minReplicaCount=_INT,
        maxReplicaCount=_INT,
        idleReplicaCount=_INT,
        pollingInterval=_INT,
        cooldownPeriod=_INT,
        advanced=_obj(
            [],
            restoreToOriginalReplicaCount={"type": "boolean"},
            horizontalPodAutoscalerConfig=_obj(
                [], name=_STR, behavior=_obj([], scaleUp=_RULES, scaleDown=_RULES)
            ),
        ),
        triggers={
            "type": "array",
            "minItems": 1,
            "items": _obj(
                ["type", "metadata"],
                type=_STR,
                name=_STR,
                metricType={"enum": ["AverageValue", "Value", "Utilization"]},
                metadata={"type": "object", "additionalProperties": _STR},
                authenticationRef=_obj(["name"], name=_STR, kind=_STR),
            ),
        },
    ),
)

SERVICE_MONITOR = _obj(
    ["apiVersion", "kind", "metadata", "spec"],
    apiVersion={"const": "monitoring.coreos.com/v1"},
    kind={"const": "ServiceMonitor"},
    metadata=_METADATA,
    spec=_obj(
        ["selector", "endpoints"],
        jobLabel=_STR,
        selector=_obj([], matchLabels={"type": "object", "additionalProperties": _STR}),
        namespaceSelector=_obj([], any={"type": "boolean"}, matchNames={"type": "array"}),
        endpoints={
            "type": "array",
            "minItems": 1,
            "items": _obj(
                [],
                port=_STR,
                path=_STR,
                scheme={"enum": ["http", "https"]},
                interval={"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                scrapeTimeout={"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
            ),
        },
    ),
)

SCHEMAS = {"ScaledObject": SCALED_OBJECT, "ServiceMonitor": SERVICE_MONITOR}


def validate(obj: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError (naming the path) unless `obj` fits its kind's schema."""
    jsonschema.validate(obj, SCHEMAS[obj["kind"]])
