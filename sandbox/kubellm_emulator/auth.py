"""Who is asking and may they: bearer-token authentication, impersonation and RBAC, as kube-apiserver does them.

- Authentication: a bearer token names an identity. The emulator knows an admin token (`ADMIN_TOKEN`, user
  `kubernetes-admin` in `system:masters`, what the kubeconfigs of tests and kubectl carry) and the ServiceAccount
  tokens it mints (`system:serviceaccount:<ns>:<name>`, valid while the ServiceAccount exists). No token is
  `system:anonymous`; an unknown one is 401 `Unauthorized` (k8s.io/apiserver `filters.WithAuthentication`).
- Impersonation: `Impersonate-User` / `Impersonate-Group` / `Impersonate-Uid` (kubectl `--as`, `--as-group`) need
  the `impersonate` verb on users, groups, uids or the ServiceAccount (`filters.WithImpersonation`).
- Authorization: `system:masters` is allowed everything (the privileged-group authorizer); everyone else by the
  Role, ClusterRole, RoleBinding and ClusterRoleBinding objects stored in the emulator, with
  `plugin/pkg/auth/authorizer/rbac`'s rules (`RuleAllows`: verbs, apiGroups, resources and `resource/subresource`,
  `*/subresource`, resourceNames, nonResourceURLs with a trailing `*`). Request attributes are derived from the
  path and method as `request.RequestInfoFactory` does (list/watch/deletecollection, a `metadata.name` field
  selector naming the object). A denial is the 403 of `responsewriters.Forbidden`.
- Access reviews: SelfSubjectAccessReview, SubjectAccessReview, SelfSubjectRulesReview and SelfSubjectReview, so
  `kubectl auth can-i ... --as ...`, `kubectl auth can-i --list` and `kubectl auth whoami` answer.

Not emulated: RBAC escalation prevention (creating a Role that grants more than one holds), ClusterRole
aggregation, the Node and Webhook authorizers, token expiry and audiences.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from kubellm_emulator import errors
from kubellm_emulator.errors import ApiError
from kubellm_emulator.resources import ResourceType

JsonObject = dict[str, Any]
ADMIN_TOKEN = "kubellm-emulator"
ADMIN_USER = "kubernetes-admin"
ANONYMOUS = "system:anonymous"
AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
MASTERS = "system:masters"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
RBAC_GROUP = "rbac.authorization.k8s.io"
_NAMESPACE_SUBRESOURCES = {"status", "finalize"}
_VERBS = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclasses.dataclass(frozen=True)
class Identity:
    user: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def user_info(self) -> JsonObject:
        info: JsonObject = {"username": self.user, "groups": list(self.groups)}
        if self.uid:
            info["uid"] = self.uid
        if self.extra:
            info["extra"] = {key: list(values) for key, values in self.extra}
        return info


ADMIN = Identity(ADMIN_USER, (MASTERS, AUTHENTICATED))
ANONYMOUS_IDENTITY = Identity(ANONYMOUS, (UNAUTHENTICATED,))


def service_account_identity(namespace: str, name: str) -> Identity:
    """serviceaccount.UserInfo: the user name and the groups every ServiceAccount token carries."""
    return Identity(
        f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}",
        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED),
    )


def split_service_account(user: str) -> tuple[str, str] | None:
    """serviceaccount.SplitUsername: (namespace, name) of `system:serviceaccount:<ns>:<name>`, else None."""
    if not user.startswith(SERVICE_ACCOUNT_PREFIX):
        return None
    parts = user[len(SERVICE_ACCOUNT_PREFIX) :].split(":")
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


@dataclasses.dataclass(frozen=True)
class Attributes:
    """authorizer.Attributes: what a request asks to do."""

    user: Identity
    verb: str
    resource_request: bool
    path: str = ""
    api_group: str = ""
    api_version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""

    @property
    def qualified_resource(self) -> str:
        return f"{self.resource}.{self.api_group}" if self.api_group else self.resource


def request_attributes(identity: Identity, method: str, path: str, query: Mapping[str, str]) -> Attributes:
    """request.RequestInfoFactory.NewRequestInfo, for the /api and /apis prefixes."""
    verb = _VERBS.get(method.upper(), method.lower())
    parts = [part for part in path.split("/") if part]
    non_resource = Attributes(identity, method.lower(), False, path=path)
    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return non_resource
    if parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    else:
        if len(parts) < 4:
            return non_resource
        group, version, rest = parts[1], parts[2], parts[3:]
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    resource, name, subresource = rest[0], rest[1] if len(rest) > 1 else "", rest[2] if len(rest) > 2 else ""
    if not name and verb == "get":
        verb = "watch" if str(query.get("watch", "")).lower() in ("true", "1") else "list"
        selected = _exact_name(query.get("fieldSelector", ""))
        if selected and "/" not in selected:
            name = selected
    if not name and verb == "delete":
        verb = "deletecollection"
    return Attributes(identity, verb, True, path, group, version, namespace, resource, subresource, name)


def _exact_name(field_selector: str) -> str:
    for term in field_selector.split(","):
        key, separator, value = term.partition("==") if "==" in term else term.partition("=")
        if separator and key.strip() == "metadata.name" and not key.strip().endswith("!"):
            return value.strip()
    return ""


def forbidden(attributes: Attributes, reason: str = "") -> ApiError:
    """responsewriters.Forbidden: `<resource>.<group> "<name>" is forbidden: User "u" cannot <verb> ...`."""
    user = attributes.user.user
    if not attributes.resource_request:
        message = f'User "{user}" cannot {attributes.verb} path "{attributes.path}"'
    else:
        resource = attributes.resource + (f"/{attributes.subresource}" if attributes.subresource else "")
        where = f'in the namespace "{attributes.namespace}"' if attributes.namespace else "at the cluster scope"
        message = (
            f'User "{user}" cannot {attributes.verb} resource "{resource}" in API group "{attributes.api_group}" '
            f"{where}"
        )
    if reason:
        message = f"{message}: {reason}"
    details: JsonObject = {}
    if not attributes.resource:
        full = f"forbidden: {message}"
    elif attributes.name:
        full = f'{attributes.qualified_resource} "{attributes.name}" is forbidden: {message}'
    else:
        full = f"{attributes.qualified_resource} is forbidden: {message}"
    if attributes.resource:
        details = {"kind": attributes.resource}
        if attributes.api_group:
            details["group"] = attributes.api_group
        if attributes.name:
            details["name"] = attributes.name
    return ApiError(403, "Forbidden", full, details=details or None)


# ---------------------------------------------------------------------------------------------------------------
# RBAC (plugin/pkg/auth/authorizer/rbac/rbac.go, pkg/apis/rbac/v1/evaluation_helpers.go)


def _verb_matches(rule: JsonObject, verb: str) -> bool:
    verbs = rule.get("verbs") or []
    return "*" in verbs or verb in verbs


def _group_matches(rule: JsonObject, group: str) -> bool:
    groups = rule.get("apiGroups") or []
    return "*" in groups or group in groups


def _resource_matches(rule: JsonObject, resource: str, subresource: str) -> bool:
    combined = f"{resource}/{subresource}" if subresource else resource
    for candidate in rule.get("resources") or []:
        if candidate in ("*", combined):
            return True
        if subresource and candidate == f"*/{subresource}":
            return True
    return False


def _name_matches(rule: JsonObject, name: str) -> bool:
    names = rule.get("resourceNames") or []
    return not names or name in names


def _non_resource_matches(rule: JsonObject, path: str) -> bool:
    for candidate in rule.get("nonResourceURLs") or []:
        if candidate == "*" or candidate == path:
            return True
        if candidate.endswith("*") and path.startswith(candidate[:-1]):
            return True
    return False


def rule_allows(attributes: Attributes, rule: JsonObject) -> bool:
    """rbacv1helpers.RuleAllows."""
    if attributes.resource_request:
        return (
            _verb_matches(rule, attributes.verb)
            and _group_matches(rule, attributes.api_group)
            and _resource_matches(rule, attributes.resource, attributes.subresource)
            and _name_matches(rule, attributes.name)
        )
    return _verb_matches(rule, attributes.verb) and _non_resource_matches(rule, attributes.path)


def _subject_applies(subject: JsonObject, identity: Identity, binding_namespace: str) -> bool:
    """appliesToUser."""
    kind, name = subject.get("kind"), subject.get("name", "")
    if kind == "User":
        return identity.user == name
    if kind == "Group":
        return name in identity.groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return bool(namespace) and identity.user == f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}"
    return False


def _describe_subject(subject: JsonObject, binding_namespace: str) -> str:
    if subject.get("kind") == "ServiceAccount":
        return f'ServiceAccount "{subject.get("name")}/{subject.get("namespace") or binding_namespace}"'
    return f'{subject.get("kind")} "{subject.get("name")}"'


@dataclasses.dataclass(frozen=True)
class _Grant:
    """One binding's subject with the rules of its role (or why the role could not be read)."""

    source: str  # e.g. `ClusterRoleBinding "x" of ClusterRole "y" to ServiceAccount "sa/ns"`
    namespace: str  # "" for ClusterRoleBindings: every namespace and the cluster scope
    subject: JsonObject
    binding_namespace: str
    rules: tuple[JsonObject, ...]
    missing: str = ""  # `clusterrole.rbac.authorization.k8s.io "x" not found`


class Authorizer:
    """Evaluates RBAC over the objects an `ObjectStore` holds (re-read when the store changes)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._cached_at = -1
        self._grants: tuple[_Grant, ...] = ()

    def _type(self, plural: str) -> ResourceType:
        rtype: ResourceType = self._store.type_for(RBAC_GROUP, "v1", plural)
        return rtype

    def _load(self) -> tuple[_Grant, ...]:
        version = self._store.resource_version
        with self._lock:
            if version == self._cached_at:
                return self._grants
        with self._store.lock:
            version = self._store.resource_version
            roles = {
                (role["metadata"].get("namespace", ""), role["metadata"]["name"]): role
                for role in self._store.list_objects(self._type("roles"), None)[0]
            }
            cluster_roles = {
                role["metadata"]["name"]: role for role in self._store.list_objects(self._type("clusterroles"), None)[0]
            }
            bindings = [
                (binding, "ClusterRoleBinding")
                for binding in self._store.list_objects(self._type("clusterrolebindings"), None)[0]
            ] + [(binding, "RoleBinding") for binding in self._store.list_objects(self._type("rolebindings"), None)[0]]
        grants: list[_Grant] = []
        for binding, binding_kind in bindings:
            meta = binding["metadata"]
            namespace = meta.get("namespace", "") if binding_kind == "RoleBinding" else ""
            ref = binding.get("roleRef") or {}
            ref_kind, ref_name = ref.get("kind", ""), ref.get("name", "")
            role = cluster_roles.get(ref_name) if ref_kind == "ClusterRole" else roles.get((namespace, ref_name))
            missing = "" if role is not None else f'{ref_kind.lower()}.{RBAC_GROUP} "{ref_name}" not found'
            rules = tuple(rule for rule in (role or {}).get("rules") or [] if isinstance(rule, dict))
            shown_name = meta["name"] if binding_kind == "ClusterRoleBinding" else f"{meta['name']}/{namespace}"
            for subject in binding.get("subjects") or []:
                source = (
                    f'{binding_kind} "{shown_name}" of {ref_kind} "{ref_name}" to '
                    f"{_describe_subject(subject, namespace)}"
                )
                grants.append(_Grant(source, namespace, subject, namespace, rules, missing))
        with self._lock:
            self._cached_at, self._grants = version, tuple(grants)
        return self._grants

    def _applicable(self, identity: Identity, namespace: str) -> Iterable[_Grant]:
        for grant in self._load():
            if grant.namespace and grant.namespace != namespace:
                continue
            if _subject_applies(grant.subject, identity, grant.binding_namespace):
                yield grant

    def authorize(self, attributes: Attributes) -> tuple[bool, str]:
        """(allowed, reason): the reason names the binding that allowed it, or the roles that could not be read."""
        if MASTERS in attributes.user.groups:
            return True, ""
        missing: list[str] = []
        namespace = attributes.namespace if attributes.resource_request else ""
        for grant in self._applicable(attributes.user, namespace):
            if grant.missing:
                missing.append(grant.missing)
                continue
            if any(rule_allows(attributes, rule) for rule in grant.rules):
                return True, f"RBAC: allowed by {grant.source}"
        if not missing:
            return False, ""
        shown = missing[0] if len(missing) == 1 else "[" + ", ".join(missing) + "]"
        return False, f"RBAC: {shown}"

    def rules_for(self, identity: Identity, namespace: str) -> tuple[list[JsonObject], list[JsonObject]]:
        """SelfSubjectRulesReview: the resource and non-resource rules that apply in `namespace`."""
        if MASTERS in identity.groups:
            return (
                [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            )
        resource_rules: list[JsonObject] = []
        non_resource_rules: list[JsonObject] = []
        for grant in self._applicable(identity, namespace):
            for rule in grant.rules:
                if rule.get("nonResourceURLs"):
                    if not grant.namespace:
                        non_resource_rules.append(
                            {"verbs": list(rule.get("verbs") or []), "nonResourceURLs": list(rule["nonResourceURLs"])}
                        )
                    continue
                entry = {
                    "verbs": list(rule.get("verbs") or []),
                    "apiGroups": list(rule.get("apiGroups") or []),
                    "resources": list(rule.get("resources") or []),
                }
                if rule.get("resourceNames"):
                    entry["resourceNames"] = list(rule["resourceNames"])
                resource_rules.append(entry)
        return resource_rules, non_resource_rules


# ---------------------------------------------------------------------------------------------------------------
# Authentication and impersonation


class Authenticator:
    """Bearer tokens: the admin's, and the ServiceAccount tokens the emulator mints."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._tokens: dict[str, Identity] = {ADMIN_TOKEN: ADMIN}
        self._service_account_tokens: dict[str, tuple[str, str]] = {}

    def mint_service_account_token(self, namespace: str, name: str) -> str:
        """A token for the ServiceAccount (as the TokenRequest API hands out); it authenticates while the
        ServiceAccount exists."""
        token = f"sa.{namespace}.{name}.{secrets.token_hex(16)}"
        self._service_account_tokens[token] = (namespace, name)
        return token

    def authenticate(self, authorization: str | None) -> Identity:
        if not authorization:
            return ANONYMOUS_IDENTITY
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized()
        token = token.strip()
        if token in self._tokens:
            return self._tokens[token]
        account = self._service_account_tokens.get(token)
        if account is None:
            raise unauthorized()
        try:
            self._store.get(self._store.type_for("", "v1", "serviceaccounts"), account[0], account[1])
        except ApiError:
            raise unauthorized() from None  # the ServiceAccount was deleted: its tokens no longer authenticate
        return service_account_identity(*account)


def impersonate(identity: Identity, headers: Mapping[str, str], groups: list[str], authorizer: Authorizer) -> Identity:
    """filters.WithImpersonation: checks `impersonate` on each requested user, group, uid and extra."""
    user = headers.get("Impersonate-User")
    uid = headers.get("Impersonate-Uid")
    extras = {
        key[len("Impersonate-Extra-") :].lower(): value
        for key, value in headers.items()
        if key.lower().startswith("impersonate-extra-")
    }
    if user is None:
        if groups or uid or extras:
            raise ApiError(
                500,
                "InternalError",
                "Internal error occurred: requested impersonation of groups or extra fields without impersonating a "
                "user",
            )
        return identity
    checks: list[Attributes] = []
    account = split_service_account(user)
    if account is not None:
        checks.append(
            Attributes(identity, "impersonate", True, namespace=account[0], resource="serviceaccounts", name=account[1])
        )
    else:
        checks.append(Attributes(identity, "impersonate", True, resource="users", name=user))
    for group in groups:
        checks.append(Attributes(identity, "impersonate", True, resource="groups", name=group))
    if uid:
        checks.append(
            Attributes(identity, "impersonate", True, api_group="authentication.k8s.io", resource="uids", name=uid)
        )
    for key, value in extras.items():
        checks.append(
            Attributes(
                identity,
                "impersonate",
                True,
                api_group="authentication.k8s.io",
                resource="userextras",
                subresource=key,
                name=value,
            )
        )
    for check in checks:
        allowed, reason = authorizer.authorize(check)
        if not allowed:
            raise forbidden(check, reason)
    impersonated_groups = list(groups)
    if account is not None and not groups:
        impersonated_groups = ["system:serviceaccounts", f"system:serviceaccounts:{account[0]}"]
    if user != ANONYMOUS and not (set(impersonated_groups) & {AUTHENTICATED, UNAUTHENTICATED}):
        impersonated_groups.append(AUTHENTICATED)
    return Identity(user, tuple(impersonated_groups), uid or "", tuple((k, (v,)) for k, v in sorted(extras.items())))


# ---------------------------------------------------------------------------------------------------------------
# Access reviews (pkg/registry/authorization)


AUTHORIZATION_GROUP = "authorization.k8s.io"
REVIEW_KINDS = {
    ("authorization.k8s.io", "selfsubjectaccessreviews"): "SelfSubjectAccessReview",
    ("authorization.k8s.io", "subjectaccessreviews"): "SubjectAccessReview",
    ("authorization.k8s.io", "selfsubjectrulesreviews"): "SelfSubjectRulesReview",
    ("authentication.k8s.io", "selfsubjectreviews"): "SelfSubjectReview",
}


def _review_attributes(identity: Identity, spec: JsonObject, kind: str) -> Attributes:
    resource = spec.get("resourceAttributes")
    non_resource = spec.get("nonResourceAttributes")
    if isinstance(resource, dict):
        return Attributes(
            identity,
            resource.get("verb", ""),
            True,
            api_group=resource.get("group", ""),
            api_version=resource.get("version", ""),
            namespace=resource.get("namespace", ""),
            resource=resource.get("resource", ""),
            subresource=resource.get("subresource", ""),
            name=resource.get("name", ""),
        )
    if isinstance(non_resource, dict):
        return Attributes(identity, non_resource.get("verb", ""), False, path=non_resource.get("path", ""))
    raise errors.invalid(
        kind,
        AUTHORIZATION_GROUP,
        "",
        [
            errors.FieldError(
                "spec.resourceAttributes",
                "Invalid value",
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                errors.GoLiteral("null"),
            )
        ],
    )


def review(group: str, plural: str, body: Any, requester: Identity, authorizer: Authorizer) -> JsonObject:
    """The answer to a POST of an access review: the review with its `status` filled in."""
    kind = REVIEW_KINDS[(group, plural)]
    if not isinstance(body, dict):
        raise errors.bad_request(f"the body of a {kind} must be a JSON object")
    spec = body.get("spec") or {}
    answer: JsonObject = {
        "kind": kind,
        "apiVersion": f"{group}/v1",
        "metadata": {"creationTimestamp": None, **(body.get("metadata") or {})},
    }
    if kind == "SelfSubjectReview":
        answer["status"] = {"userInfo": requester.user_info()}
        return answer
    if kind == "SelfSubjectRulesReview":
        resource_rules, non_resource_rules = authorizer.rules_for(requester, spec.get("namespace", ""))
        answer["spec"] = spec
        answer["status"] = {
            "resourceRules": resource_rules,
            "nonResourceRules": non_resource_rules,
            "incomplete": False,
        }
        return answer
    if kind == "SubjectAccessReview":
        if not spec.get("user") and not spec.get("groups"):
            raise errors.invalid(
                kind,
                AUTHORIZATION_GROUP,
                "",
                [
                    errors.FieldError(
                        "spec.user", "Invalid value", "at least one of user or group must be specified", ""
                    )
                ],
            )
        subject = Identity(
            spec.get("user", ""),
            tuple(spec.get("groups") or ()),
            spec.get("uid", ""),
        )
    else:
        subject = requester
    attributes = _review_attributes(subject, spec, kind)
    allowed, reason = authorizer.authorize(attributes)
    answer["spec"] = spec
    answer["status"] = {"allowed": allowed, **({"reason": reason} if reason else {})}
    return answer


# ---------------------------------------------------------------------------------------------------------------
# The bootstrap policy every cluster starts with (plugin/pkg/auth/authorizer/rbac/bootstrappolicy), the part
# clients rely on: cluster-admin for system:masters, discovery and self-reviews for every authenticated user.


_DISCOVERY_URLS = [
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/healthz",
    "/livez",
    "/openapi",
    "/openapi/*",
    "/readyz",
    "/version",
    "/version/",
]


def bootstrap_policy() -> list[JsonObject]:
    def cluster_role(name: str, rules: list[JsonObject]) -> JsonObject:
        return {
            "apiVersion": f"{RBAC_GROUP}/v1",
            "kind": "ClusterRole",
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
            },
            "rules": rules,
        }

    def binding(name: str, role: str, groups: list[str]) -> JsonObject:
        return {
            "apiVersion": f"{RBAC_GROUP}/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
            },
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": RBAC_GROUP, "kind": "Group", "name": group} for group in groups],
        }

    return [
        cluster_role(
            "cluster-admin",
            [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"nonResourceURLs": ["*"], "verbs": ["*"]}],
        ),
        cluster_role("system:discovery", [{"nonResourceURLs": _DISCOVERY_URLS, "verbs": ["get"]}]),
        cluster_role(
            "system:public-info-viewer",
            [{"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}],
        ),
        cluster_role(
            "system:basic-user",
            [
                {
                    "apiGroups": ["authorization.k8s.io"],
                    "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    "verbs": ["create"],
                },
                {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]},
            ],
        ),
        binding("cluster-admin", "cluster-admin", [MASTERS]),
        binding("system:discovery", "system:discovery", [AUTHENTICATED]),
        binding("system:public-info-viewer", "system:public-info-viewer", [AUTHENTICATED, UNAUTHENTICATED]),
        binding("system:basic-user", "system:basic-user", [AUTHENTICATED]),
    ]
