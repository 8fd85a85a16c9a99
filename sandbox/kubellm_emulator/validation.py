"""The apiserver's built-in validation of the kinds kubellm writes and reads, with its field paths and messages.

A real apiserver runs `pkg/apis/<group>/validation` on every create and update of a built-in kind, on top of the
OpenAPI decoding; the emulator used to accept any Deployment or Service, so "refused on a cluster" bugs stayed
invisible. Each check here names the Kubernetes function it mirrors (k8s.io/kubernetes v1.32
`pkg/apis/core/validation/validation.go`, `pkg/apis/apps/validation/validation.go`,
`pkg/apis/core/validation/events.go`; k8s.io/apimachinery `pkg/util/validation`, `pkg/api/validation`).
A rejection is the apiserver's 422: `Deployment.apps "x" is invalid: spec.ports[1].name: Duplicate value: "http"`.

Values that Go renders with `%#v` (a LabelSelector, an IntOrString, a ServicePort key) are rendered the same way
(`GoLiteral`), so messages match a cluster's byte for byte where kubellm's tests compare them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

from kubellm.quantity import parse_quantity
from kubellm_emulator import errors
from kubellm_emulator.errors import ApiError, FieldError, GoLiteral
from kubellm_emulator.resources import ResourceType

JsonObject = dict[str, Any]


# ---------------------------------------------------------------------------------------------------------------
# apimachinery/pkg/util/validation: names, labels, ports


def _regex_error(message: str, pattern: str, *examples: str) -> str:
    """validation.RegexError: examples joined by `,  or ` (Go appends "', " then " or ")."""
    if not examples:
        return f"{message} (regex used for validation is '{pattern}')"
    shown = " or ".join(f"'{example}', " for example in examples)
    return f"{message} (e.g. {shown}regex used for validation is '{pattern}')"


def _max_len(length: int) -> str:
    return f"must be no more than {length} characters"  # validation.MaxLenError


DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN_FMT = DNS1123_LABEL_FMT + r"(\." + DNS1123_LABEL_FMT + ")*"
DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
QUALIFIED_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
LABEL_VALUE_FMT = f"({QUALIFIED_NAME_FMT})?"
_DNS1123_LABEL = re.compile(f"^{DNS1123_LABEL_FMT}$")
_DNS1123_SUBDOMAIN = re.compile(f"^{DNS1123_SUBDOMAIN_FMT}$")
_DNS1035_LABEL = re.compile(f"^{DNS1035_LABEL_FMT}$")
_QUALIFIED_NAME = re.compile(f"^{QUALIFIED_NAME_FMT}$")
_LABEL_VALUE = re.compile(f"^{LABEL_VALUE_FMT}$")
_PERCENT = re.compile("^[0-9]+%$")


def is_dns1123_label(value: str) -> list[str]:
    """validation.IsDNS1123Label."""
    problems = [_max_len(63)] if len(value) > 63 else []
    if not _DNS1123_LABEL.match(value):
        problems.append(
            _regex_error(
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
                "start and end with an alphanumeric character",
                DNS1123_LABEL_FMT,
                "my-name",
                "123-abc",
            )
        )
    return problems


def is_dns1123_subdomain(value: str) -> list[str]:
    """validation.IsDNS1123Subdomain."""
    problems = [_max_len(253)] if len(value) > 253 else []
    if not _DNS1123_SUBDOMAIN.match(value):
        problems.append(
            _regex_error(
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
                "must start and end with an alphanumeric character",
                DNS1123_SUBDOMAIN_FMT,
                "example.com",
            )
        )
    return problems


def is_dns1035_label(value: str) -> list[str]:
    """validation.IsDNS1035Label (Service names)."""
    problems = [_max_len(63)] if len(value) > 63 else []
    if not _DNS1035_LABEL.match(value):
        problems.append(
            _regex_error(
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
                "alphabetic character, and end with an alphanumeric character",
                DNS1035_LABEL_FMT,
                "my-name",
                "abc-123",
            )
        )
    return problems


_QUALIFIED_NAME_MESSAGE = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
)


def is_qualified_name(value: str) -> list[str]:
    """validation.IsQualifiedName: label keys, annotation keys, toleration keys."""
    problems: list[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            problems.append("prefix part must be non-empty")
        else:
            problems.extend(f"prefix part {message}" for message in is_dns1123_subdomain(prefix))
    else:
        return [
            "a qualified name "
            + _regex_error(_QUALIFIED_NAME_MESSAGE, QUALIFIED_NAME_FMT, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        problems.append("name part must be non-empty")
    elif len(name) > 63:
        problems.append("name part " + _max_len(63))
    if not _QUALIFIED_NAME.match(name):
        problems.append(
            "name part " + _regex_error(_QUALIFIED_NAME_MESSAGE, QUALIFIED_NAME_FMT, "MyName", "my.name", "123-abc")
        )
    return problems


def is_valid_label_value(value: str) -> list[str]:
    """validation.IsValidLabelValue."""
    problems = [_max_len(63)] if len(value) > 63 else []
    if not _LABEL_VALUE.match(value):
        problems.append(
            _regex_error(
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and "
                "must start and end with an alphanumeric character",
                LABEL_VALUE_FMT,
                "MyValue",
                "my_value",
                "12345",
            )
        )
    return problems


def is_valid_port_num(port: Any) -> list[str]:
    """validation.IsValidPortNum."""
    if isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535:
        return []
    return ["must be between 1 and 65535, inclusive"]


def is_valid_port_name(port: str) -> list[str]:
    """validation.IsValidPortName (IANA_SVC_NAME)."""
    problems = [_max_len(15)] if len(port) > 15 else []
    if not re.match("^[-a-z0-9]+$", port):
        problems.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not re.search("[a-z]", port):
        problems.append("must contain at least one letter (a-z)")
    if "--" in port:
        problems.append("must not contain consecutive hyphens")
    if port and (port[0] == "-" or port[-1] == "-"):
        problems.append("must not begin or end with a hyphen")
    return problems


def is_relaxed_env_var_name(name: str) -> list[str]:
    """validation.IsRelaxedEnvVarName (RelaxedEnvironmentVariableValidation is beta and on by default in v1.32)."""
    if all(32 <= ord(char) <= 126 and char != "=" for char in name):
        return []
    return ["a valid environment variable name must consist only of printable ASCII characters other than '='"]


# ---------------------------------------------------------------------------------------------------------------
# Go value rendering (%#v) for the messages that show structs


def _go_string(value: Any) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def go_string_map(value: Mapping[str, Any] | None) -> str:
    if value is None:
        return "map[string]string(nil)"
    return "map[string]string{" + ", ".join(f"{_go_string(k)}:{_go_string(value[k])}" for k in sorted(value)) + "}"


def go_label_selector(selector: Mapping[str, Any] | None) -> GoLiteral:
    """A metav1.LabelSelector as `%#v` prints it (the value of the famous `spec.selector: ... field is immutable`)."""
    selector = selector or {}
    expressions = selector.get("matchExpressions")
    if expressions:
        rendered = ", ".join(
            "v1.LabelSelectorRequirement{"
            f"Key:{_go_string(item.get('key', ''))}, Operator:{_go_string(item.get('operator', ''))}, "
            "Values:"
            + (
                "[]string{" + ", ".join(_go_string(v) for v in item["values"]) + "}"
                if item.get("values")
                else "[]string(nil)"
            )
            + "}"
            for item in expressions
        )
        shown_expressions = "[]v1.LabelSelectorRequirement{" + rendered + "}"
    else:
        shown_expressions = "[]v1.LabelSelectorRequirement(nil)"
    return GoLiteral(
        f"v1.LabelSelector{{MatchLabels:{go_string_map(selector.get('matchLabels'))}, "
        f"MatchExpressions:{shown_expressions}}}"
    )


def go_int_or_string(value: Any) -> str:
    if isinstance(value, str):
        return f'intstr.IntOrString{{Type:1, IntVal:0, StrVal:"{value}"}}'
    return f'intstr.IntOrString{{Type:0, IntVal:{int(value or 0)}, StrVal:""}}'


# ---------------------------------------------------------------------------------------------------------------
# Quantities: Quantity.String() of the canonical form, for messages


_DECIMAL_SUFFIXES = {-9: "n", -6: "u", -3: "m", 0: "", 3: "k", 6: "M", 9: "G", 12: "T", 15: "P", 18: "E"}
_BINARY_SUFFIXES = (("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10))
QUANTITY_REGEX_MESSAGE = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"


def canonical_quantity(text: Any) -> str:
    """resource.Quantity.String(): binary-suffixed values stay binary when whole and >= 1Ki, the rest are printed
    with the largest SI suffix that keeps the mantissa whole (`2000m` -> `2`, `0.5` -> `500m`)."""
    value = parse_quantity(text if isinstance(text, str) else str(text))
    binary = isinstance(text, str) and text.strip()[-2:] in {suffix for suffix, _ in _BINARY_SUFFIXES}
    if value == 0:
        return "0"
    if binary and value == value.to_integral_value() and abs(value) >= 1024:
        for suffix, factor in _BINARY_SUFFIXES:
            if value % factor == 0:
                return f"{int(value / factor)}{suffix}"
    # Rounded up to the nano, as the apiserver stores it; then the largest exponent (a multiple of 3) that divides.
    nanos = int((value * Decimal(10**9)).to_integral_value(rounding="ROUND_CEILING"))
    exponent = -9
    while exponent < 18 and nanos % 1000 == 0 and nanos != 0:
        nanos //= 1000
        exponent += 3
    return f"{nanos}{_DECIMAL_SUFFIXES[exponent]}"


def quantity_value(text: Any) -> Decimal:
    """A quantity's value; a malformed one is the 400 the apiserver's decoder answers."""
    try:
        return parse_quantity(text if isinstance(text, str) else str(text))
    except ValueError:
        raise errors.bad_request(QUANTITY_REGEX_MESSAGE) from None


# ---------------------------------------------------------------------------------------------------------------
# Object names and metadata (apimachinery pkg/api/validation/objectmeta.go)


NameCheck = Callable[[str], list[str]]


def _path_segment_name(name: str) -> list[str]:
    """path.IsValidPathSegmentName (RBAC object names)."""
    if name in (".", ".."):
        return [f"may not be '{name}'"]
    return [f"may not contain '{char}'" for char in ("/", "%") if char in name]


def name_check(rtype: ResourceType) -> NameCheck | None:
    """The name rule of each kind's ValidateObjectMeta call (None: the kind validates no name syntax)."""
    kind = (rtype.group, rtype.plural)
    if kind == ("", "services"):
        return is_dns1035_label  # ValidateServiceName = NameIsDNS1035Label
    if kind == ("", "namespaces"):
        return is_dns1123_label  # ValidateNamespaceName
    if rtype.group == "rbac.authorization.k8s.io":
        return _path_segment_name  # ValidateRBACName
    if kind in (("", "events"), ("events.k8s.io", "events")):
        return None  # ValidateEventCreate skips ObjectMeta for core/v1 events (legacy)
    return is_dns1123_subdomain


def name_errors(rtype: ResourceType, name: str) -> list[FieldError]:
    check = name_check(rtype)
    return [FieldError("metadata.name", "Invalid value", message, name) for message in (check(name) if check else [])]


TOTAL_ANNOTATION_SIZE_LIMIT = 256 * 1024


def validate_labels(labels: Any, path: str) -> list[FieldError]:
    """ValidateLabels: each key is a qualified name, each value a label value."""
    problems: list[FieldError] = []
    if not isinstance(labels, dict):
        return problems
    for key in sorted(labels):
        problems.extend(FieldError(path, "Invalid value", message, key) for message in is_qualified_name(key))
        value = labels[key]
        if isinstance(value, str):
            problems.extend(
                FieldError(path, "Invalid value", message, value) for message in is_valid_label_value(value)
            )
    return problems


def validate_annotations(annotations: Any, path: str) -> list[FieldError]:
    """ValidateAnnotations: keys are qualified names (lower-cased first); all of them together at most 256 KiB."""
    problems: list[FieldError] = []
    if not isinstance(annotations, dict):
        return problems
    for key in sorted(annotations):
        problems.extend(FieldError(path, "Invalid value", message, key) for message in is_qualified_name(key.lower()))
    size = sum(len(key) + len(str(value)) for key, value in annotations.items())
    if size > TOTAL_ANNOTATION_SIZE_LIMIT:
        problems.append(
            FieldError(path, "Too long", f"may not be more than {TOTAL_ANNOTATION_SIZE_LIMIT} bytes", show_value=False)
        )
    return problems


def validate_owner_references(references: Any, path: str) -> list[FieldError]:
    """ValidateOwnerReferences: apiVersion, kind, name and uid set; at most one controller."""
    problems: list[FieldError] = []
    controllers: list[str] = []
    for index, reference in enumerate(references if isinstance(references, list) else []):
        if not isinstance(reference, dict):
            continue
        item = f"{path}[{index}]"
        api_version = str(reference.get("apiVersion") or "")
        if not api_version.rpartition("/")[2]:
            problems.append(FieldError(f"{item}.apiVersion", "Invalid value", "version must not be empty", api_version))
        if not reference.get("kind"):
            problems.append(FieldError(f"{item}.kind", "Invalid value", "kind must not be empty", ""))
        if not reference.get("name"):
            problems.append(FieldError(f"{item}.name", "Invalid value", "name must not be empty", ""))
        if not reference.get("uid"):
            problems.append(FieldError(f"{item}.uid", "Invalid value", "uid must not be empty", ""))
        if reference.get("controller") is True:
            controllers.append(f"{reference.get('kind')}/{reference.get('name')}")
    if len(controllers) > 1:
        problems.append(
            FieldError(
                path,
                "Invalid value",
                'Only one reference can have Controller set to true. Found "true" in references for '
                + " and ".join(controllers),
                GoLiteral("[]v1.OwnerReference{...}"),
            )
        )
    return problems


def validate_object_meta(metadata: JsonObject, path: str = "metadata") -> list[FieldError]:
    return (
        validate_labels(metadata.get("labels"), f"{path}.labels")
        + validate_annotations(metadata.get("annotations"), f"{path}.annotations")
        + validate_owner_references(metadata.get("ownerReferences"), f"{path}.ownerReferences")
    )


# ---------------------------------------------------------------------------------------------------------------
# Pod spec (pkg/apis/core/validation/validation.go)


_VOLUME_SOURCES = (
    "hostPath",
    "emptyDir",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "secret",
    "nfs",
    "iscsi",
    "glusterfs",
    "persistentVolumeClaim",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "downwardAPI",
    "fc",
    "azureFile",
    "configMap",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "projected",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "csi",
    "ephemeral",
    "image",
)
_STANDARD_CONTAINER_RESOURCES = {"cpu", "memory", "ephemeral-storage"}
_PROTOCOLS = ("SCTP", "TCP", "UDP")


def _nonnegative(value: Any, path: str) -> list[FieldError]:
    """ValidateNonnegativeField."""
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        return [FieldError(path, "Invalid value", "must be greater than or equal to 0", value)]
    return []


def _port_num_or_name(port: Any, path: str) -> list[FieldError]:
    """ValidatePortNumOrName: an int is a port number, a string an IANA_SVC_NAME."""
    if isinstance(port, str):
        return [FieldError(path, "Invalid value", message, port) for message in is_valid_port_name(port)]
    return [FieldError(path, "Invalid value", message, port or 0) for message in is_valid_port_num(port or 0)]


def _validate_volumes(volumes: list[Any], path: str) -> tuple[set[str], list[FieldError]]:
    """ValidateVolumes and ValidateVolumeSource: names are unique DNS labels; exactly one volume type."""
    problems: list[FieldError] = []
    names: set[str] = set()
    for index, volume in enumerate(volumes):
        if not isinstance(volume, dict):
            continue
        item = f"{path}[{index}]"
        sources = [key for key in _VOLUME_SOURCES if volume.get(key) is not None]
        if not sources:
            problems.append(FieldError(item, "Required value", "must specify a volume type"))
        for extra in sources[1:]:
            problems.append(FieldError(f"{item}.{extra}", "Forbidden", "may not specify more than 1 volume type"))
        name = volume.get("name") or ""
        if not name:
            problems.append(FieldError(f"{item}.name", "Required value", ""))
        else:
            problems.extend(FieldError(f"{item}.name", "Invalid value", m, name) for m in is_dns1123_label(name))
        if name in names:
            problems.append(FieldError(f"{item}.name", "Duplicate value", "", name))
        names.add(name)
    return names, problems


def _validate_probe(probe: Any, path: str, *, success_must_be_one: bool) -> list[FieldError]:
    """validateProbe and validateHandler: exactly one handler, non-negative times and thresholds (zero is the
    default's placeholder in Go and is defaulted before validation); liveness and startup need successThreshold 1."""
    if not isinstance(probe, dict):
        return []
    problems: list[FieldError] = []
    handlers = [key for key in ("exec", "httpGet", "tcpSocket", "grpc") if probe.get(key) is not None]
    if not handlers:
        problems.append(FieldError(path, "Required value", "must specify a handler type"))
    for extra in handlers[1:]:
        problems.append(FieldError(f"{path}.{extra}", "Forbidden", "may not specify more than 1 handler type"))
    if handlers:
        handler, handler_path = probe[handlers[0]], f"{path}.{handlers[0]}"
        if handlers[0] == "exec" and not (handler or {}).get("command"):
            problems.append(FieldError(f"{handler_path}.command", "Required value", ""))
        elif handlers[0] in ("httpGet", "tcpSocket"):
            problems.extend(_port_num_or_name((handler or {}).get("port"), f"{handler_path}.port"))
            scheme = (handler or {}).get("scheme")
            if handlers[0] == "httpGet" and scheme not in (None, "HTTP", "HTTPS"):
                problems.append(
                    FieldError(
                        f"{handler_path}.scheme", "Unsupported value", 'supported values: "HTTP", "HTTPS"', scheme
                    )
                )
        elif handlers[0] == "grpc":
            port = (handler or {}).get("port")
            problems.extend(
                FieldError(f"{handler_path}.port", "Invalid value", m, port or 0) for m in is_valid_port_num(port or 0)
            )
    for field in ("initialDelaySeconds", "timeoutSeconds", "periodSeconds", "successThreshold", "failureThreshold"):
        problems.extend(_nonnegative(probe.get(field), f"{path}.{field}"))
    grace = probe.get("terminationGracePeriodSeconds")
    if isinstance(grace, int) and grace <= 0:
        problems.append(
            FieldError(f"{path}.terminationGracePeriodSeconds", "Invalid value", "must be greater than 0", grace)
        )
    success = probe.get("successThreshold")
    if success_must_be_one and success not in (None, 0, 1):
        problems.append(FieldError(f"{path}.successThreshold", "Invalid value", "must be 1", success))
    return problems


def _is_overcommit_allowed(resource: str) -> bool:
    """helper.IsOvercommitAllowed: native resources (no domain, or a kubernetes.io one) other than hugepages; an
    extended resource such as nvidia.com/gpu cannot be overcommitted."""
    native = "/" not in resource or "kubernetes.io/" in resource
    return native and not resource.startswith("hugepages-")


def _validate_resources(resources: Any, path: str) -> list[FieldError]:
    """ValidateResourceRequirements: resource names, non-negative values, requests not above limits (equal for
    resources that cannot be overcommitted)."""
    if not isinstance(resources, dict):
        return []
    problems: list[FieldError] = []
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    limits_path, requests_path = f"{path}.limits", f"{path}.requests"
    for section, section_path in ((limits, limits_path), (requests, requests_path)):
        for name in sorted(section):
            key_path = f"{section_path}[{name}]"
            if "/" not in name and name not in _STANDARD_CONTAINER_RESOURCES and not name.startswith("hugepages-"):
                problems.append(
                    FieldError(key_path, "Invalid value", "must be a standard resource for containers", name)
                )
            value = quantity_value(section[name])
            if value < 0:
                problems.append(
                    FieldError(
                        key_path,
                        "Invalid value",
                        "must be greater than or equal to 0",
                        canonical_quantity(section[name]),
                    )
                )
            elif not _is_overcommit_allowed(name) and value != value.to_integral_value():
                problems.append(
                    FieldError(key_path, "Invalid value", "must be an integer", canonical_quantity(section[name]))
                )
    for name in sorted(requests):
        request = quantity_value(requests[name])
        if name in limits:
            limit = quantity_value(limits[name])
            if request != limit and not _is_overcommit_allowed(name):
                problems.append(
                    FieldError(
                        requests_path,
                        "Invalid value",
                        f"must be equal to {name} limit of {canonical_quantity(limits[name])}",
                        canonical_quantity(requests[name]),
                    )
                )
            elif request > limit:
                problems.append(
                    FieldError(
                        requests_path,
                        "Invalid value",
                        f"must be less than or equal to {name} limit of {canonical_quantity(limits[name])}",
                        canonical_quantity(requests[name]),
                    )
                )
        elif not _is_overcommit_allowed(name):
            problems.append(
                FieldError(limits_path, "Required value", "Limit must be set for non overcommitable resources")
            )
    return problems


def _validate_env(env: Any, path: str) -> list[FieldError]:
    """ValidateEnv and validateEnvVarValueFrom."""
    problems: list[FieldError] = []
    for index, variable in enumerate(env if isinstance(env, list) else []):
        if not isinstance(variable, dict):
            continue
        item = f"{path}[{index}]"
        name = variable.get("name") or ""
        if not name:
            problems.append(FieldError(f"{item}.name", "Required value", ""))
        else:
            problems.extend(FieldError(f"{item}.name", "Invalid value", m, name) for m in is_relaxed_env_var_name(name))
        value_from = variable.get("valueFrom")
        if value_from is not None:
            sources = [
                key
                for key in ("fieldRef", "resourceFieldRef", "configMapKeyRef", "secretKeyRef")
                if (value_from or {}).get(key) is not None
            ]
            if not sources:
                problems.append(
                    FieldError(
                        f"{item}.valueFrom",
                        "Invalid value",
                        "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
                        "",
                    )
                )
            elif len(sources) > 1:
                problems.append(
                    FieldError(
                        f"{item}.valueFrom",
                        "Invalid value",
                        "may not have more than one field specified at a time",
                        "",
                    )
                )
            if variable.get("value") and sources:
                problems.append(
                    FieldError(
                        f"{item}.valueFrom", "Invalid value", "may not be specified when `value` is not empty", ""
                    )
                )
    return problems


def _validate_container(
    container: JsonObject, path: str, volumes: set[str], names: set[str], *, init: bool
) -> list[FieldError]:
    problems: list[FieldError] = []
    name = container.get("name") or ""
    if not name:
        problems.append(FieldError(f"{path}.name", "Required value", ""))
    else:
        problems.extend(FieldError(f"{path}.name", "Invalid value", m, name) for m in is_dns1123_label(name))
        if name in names:
            problems.append(FieldError(f"{path}.name", "Duplicate value", "", name))
        names.add(name)
    if not container.get("image"):
        problems.append(FieldError(f"{path}.image", "Required value", ""))
    # validateContainerPorts
    port_names: set[str] = set()
    for index, port in enumerate(container.get("ports") or []):
        if not isinstance(port, dict):
            continue
        item = f"{path}.ports[{index}]"
        port_name = port.get("name")
        if port_name:
            problems.extend(
                FieldError(f"{item}.name", "Invalid value", m, port_name) for m in is_valid_port_name(port_name)
            )
            if port_name in port_names:
                problems.append(FieldError(f"{item}.name", "Duplicate value", "", port_name))
            port_names.add(port_name)
        container_port = port.get("containerPort")
        if not container_port:
            problems.append(FieldError(f"{item}.containerPort", "Required value", ""))
        else:
            problems.extend(
                FieldError(f"{item}.containerPort", "Invalid value", m, container_port)
                for m in is_valid_port_num(container_port)
            )
        protocol = port.get("protocol", "TCP")
        if protocol not in _PROTOCOLS:
            problems.append(
                FieldError(f"{item}.protocol", "Unsupported value", 'supported values: "SCTP", "TCP", "UDP"', protocol)
            )
    problems.extend(_validate_env(container.get("env"), f"{path}.env"))
    # ValidateVolumeMounts
    mount_paths: set[str] = set()
    for index, mount in enumerate(container.get("volumeMounts") or []):
        if not isinstance(mount, dict):
            continue
        item = f"{path}.volumeMounts[{index}]"
        mount_name = mount.get("name") or ""
        if not mount_name:
            problems.append(FieldError(f"{item}.name", "Required value", ""))
        if mount_name not in volumes:
            problems.append(FieldError(f"{item}.name", "Not found", "", mount_name))
        mount_path = mount.get("mountPath") or ""
        if not mount_path:
            problems.append(FieldError(f"{item}.mountPath", "Required value", ""))
        if mount_path in mount_paths:
            problems.append(FieldError(f"{item}.mountPath", "Invalid value", "must be unique", mount_path))
        mount_paths.add(mount_path)
    problems.extend(_validate_resources(container.get("resources"), f"{path}.resources"))
    if not init:
        problems.extend(
            _validate_probe(container.get("livenessProbe"), f"{path}.livenessProbe", success_must_be_one=True)
        )
        problems.extend(
            _validate_probe(container.get("readinessProbe"), f"{path}.readinessProbe", success_must_be_one=False)
        )
        problems.extend(
            _validate_probe(container.get("startupProbe"), f"{path}.startupProbe", success_must_be_one=True)
        )
    return problems


def _go_toleration(toleration: JsonObject) -> GoLiteral:
    seconds = toleration.get("tolerationSeconds")
    return GoLiteral(
        "core.Toleration{"
        f"Key:{_go_string(toleration.get('key', ''))}, Operator:{_go_string(toleration.get('operator', ''))}, "
        f"Value:{_go_string(toleration.get('value', ''))}, Effect:{_go_string(toleration.get('effect', ''))}, "
        f"TolerationSeconds:(*int64)({'nil' if seconds is None else '0xc000000000'})}}"
    )


def _validate_tolerations(tolerations: Any, path: str) -> list[FieldError]:
    """validateTolerations."""
    problems: list[FieldError] = []
    for index, toleration in enumerate(tolerations if isinstance(tolerations, list) else []):
        if not isinstance(toleration, dict):
            continue
        item = f"{path}[{index}]"
        key, operator = toleration.get("key") or "", toleration.get("operator") or ""
        value, effect = toleration.get("value") or "", toleration.get("effect") or ""
        if key:
            problems.extend(FieldError(f"{item}.key", "Invalid value", m, key) for m in is_qualified_name(key))
        if not key and operator != "Exists":
            problems.append(
                FieldError(
                    f"{item}.operator",
                    "Invalid value",
                    'operator must be Exists when `key` is empty, which means "match all values and all keys"',
                    operator,
                )
            )
        if toleration.get("tolerationSeconds") is not None and effect != "NoExecute":
            problems.append(
                FieldError(
                    f"{item}.effect",
                    "Invalid value",
                    "effect must be 'NoExecute' when `tolerationSeconds` is set",
                    effect,
                )
            )
        if operator in ("Equal", ""):
            label_problems = is_valid_label_value(value)
            if label_problems:
                problems.append(FieldError(f"{item}.operator", "Invalid value", ";".join(label_problems), value))
        elif operator == "Exists":
            if value:
                problems.append(
                    FieldError(
                        f"{item}.operator",
                        "Invalid value",
                        "value must be empty when `operator` is 'Exists'",
                        _go_toleration(toleration),
                    )
                )
        else:
            problems.append(
                FieldError(f"{item}.operator", "Unsupported value", 'supported values: "Equal", "Exists"', operator)
            )
        if effect and effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            problems.append(
                FieldError(
                    f"{item}.effect",
                    "Unsupported value",
                    'supported values: "NoSchedule", "PreferNoSchedule", "NoExecute"',
                    effect,
                )
            )
    return problems


def validate_pod_spec(spec: Any, path: str) -> list[FieldError]:
    """ValidatePodSpec, for what kubellm's pods use: containers, volumes, mounts, env, probes, resources,
    tolerations, restartPolicy, dnsPolicy."""
    if not isinstance(spec, dict):
        return [FieldError(path, "Required value", "")]
    volumes, problems = _validate_volumes(spec.get("volumes") or [], f"{path}.volumes")
    names: set[str] = set()
    containers = spec.get("containers") or []
    if not containers:
        problems.append(FieldError(f"{path}.containers", "Required value", ""))
    for index, container in enumerate(spec.get("initContainers") or []):
        if isinstance(container, dict):
            problems.extend(
                _validate_container(container, f"{path}.initContainers[{index}]", volumes, names, init=True)
            )
    for index, container in enumerate(containers):
        if isinstance(container, dict):
            problems.extend(_validate_container(container, f"{path}.containers[{index}]", volumes, names, init=False))
    restart = spec.get("restartPolicy")
    if restart is not None and restart not in ("Always", "OnFailure", "Never"):
        problems.append(
            FieldError(
                f"{path}.restartPolicy",
                "Unsupported value",
                'supported values: "Always", "OnFailure", "Never"',
                restart,
            )
        )
    dns_policy = spec.get("dnsPolicy")
    if dns_policy is not None and dns_policy not in ("ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"):
        problems.append(
            FieldError(
                f"{path}.dnsPolicy",
                "Unsupported value",
                'supported values: "ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"',
                dns_policy,
            )
        )
    problems.extend(_validate_tolerations(spec.get("tolerations"), f"{path}.tolerations"))
    problems.extend(_nonnegative(spec.get("terminationGracePeriodSeconds"), f"{path}.terminationGracePeriodSeconds"))
    node_selector = spec.get("nodeSelector")
    if node_selector:
        problems.extend(validate_labels(node_selector, f"{path}.nodeSelector"))
    return problems


def validate_pod_template(template: Any, path: str) -> list[FieldError]:
    """ValidatePodTemplateSpec: labels and annotations of the template, then the pod spec."""
    if not isinstance(template, dict):
        return [FieldError(path, "Required value", "")]
    metadata = template.get("metadata") or {}
    problems = validate_labels(metadata.get("labels"), f"{path}.metadata.labels")
    problems += validate_annotations(metadata.get("annotations"), f"{path}.metadata.annotations")
    return problems + validate_pod_spec(template.get("spec"), f"{path}.spec")


# ---------------------------------------------------------------------------------------------------------------
# apps/v1 Deployment, ReplicaSet, StatefulSet (pkg/apis/apps/validation/validation.go)


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, Any]) -> bool:
    """metav1.LabelSelectorAsSelector(selector).Matches(labels)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def _validate_selector_and_template(spec: JsonObject, kind: str) -> list[FieldError]:
    problems: list[FieldError] = []
    selector = spec.get("selector")
    template = spec.get("template")
    if not selector:
        problems.append(FieldError("spec.selector", "Required value", ""))
    elif not (selector.get("matchLabels") or selector.get("matchExpressions")):
        problems.append(
            FieldError(
                "spec.selector", "Invalid value", f"empty selector is invalid for {kind}", go_label_selector(selector)
            )
        )
    else:
        problems.extend(validate_labels(selector.get("matchLabels"), "spec.selector.matchLabels"))
        labels = ((template or {}).get("metadata") or {}).get("labels") or {}
        if isinstance(template, dict) and not selector_matches(selector, labels):
            problems.append(
                FieldError(
                    "spec.template.metadata.labels",
                    "Invalid value",
                    "`selector` does not match template `labels`",
                    GoLiteral(go_string_map(labels)),
                )
            )
    problems.extend(validate_pod_template(template, "spec.template"))
    restart = ((template or {}).get("spec") or {}).get("restartPolicy") if isinstance(template, dict) else None
    if restart not in (None, "Always"):
        problems.append(
            FieldError("spec.template.spec.restartPolicy", "Unsupported value", 'supported values: "Always"', restart)
        )
    problems.extend(_nonnegative(spec.get("replicas"), "spec.replicas"))
    problems.extend(_nonnegative(spec.get("minReadySeconds"), "spec.minReadySeconds"))
    problems.extend(_nonnegative(spec.get("revisionHistoryLimit"), "spec.revisionHistoryLimit"))
    return problems


def _int_or_percent_value(value: Any) -> int:
    """getIntOrPercentValue."""
    if isinstance(value, str) and _PERCENT.match(value):
        return int(value[:-1])
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _validate_positive_int_or_percent(value: Any, path: str) -> list[FieldError]:
    """ValidatePositiveIntOrPercent and IsNotMoreThan100Percent."""
    if isinstance(value, str):
        if not _PERCENT.match(value):
            return [
                FieldError(
                    path,
                    "Invalid value",
                    _regex_error(
                        "a valid percent string must be a numeric string followed by an ending '%'",
                        "[0-9]+%",
                        "1%",
                        "93%",
                    ),
                    GoLiteral(go_int_or_string(value)),
                )
            ]
        return []
    return _nonnegative(value, path)


def _validate_strategy(strategy: Any) -> list[FieldError]:
    """ValidateDeploymentStrategy and ValidateRollingUpdateDeployment."""
    if not isinstance(strategy, dict):
        return []
    kind = strategy.get("type", "RollingUpdate")
    rolling = strategy.get("rollingUpdate")
    if kind == "Recreate":
        if rolling is not None:
            return [
                FieldError(
                    "spec.strategy.rollingUpdate",
                    "Forbidden",
                    "may not be specified when strategy `type` is 'Recreate'",
                )
            ]
        return []
    if kind != "RollingUpdate":
        return [
            FieldError("spec.strategy.type", "Unsupported value", 'supported values: "Recreate", "RollingUpdate"', kind)
        ]
    rolling = rolling if isinstance(rolling, dict) else {}
    path = "spec.strategy.rollingUpdate"
    max_unavailable, max_surge = rolling.get("maxUnavailable", "25%"), rolling.get("maxSurge", "25%")
    problems = _validate_positive_int_or_percent(max_unavailable, f"{path}.maxUnavailable")
    problems += _validate_positive_int_or_percent(max_surge, f"{path}.maxSurge")
    if _int_or_percent_value(max_unavailable) == 0 and _int_or_percent_value(max_surge) == 0:
        problems.append(
            FieldError(
                f"{path}.maxUnavailable",
                "Invalid value",
                "may not be 0 when `maxSurge` is 0",
                GoLiteral(go_int_or_string(max_unavailable)),
            )
        )
    if isinstance(max_unavailable, str) and _int_or_percent_value(max_unavailable) > 100:
        problems.append(
            FieldError(
                f"{path}.maxUnavailable",
                "Invalid value",
                "must not be greater than 100%",
                GoLiteral(go_int_or_string(max_unavailable)),
            )
        )
    return problems


def validate_deployment(obj: JsonObject, old: JsonObject | None) -> list[FieldError]:
    """ValidateDeployment / ValidateDeploymentSpec / ValidateDeploymentUpdate."""
    spec = obj.get("spec") or {}
    problems = _validate_selector_and_template(spec, "deployment")
    problems += _validate_strategy(spec.get("strategy"))
    deadline = spec.get("progressDeadlineSeconds")
    if deadline is not None:
        problems += _nonnegative(deadline, "spec.progressDeadlineSeconds")
        if isinstance(deadline, int) and deadline <= (spec.get("minReadySeconds") or 0):
            problems.append(
                FieldError(
                    "spec.progressDeadlineSeconds", "Invalid value", "must be greater than minReadySeconds", deadline
                )
            )
    problems += _immutable_selector(obj, old)
    return problems


def _immutable_selector(obj: JsonObject, old: JsonObject | None) -> list[FieldError]:
    """ValidateImmutableField(spec.selector) in apps/v1 (ValidateDeploymentUpdate, ValidateReplicaSetUpdate, ...)."""
    if old is None:
        return []
    new_selector, old_selector = (obj.get("spec") or {}).get("selector"), (old.get("spec") or {}).get("selector")
    if _normalized_selector(new_selector) != _normalized_selector(old_selector):
        return [FieldError("spec.selector", "Invalid value", "field is immutable", go_label_selector(new_selector))]
    return []


def _normalized_selector(selector: Any) -> Any:
    selector = selector or {}
    return (selector.get("matchLabels") or {}, selector.get("matchExpressions") or [])


def validate_replica_set(obj: JsonObject, old: JsonObject | None) -> list[FieldError]:
    return _validate_selector_and_template(obj.get("spec") or {}, "deployment") + _immutable_selector(obj, old)


def validate_stateful_set(obj: JsonObject, old: JsonObject | None) -> list[FieldError]:
    return _validate_selector_and_template(obj.get("spec") or {}, "statefulset") + _immutable_selector(obj, old)


# ---------------------------------------------------------------------------------------------------------------
# Service (ValidateService)

NODE_PORT_RANGE = (30000, 32767)
_SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")


def _go_service_port_key(protocol: str, port: Any) -> GoLiteral:
    """The `core.ServicePort{Protocol, Port}` key that ValidateService reports as the duplicate."""
    return GoLiteral(
        f'core.ServicePort{{Name:"", Protocol:{_go_string(protocol)}, AppProtocol:(*string)(nil), Port:{port}, '
        'TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:""}, NodePort:0}'
    )


def validate_service(obj: JsonObject, old: JsonObject | None) -> list[FieldError]:
    spec = obj.get("spec") or {}
    problems: list[FieldError] = []
    service_type = spec.get("type", "ClusterIP")
    if service_type not in _SERVICE_TYPES:
        problems.append(
            FieldError(
                "spec.type",
                "Unsupported value",
                "supported values: " + ", ".join(f'"{t}"' for t in _SERVICE_TYPES),
                service_type,
            )
        )
    ports = [port for port in spec.get("ports") or [] if isinstance(port, dict)]
    headless = spec.get("clusterIP") == "None"
    if not ports and not headless and service_type != "ExternalName":
        problems.append(FieldError("spec.ports", "Required value", ""))
    names: set[str] = set()
    for index, port in enumerate(ports):  # validateServicePort
        item = f"spec.ports[{index}]"
        name = port.get("name") or ""
        if len(ports) > 1 and not name:
            problems.append(FieldError(f"{item}.name", "Required value", ""))
        elif name:
            problems.extend(FieldError(f"{item}.name", "Invalid value", m, name) for m in is_dns1123_label(name))
            if name in names:
                problems.append(FieldError(f"{item}.name", "Duplicate value", "", name))
            names.add(name)
        problems.extend(
            FieldError(f"{item}.port", "Invalid value", m, port.get("port") or 0)
            for m in is_valid_port_num(port.get("port") or 0)
        )
        protocol = port.get("protocol", "TCP")
        if protocol not in _PROTOCOLS:
            problems.append(
                FieldError(f"{item}.protocol", "Unsupported value", 'supported values: "SCTP", "TCP", "UDP"', protocol)
            )
        if "targetPort" in port:
            problems.extend(_port_num_or_name(port.get("targetPort"), f"{item}.targetPort"))
        if service_type == "ClusterIP" and port.get("nodePort"):
            problems.append(FieldError(f"{item}.nodePort", "Forbidden", "may not be used when `type` is 'ClusterIP'"))
    seen: set[tuple[str, Any]] = set()
    seen_node_ports: set[tuple[str, Any]] = set()
    for index, port in enumerate(ports):
        key = (port.get("protocol", "TCP"), port.get("port"))
        if key in seen:
            problems.append(FieldError(f"spec.ports[{index}]", "Duplicate value", "", _go_service_port_key(*key)))
        seen.add(key)
        node_port = port.get("nodePort")
        if node_port:
            node_key = (port.get("protocol", "TCP"), node_port)
            if node_key in seen_node_ports:
                problems.append(FieldError(f"spec.ports[{index}].nodePort", "Duplicate value", "", node_port))
            seen_node_ports.add(node_key)
    problems.extend(validate_labels(spec.get("selector"), "spec.selector"))
    return problems


def drop_type_dependent_fields(service: JsonObject, old: JsonObject | None) -> None:
    """The Service registry's dropTypeDependentFields: switching to a type without node ports clears the node ports
    the client left as they were (so `kubectl apply` of type ClusterIP over a NodePort Service is not refused)."""
    if old is None:
        return
    spec, old_spec = service.get("spec") or {}, old.get("spec") or {}
    needs = ("NodePort", "LoadBalancer")
    if spec.get("type", "ClusterIP") in needs or old_spec.get("type", "ClusterIP") not in needs:
        return
    old_ports = {(p.get("port"), p.get("protocol", "TCP")): p.get("nodePort") for p in old_spec.get("ports") or []}
    for port in spec.get("ports") or []:
        if port.get("nodePort") and old_ports.get((port.get("port"), port.get("protocol", "TCP"))) == port["nodePort"]:
            del port["nodePort"]


def node_port_errors(service: JsonObject, taken: Mapping[int, str]) -> list[FieldError]:
    """The service node-port allocator's refusals (pkg/registry/core/service/portallocator), as the 422 the
    registry answers: out of range, or already allocated to another Service (`taken`: port -> owner key)."""
    problems: list[FieldError] = []
    low, high = NODE_PORT_RANGE
    for index, port in enumerate((service.get("spec") or {}).get("ports") or []):
        node_port = port.get("nodePort") if isinstance(port, dict) else None
        if not node_port:
            continue
        path = f"spec.ports[{index}].nodePort"
        if not isinstance(node_port, int) or not low <= node_port <= high:
            problems.append(
                FieldError(
                    path,
                    "Invalid value",
                    f"provided port is not in the valid range. The range of valid ports is {low}-{high}",
                    node_port,
                )
            )
        elif node_port in taken:
            problems.append(FieldError(path, "Invalid value", "provided port is already allocated", node_port))
    return problems


# ---------------------------------------------------------------------------------------------------------------
# Event (pkg/apis/core/validation/events.go)

REPORTING_INSTANCE_LIMIT = ACTION_LIMIT = REASON_LIMIT = 128
NOTE_LIMIT = 1024


def validate_event(obj: JsonObject, *, events_v1: bool) -> list[FieldError]:
    """ValidateEventCreate: legacyValidateEvent for both APIs, the strict checks for events.k8s.io/v1 creates.

    `events_v1`: written through events.k8s.io/v1 (`regarding` and `note` for `involvedObject` and `message`).
    """
    problems: list[FieldError] = []
    namespace = (obj.get("metadata") or {}).get("namespace") or ""
    involved = obj.get("regarding" if events_v1 else "involvedObject") or {}
    involved_namespace = involved.get("namespace") or ""
    controller_field = "reportingController" if events_v1 else "reportingComponent"
    if not obj.get("eventTime"):
        if not involved_namespace:
            if namespace not in ("", "default"):
                problems.append(
                    FieldError("involvedObject.namespace", "Invalid value", "does not match event.namespace", "")
                )
        elif namespace != involved_namespace:
            problems.append(
                FieldError(
                    "involvedObject.namespace", "Invalid value", "does not match event.namespace", involved_namespace
                )
            )
    else:
        if not involved_namespace and namespace not in ("default", "kube-system"):
            problems.append(
                FieldError("involvedObject.namespace", "Invalid value", "does not match event.namespace", "")
            )
        controller = obj.get("reportingComponent") or obj.get("reportingController") or ""
        if not controller:
            problems.append(FieldError(controller_field, "Required value", ""))
        problems.extend(
            FieldError(controller_field, "Invalid value", m, controller) for m in is_qualified_name(controller)
        )
        for field, limit in (
            ("reportingInstance", REPORTING_INSTANCE_LIMIT),
            ("action", ACTION_LIMIT),
            ("reason", REASON_LIMIT),
        ):
            value = obj.get(field) or ""
            if not value:
                problems.append(FieldError(field, "Required value", ""))
            if len(value) > limit:
                problems.append(FieldError(field, "Invalid value", f"can have at most {limit} characters", ""))
        if len(obj.get("note" if events_v1 else "message") or "") > NOTE_LIMIT:
            problems.append(
                FieldError(
                    "note" if events_v1 else "message", "Invalid value", f"can have at most {NOTE_LIMIT} characters", ""
                )
            )
    problems.extend(FieldError("namespace", "Invalid value", m, namespace) for m in is_dns1123_subdomain(namespace))
    if events_v1:
        if not obj.get("eventTime"):
            problems.append(FieldError("eventTime", "Required value", ""))
        if obj.get("type") not in ("Normal", "Warning"):
            problems.append(FieldError("type", "Invalid value", f"has invalid value: {obj.get('type') or ''}", ""))
    return problems


def validate_lease(obj: JsonObject, old: JsonObject | None) -> list[FieldError]:
    """ValidateLeaseSpec (pkg/apis/coordination/validation): a positive duration, no negative transition count."""
    spec = obj.get("spec") or {}
    problems: list[FieldError] = []
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and (not isinstance(duration, int) or duration <= 0):
        problems.append(FieldError("spec.leaseDurationSeconds", "Invalid value", "must be greater than 0", duration))
    transitions = spec.get("leaseTransitions")
    if transitions is not None and (not isinstance(transitions, int) or transitions < 0):
        problems.append(
            FieldError("spec.leaseTransitions", "Invalid value", "must be greater than or equal to 0", transitions)
        )
    return problems


# ---------------------------------------------------------------------------------------------------------------


Validator = Callable[[JsonObject, JsonObject | None], list[FieldError]]
VALIDATORS: dict[tuple[str, str], Validator] = {
    ("apps", "deployments"): validate_deployment,
    ("apps", "replicasets"): validate_replica_set,
    ("apps", "statefulsets"): validate_stateful_set,
    ("", "services"): validate_service,
    ("coordination.k8s.io", "leases"): validate_lease,
    ("", "pods"): lambda obj, old: validate_pod_spec(obj.get("spec"), "spec"),
    ("", "events"): lambda obj, old: validate_event(obj, events_v1=False) if old is None else [],
    ("events.k8s.io", "events"): lambda obj, old: validate_event(obj, events_v1=True) if old is None else [],
}


def validation_errors(rtype: ResourceType, obj: JsonObject, old: JsonObject | None) -> list[FieldError]:
    """Everything the apiserver's validation of this kind refuses in `obj` (an update when `old` is given)."""
    problems = validate_object_meta(obj.get("metadata") or {})
    validator = VALIDATORS.get((rtype.group, rtype.plural))
    if validator is not None:
        problems += validator(obj, old)
    return problems


def validate(rtype: ResourceType, obj: JsonObject, old: JsonObject | None) -> None:
    """Raises the apiserver's 422 Invalid naming every bad field."""
    problems = validation_errors(rtype, obj, old)
    if problems:
        raise invalid(rtype, obj, problems)


def invalid(rtype: ResourceType, obj: JsonObject, problems: Iterable[FieldError]) -> ApiError:
    return errors.invalid(rtype.kind, rtype.group, (obj.get("metadata") or {}).get("name", ""), list(problems))
