"""The emulator's built-in validation refuses what a v1.32 apiserver refuses, with the same 422 message.

One row per rule; `cite` names the Kubernetes function the rule mirrors. The rows run in-process against the store
(the HTTP layer answers the same ApiError as a Status; tests/sandbox/test_emulator_fidelity.py checks that over HTTP).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from kubellm_emulator import ApiError, ObjectStore
from kubellm_emulator.validation import canonical_quantity

JsonObject = dict[str, Any]


def deployment() -> JsonObject:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x", "labels": {"app": "x"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "x"}},
            "template": {
                "metadata": {"labels": {"app": "x"}},
                "spec": {
                    "containers": [
                        {
                            "name": "server",
                            "image": "kubellm:dev",
                            "ports": [{"name": "http", "containerPort": 8000}],
                            "env": [{"name": "A", "value": "1"}],
                            "volumeMounts": [{"name": "models", "mountPath": "/models"}],
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
                            "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "2"}},
                        }
                    ],
                    "volumes": [{"name": "models", "emptyDir": {}}],
                },
            },
        },
    }


def service() -> JsonObject:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"selector": {"app": "x"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }


def container(obj: JsonObject) -> JsonObject:
    spec: JsonObject = obj["spec"]["template"]["spec"]["containers"][0]
    return spec


def pod_spec(obj: JsonObject) -> JsonObject:
    spec: JsonObject = obj["spec"]["template"]["spec"]
    return spec


def _set(path: str, value: Any) -> Callable[[JsonObject], None]:
    def mutate(obj: JsonObject) -> None:
        parts = path.split(".")
        target = obj
        for part in parts[:-1]:
            target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
        target[parts[-1]] = value

    return mutate


DEPLOYMENT = 'Deployment.apps "x" is invalid: '
SERVICE = 'Service "x" is invalid: '

# (id, the Kubernetes rule, base object, mutation, the whole message, the first cause's reason)
ROWS: list[tuple[str, str, Callable[[], JsonObject], Callable[[JsonObject], None], str, str]] = [
    (
        "selector-mismatch",
        "apps ValidateDeploymentSpec: selector.Matches(template.Labels)",
        deployment,
        _set("spec.template.metadata.labels", {"app": "y"}),
        DEPLOYMENT + 'spec.template.metadata.labels: Invalid value: map[string]string{"app":"y"}: '
        "`selector` does not match template `labels`",
        "FieldValueInvalid",
    ),
    (
        "selector-required",
        "apps ValidateDeploymentSpec: field.Required(selector)",
        deployment,
        lambda obj: obj["spec"].pop("selector"),
        DEPLOYMENT + "spec.selector: Required value",
        "FieldValueRequired",
    ),
    (
        "recreate-with-rolling-update",
        "apps ValidateDeploymentStrategy: Recreate forbids rollingUpdate",
        deployment,
        _set("spec.strategy", {"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}),
        DEPLOYMENT + "spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'Recreate'",
        "FieldValueForbidden",
    ),
    (
        "strategy-type",
        "apps ValidateDeploymentStrategy: field.NotSupported(type)",
        deployment,
        _set("spec.strategy", {"type": "BlueGreen"}),
        DEPLOYMENT
        + 'spec.strategy.type: Unsupported value: "BlueGreen": supported values: "Recreate", "RollingUpdate"',
        "FieldValueNotSupported",
    ),
    (
        "surge-and-unavailable-zero",
        "apps ValidateRollingUpdateDeployment: maxUnavailable may not be 0 when maxSurge is 0",
        deployment,
        _set("spec.strategy", {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}),
        DEPLOYMENT + "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: "
        'intstr.IntOrString{Type:0, IntVal:0, StrVal:""}: may not be 0 when `maxSurge` is 0',
        "FieldValueInvalid",
    ),
    (
        "unavailable-over-100",
        "apps IsNotMoreThan100Percent(maxUnavailable)",
        deployment,
        _set("spec.strategy", {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "150%"}}),
        DEPLOYMENT + "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: "
        'intstr.IntOrString{Type:1, IntVal:0, StrVal:"150%"}: must not be greater than 100%',
        "FieldValueInvalid",
    ),
    (
        "progress-deadline-not-above-min-ready",
        "apps ValidateDeploymentSpec: progressDeadlineSeconds must be greater than minReadySeconds",
        deployment,
        lambda obj: obj["spec"].update(progressDeadlineSeconds=10, minReadySeconds=10),
        DEPLOYMENT + "spec.progressDeadlineSeconds: Invalid value: 10: must be greater than minReadySeconds",
        "FieldValueInvalid",
    ),
    (
        "negative-replicas",
        "apps ValidateDeploymentSpec: ValidateNonnegativeField(replicas)",
        deployment,
        _set("spec.replicas", -1),
        DEPLOYMENT + "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
        "FieldValueInvalid",
    ),
    (
        "restart-policy",
        "apps ValidatePodTemplateSpecForReplicaSet: restartPolicy must be Always",
        deployment,
        lambda obj: pod_spec(obj).update(restartPolicy="Never"),
        DEPLOYMENT + 'spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always"',
        "FieldValueNotSupported",
    ),
    (
        "duplicate-container",
        "core validateContainers: field.Duplicate(name)",
        deployment,
        lambda obj: pod_spec(obj)["containers"].append({"name": "server", "image": "other"}),
        DEPLOYMENT + 'spec.template.spec.containers[1].name: Duplicate value: "server"',
        "FieldValueDuplicate",
    ),
    (
        "container-name-dns-label",
        "core validateContainers: ValidateDNS1123Label(name)",
        deployment,
        lambda obj: container(obj).update(name="Server"),
        DEPLOYMENT + 'spec.template.spec.containers[0].name: Invalid value: "Server": a lowercase RFC 1123 label '
        "must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric "
        "character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
        "FieldValueInvalid",
    ),
    (
        "image-required",
        "core validateContainers: field.Required(image)",
        deployment,
        lambda obj: container(obj).pop("image"),
        DEPLOYMENT + "spec.template.spec.containers[0].image: Required value",
        "FieldValueRequired",
    ),
    (
        "duplicate-volume",
        "core ValidateVolumes: field.Duplicate(name)",
        deployment,
        lambda obj: pod_spec(obj)["volumes"].append({"name": "models", "emptyDir": {}}),
        DEPLOYMENT + 'spec.template.spec.volumes[1].name: Duplicate value: "models"',
        "FieldValueDuplicate",
    ),
    (
        "volume-without-type",
        "core ValidateVolumeSource: field.Required(must specify a volume type)",
        deployment,
        _set("spec.template.spec.volumes", [{"name": "models"}]),
        DEPLOYMENT + "spec.template.spec.volumes[0]: Required value: must specify a volume type",
        "FieldValueRequired",
    ),
    (
        "mount-without-volume",
        "core ValidateVolumeMounts: field.NotFound(name)",
        deployment,
        lambda obj: container(obj)["volumeMounts"].append({"name": "cache", "mountPath": "/cache"}),
        DEPLOYMENT + 'spec.template.spec.containers[0].volumeMounts[1].name: Not found: "cache"',
        "FieldValueNotFound",
    ),
    (
        "mount-path-unique",
        "core ValidateVolumeMounts: mountPath must be unique",
        deployment,
        lambda obj: container(obj)["volumeMounts"].append({"name": "models", "mountPath": "/models"}),
        DEPLOYMENT + 'spec.template.spec.containers[0].volumeMounts[1].mountPath: Invalid value: "/models": '
        "must be unique",
        "FieldValueInvalid",
    ),
    (
        "env-name",
        "core ValidateEnv: IsRelaxedEnvVarName (RelaxedEnvironmentVariableValidation, beta in v1.32)",
        deployment,
        lambda obj: container(obj)["env"].append({"name": "A=B", "value": "1"}),
        DEPLOYMENT + 'spec.template.spec.containers[0].env[1].name: Invalid value: "A=B": a valid environment '
        "variable name must consist only of printable ASCII characters other than '='",
        "FieldValueInvalid",
    ),
    (
        "env-name-required",
        "core ValidateEnv: field.Required(name)",
        deployment,
        lambda obj: container(obj)["env"].append({"value": "1"}),
        DEPLOYMENT + "spec.template.spec.containers[0].env[1].name: Required value",
        "FieldValueRequired",
    ),
    (
        "probe-two-handlers",
        "core validateHandler: may not specify more than 1 handler type",
        deployment,
        lambda obj: container(obj)["readinessProbe"].update(tcpSocket={"port": 8000}),
        DEPLOYMENT + "spec.template.spec.containers[0].readinessProbe.tcpSocket: Forbidden: may not specify more "
        "than 1 handler type",
        "FieldValueForbidden",
    ),
    (
        "probe-no-handler",
        "core validateHandler: field.Required(must specify a handler type)",
        deployment,
        lambda obj: container(obj).update(livenessProbe={"periodSeconds": 5}),
        DEPLOYMENT + "spec.template.spec.containers[0].livenessProbe: Required value: must specify a handler type",
        "FieldValueRequired",
    ),
    (
        "probe-negative-threshold",
        "core validateProbe: ValidateNonnegativeField(failureThreshold)",
        deployment,
        lambda obj: container(obj)["readinessProbe"].update(failureThreshold=-1),
        DEPLOYMENT + "spec.template.spec.containers[0].readinessProbe.failureThreshold: Invalid value: -1: must be "
        "greater than or equal to 0",
        "FieldValueInvalid",
    ),
    (
        "liveness-success-threshold",
        "core validateContainers: livenessProbe.successThreshold must be 1",
        deployment,
        lambda obj: container(obj).update(livenessProbe={"tcpSocket": {"port": 8000}, "successThreshold": 2}),
        DEPLOYMENT + "spec.template.spec.containers[0].livenessProbe.successThreshold: Invalid value: 2: must be 1",
        "FieldValueInvalid",
    ),
    (
        "probe-port-name",
        "core ValidatePortNumOrName: IsValidPortName",
        deployment,
        lambda obj: container(obj)["readinessProbe"]["httpGet"].update(port="http_port"),
        DEPLOYMENT + 'spec.template.spec.containers[0].readinessProbe.httpGet.port: Invalid value: "http_port": '
        "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
        "FieldValueInvalid",
    ),
    (
        "toleration-seconds-without-noexecute",
        "core validateTolerations: effect must be 'NoExecute' when tolerationSeconds is set",
        deployment,
        _set(
            "spec.template.spec.tolerations",
            [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 30}],
        ),
        DEPLOYMENT + 'spec.template.spec.tolerations[0].effect: Invalid value: "NoSchedule": effect must be '
        "'NoExecute' when `tolerationSeconds` is set",
        "FieldValueInvalid",
    ),
    (
        "toleration-empty-key",
        "core validateTolerations: operator must be Exists when key is empty",
        deployment,
        _set("spec.template.spec.tolerations", [{"operator": "Equal", "value": "x"}]),
        DEPLOYMENT + 'spec.template.spec.tolerations[0].operator: Invalid value: "Equal": operator must be Exists '
        'when `key` is empty, which means "match all values and all keys"',
        "FieldValueInvalid",
    ),
    (
        "toleration-exists-with-value",
        "core validateTolerations: value must be empty when operator is 'Exists'",
        deployment,
        _set("spec.template.spec.tolerations", [{"key": "gpu", "operator": "Exists", "value": "yes"}]),
        DEPLOYMENT + 'spec.template.spec.tolerations[0].operator: Invalid value: core.Toleration{Key:"gpu", '
        'Operator:"Exists", Value:"yes", Effect:"", TolerationSeconds:(*int64)(nil)}: value must be empty when '
        "`operator` is 'Exists'",
        "FieldValueInvalid",
    ),
    (
        "toleration-effect",
        "core validateTaintEffect: field.NotSupported(effect)",
        deployment,
        _set("spec.template.spec.tolerations", [{"key": "gpu", "operator": "Exists", "effect": "Sometimes"}]),
        DEPLOYMENT + 'spec.template.spec.tolerations[0].effect: Unsupported value: "Sometimes": supported values: '
        '"NoSchedule", "PreferNoSchedule", "NoExecute"',
        "FieldValueNotSupported",
    ),
    (
        "request-above-limit",
        "core ValidateResourceRequirements: request must be less than or equal to limit",
        deployment,
        lambda obj: container(obj).update(resources={"requests": {"cpu": "3000m"}, "limits": {"cpu": "2"}}),
        DEPLOYMENT + 'spec.template.spec.containers[0].resources.requests: Invalid value: "3": must be less than or '
        "equal to cpu limit of 2",
        "FieldValueInvalid",
    ),
    (
        "extended-resource-request-equals-limit",
        "core ValidateResourceRequirements: non-overcommitable resources need request == limit",
        deployment,
        lambda obj: container(obj).update(
            resources={"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "2"}}
        ),
        DEPLOYMENT + 'spec.template.spec.containers[0].resources.requests: Invalid value: "1": must be equal to '
        "nvidia.com/gpu limit of 2",
        "FieldValueInvalid",
    ),
    (
        "ephemeral-storage-request-above-limit",
        "core ValidateResourceRequirements: request <= limit (ephemeral-storage)",
        deployment,
        lambda obj: container(obj).update(
            resources={"requests": {"ephemeral-storage": "60Gi"}, "limits": {"ephemeral-storage": "50Gi"}}
        ),
        DEPLOYMENT + 'spec.template.spec.containers[0].resources.requests: Invalid value: "60Gi": must be less than '
        "or equal to ephemeral-storage limit of 50Gi",
        "FieldValueInvalid",
    ),
    (
        "resource-name",
        "core validateContainerResourceName: must be a standard resource for containers",
        deployment,
        lambda obj: container(obj).update(resources={"limits": {"gpu": "1"}}),
        DEPLOYMENT + 'spec.template.spec.containers[0].resources.limits[gpu]: Invalid value: "gpu": must be a '
        "standard resource for containers",
        "FieldValueInvalid",
    ),
    (
        "label-value",
        "apimachinery ValidateLabels: IsValidLabelValue",
        deployment,
        _set("metadata.labels", {"app": "-x"}),
        DEPLOYMENT + 'metadata.labels: Invalid value: "-x": a valid label must be an empty string or consist of '
        "alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. "
        "'MyValue',  or 'my_value',  or '12345', regex used for validation is "
        "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
        "FieldValueInvalid",
    ),
    (
        "label-value-length",
        "apimachinery IsValidLabelValue: must be no more than 63 characters",
        deployment,
        _set("metadata.labels", {"app": "a" * 64}),
        DEPLOYMENT + f'metadata.labels: Invalid value: "{"a" * 64}": must be no more than 63 characters',
        "FieldValueInvalid",
    ),
    (
        "label-key",
        "apimachinery ValidateLabelName: IsQualifiedName prefix part",
        deployment,
        _set("metadata.labels", {"Kubellm.dev/app": "x"}),
        DEPLOYMENT + 'metadata.labels: Invalid value: "Kubellm.dev/app": prefix part a lowercase RFC 1123 '
        "subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an "
        "alphanumeric character (e.g. 'example.com', regex used for validation is "
        "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        "FieldValueInvalid",
    ),
    (
        "annotation-size",
        "apimachinery ValidateAnnotations: total size at most 256 KiB",
        deployment,
        _set("metadata.annotations", {"big": "x" * (256 * 1024)}),
        DEPLOYMENT + "metadata.annotations: Too long: may not be more than 262144 bytes",
        "FieldValueTooLong",
    ),
    (
        "deployment-name",
        "apimachinery ValidateObjectMeta: NameIsDNSSubdomain",
        deployment,
        _set("metadata.name", "X"),
        'Deployment.apps "X" is invalid: metadata.name: Invalid value: "X": a lowercase RFC 1123 subdomain must '
        "consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
        "character (e.g. 'example.com', regex used for validation is "
        "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        "FieldValueInvalid",
    ),
    (
        "owner-reference-uid",
        "apimachinery ValidateOwnerReferences: uid must not be empty",
        deployment,
        _set("metadata.ownerReferences", [{"apiVersion": "kubellm.dev/v1alpha1", "kind": "LLMService", "name": "x"}]),
        DEPLOYMENT + 'metadata.ownerReferences[0].uid: Invalid value: "": uid must not be empty',
        "FieldValueInvalid",
    ),
    (
        "service-duplicate-port-name",
        "core validateServicePort: field.Duplicate(name)",
        service,
        lambda obj: obj["spec"]["ports"].append({"name": "http", "port": 81}),
        SERVICE + 'spec.ports[1].name: Duplicate value: "http"',
        "FieldValueDuplicate",
    ),
    (
        "service-port-name-required",
        "core validateServicePort: name required when more than one port",
        service,
        lambda obj: obj["spec"]["ports"].append({"port": 81}),
        SERVICE + "spec.ports[1].name: Required value",
        "FieldValueRequired",
    ),
    (
        "service-duplicate-port-protocol",
        "core ValidateService: duplicate (protocol, port) pairs",
        service,
        lambda obj: obj["spec"]["ports"].append({"name": "metrics", "port": 80}),
        SERVICE + 'spec.ports[1]: Duplicate value: core.ServicePort{Name:"", Protocol:"TCP", '
        'AppProtocol:(*string)(nil), Port:80, TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:""}, '
        "NodePort:0}",
        "FieldValueDuplicate",
    ),
    (
        "service-port-range",
        "core validateServicePort: IsValidPortNum(port)",
        service,
        _set("spec.ports", [{"name": "http", "port": 70000}]),
        # targetPort defaults to port, so the apiserver reports both
        SERVICE + "[spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive, "
        "spec.ports[0].targetPort: Invalid value: 70000: must be between 1 and 65535, inclusive]",
        "FieldValueInvalid",
    ),
    (
        "service-target-port",
        "core validateServicePort: ValidatePortNumOrName(targetPort)",
        service,
        _set("spec.ports", [{"name": "http", "port": 80, "targetPort": "a-very-long-port-name"}]),
        SERVICE + 'spec.ports[0].targetPort: Invalid value: "a-very-long-port-name": must be no more than 15 '
        "characters",
        "FieldValueInvalid",
    ),
    (
        "service-node-port-range",
        "portallocator: provided port is not in the valid range",
        service,
        lambda obj: obj["spec"].update(type="NodePort", ports=[{"name": "http", "port": 80, "nodePort": 8080}]),
        SERVICE + "spec.ports[0].nodePort: Invalid value: 8080: provided port is not in the valid range. The range "
        "of valid ports is 30000-32767",
        "FieldValueInvalid",
    ),
    (
        "service-node-port-on-cluster-ip",
        "core ValidateService: nodePort may not be used when type is ClusterIP",
        service,
        _set("spec.ports", [{"name": "http", "port": 80, "nodePort": 30080}]),
        SERVICE + "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
        "FieldValueForbidden",
    ),
    (
        "service-ports-required",
        "core ValidateService: ports required unless headless or ExternalName",
        service,
        _set("spec.ports", []),
        SERVICE + "spec.ports: Required value",
        "FieldValueRequired",
    ),
    (
        "service-name-dns1035",
        "core ValidateServiceName: NameIsDNS1035Label",
        service,
        _set("metadata.name", "1x"),
        'Service "1x" is invalid: metadata.name: Invalid value: "1x": a DNS-1035 label must consist of lower case '
        "alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character "
        "(e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
        "FieldValueInvalid",
    ),
]


def _create(store: ObjectStore, obj: JsonObject) -> JsonObject:
    group, _, version = obj["apiVersion"].rpartition("/")
    plural = {"Deployment": "deployments", "Service": "services", "Event": "events"}[obj["kind"]]
    return store.create(store.type_for(group, version, plural), "default", obj)


@pytest.mark.parametrize(
    ("cite", "base", "mutate", "message", "reason"), [row[1:] for row in ROWS], ids=[r[0] for r in ROWS]
)
def test_invalid_objects_are_refused_as_the_apiserver_does(
    cite: str, base: Callable[[], JsonObject], mutate: Callable[[JsonObject], None], message: str, reason: str
) -> None:
    _create(ObjectStore(), base())  # the object before the mutation is valid: the mutation alone is refused
    obj = base()
    mutate(obj)
    with pytest.raises(ApiError) as caught:
        _create(ObjectStore(), obj)
    error = caught.value
    assert (error.code, error.reason) == (422, "Invalid"), cite
    assert error.message == message, cite
    details = error.details or {}
    assert details["causes"][0]["reason"] == reason, cite
    assert details["kind"] == obj["kind"]


def test_deployment_selector_is_immutable() -> None:
    """apps ValidateDeploymentUpdate: ValidateImmutableField(spec.selector)."""
    store = ObjectStore()
    created = _create(store, deployment())
    changed = copy.deepcopy(created)
    changed["spec"]["selector"] = {"matchLabels": {"app": "y"}}
    changed["spec"]["template"]["metadata"]["labels"] = {"app": "y"}
    rtype = store.type_for("apps", "v1", "deployments")
    with pytest.raises(ApiError) as caught:
        store.replace(rtype, "default", "x", changed)
    assert caught.value.message == (
        DEPLOYMENT + 'spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{"app":"y"}, '
        "MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"
    )


def test_several_problems_are_listed_in_brackets() -> None:
    """apierrors.NewInvalid: an aggregate of more than one error prints as [a, b]."""
    obj = deployment()
    container(obj).pop("image")
    obj["spec"]["replicas"] = -1
    with pytest.raises(ApiError) as caught:
        _create(ObjectStore(), obj)
    assert caught.value.message == (
        DEPLOYMENT + "[spec.template.spec.containers[0].image: Required value, spec.replicas: Invalid value: -1: "
        "must be greater than or equal to 0]"
    )
    assert [cause["field"] for cause in (caught.value.details or {})["causes"]] == [
        "spec.template.spec.containers[0].image",
        "spec.replicas",
    ]


def test_node_ports_are_allocated_in_range_and_collisions_refused() -> None:
    """portallocator: NodePort Services get a free port; a port another Service holds is 'already allocated'."""
    store = ObjectStore()
    first = service()
    first["spec"]["type"] = "NodePort"
    created = _create(store, first)
    allocated = created["spec"]["ports"][0]["nodePort"]
    assert 30000 <= allocated <= 32767
    second = service()
    second["metadata"]["name"] = "y"
    second["spec"].update(type="NodePort", ports=[{"name": "http", "port": 80, "nodePort": allocated}])
    with pytest.raises(ApiError) as caught:
        _create(store, second)
    assert caught.value.message == (
        f'Service "y" is invalid: spec.ports[0].nodePort: Invalid value: {allocated}: provided port is already '
        "allocated"
    )
    # An update that omits the node port keeps the allocated one (the registry's patchAllocatedValues).
    rtype = store.type_for("", "v1", "services")
    updated = copy.deepcopy(created)
    updated["spec"]["ports"][0].pop("nodePort")
    assert store.replace(rtype, "default", "x", updated)["spec"]["ports"][0]["nodePort"] == allocated
    # Back to ClusterIP: the untouched node port is dropped (dropTypeDependentFields), not refused.
    current = store.get(rtype, "default", "x")
    current["spec"]["type"] = "ClusterIP"
    assert "nodePort" not in store.replace(rtype, "default", "x", current)["spec"]["ports"][0]


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (
            {"involvedObject": {"kind": "Pod", "name": "p", "namespace": "other"}, "reason": "Started"},
            'Event "e" is invalid: involvedObject.namespace: Invalid value: "other": does not match event.namespace',
        ),
        (
            {
                "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
                "eventTime": "2026-01-01T00:00:00.000000Z",
                "reason": "Started",
                "action": "Start",
            },
            'Event "e" is invalid: [reportingComponent: Required value, reportingComponent: Invalid value: "": name '
            'part must be non-empty, reportingComponent: Invalid value: "": name part must consist of alphanumeric '
            "characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or "
            "'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]'), "
            "reportingInstance: Required value]",
        ),
    ],
    ids=["namespace-mismatch", "event-time-needs-reporter"],
)
def test_events_are_validated_as_legacy_core_events(event: JsonObject, message: str) -> None:
    """core legacyValidateEvent: namespaces agree; an Event with eventTime names its reporting controller."""
    body = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e", "namespace": "default"}, **event}
    with pytest.raises(ApiError) as caught:
        _create(ObjectStore(), body)
    assert caught.value.message == message


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("2000m", "2"),
        ("0.5", "500m"),
        ("1000", "1k"),
        ("1Gi", "1Gi"),
        ("1536Mi", "1536Mi"),
        ("2048Mi", "2Gi"),
        ("512", "512"),
        ("0", "0"),
        ("100M", "100M"),
    ],
)
def test_quantities_are_shown_in_canonical_form(given: str, shown: str) -> None:
    """resource.Quantity.String() after canonicalisation, as the apiserver's messages show quantities."""
    assert canonical_quantity(given) == shown
