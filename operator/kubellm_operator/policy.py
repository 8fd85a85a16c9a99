"""The tenant policy: what an LLMService may ask of the operator, decided from its spec and the operator's settings.

The operator creates each LLMService's Deployment and Service with its own rights, not the tenant's: whoever may
create an LLMService in a namespace gets pods running the image it names, mounting the claim it names, and a
Service of the type it asks for, whatever RBAC says about Deployments and Services there. The settings here
(``--allowed-image-prefixes``, ``--allowed-service-types``, ``--[no-]allow-public-without-auth``,
``--[no-]allow-storage-claims``, ``--allowed-env-names``) bound that. A spec outside them is refused as a whole
(``Degraded=True``, reason ``NotAllowed``, nothing applied); a public Service without auth, when allowed, is a
warning (``PublicWithoutAuth``: a Warning Event and the ``Authenticated`` condition). docs/operator.md, "Security
model", is the reader's account of all this.

Pure: no I/O, no clock; the same spec and settings give the same verdict, so the plan can be table-tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from kubellm_operator.api import LLMService, ServiceType
from kubellm_operator.status import PUBLIC_WITHOUT_AUTH, authentication

# Where an image reference may continue after an allowed prefix: a path component, a tag or a digest. A prefix
# that ends inside a name (ghcr.io/kubellm) must not admit its longer neighbours (ghcr.io/kubellm-mirror/x).
_NAME_BOUNDARIES = "/:@"


@dataclass(frozen=True)
class TenantPolicy:
    """The operator settings of the policy (``OperatorSettings.tenant_policy``); the defaults allow what an
    LLMService could always ask."""

    allowed_image_prefixes: tuple[str, ...] = ()  # empty: any image
    allowed_service_types: tuple[ServiceType, ...] = tuple(ServiceType)
    allow_public_without_auth: bool = True
    allow_storage_claims: bool = True
    allowed_env_names: tuple[str, ...] = ()  # shell patterns; empty: any name


@dataclass(frozen=True)
class PolicyRefusal:
    """One field of the spec outside the operator's policy."""

    field: str  # the spec's path, as the user writes it (spec.service.type)
    setting: str  # the operator setting that refuses it, as a flag (--allowed-service-types)
    message: str  # for the Degraded condition and the Event: names the field, the value, the setting and the way out


@dataclass(frozen=True)
class PolicyWarning:
    """Something allowed that a user must not miss (a Warning Event, and a condition that says it)."""

    reason: str  # one CamelCase word: the Event's reason
    message: str


@dataclass(frozen=True)
class PolicyVerdict:
    refusals: tuple[PolicyRefusal, ...] = ()
    warnings: tuple[PolicyWarning, ...] = ()

    @property
    def allowed(self) -> bool:
        return not self.refusals

    @property
    def message(self) -> str:
        """Every refusal in one line, for the NotAllowed condition."""
        return "; ".join(refusal.message for refusal in self.refusals)


def image_allowed(image: str, prefixes: Sequence[str]) -> bool:
    """Whether ``image`` starts with one of ``prefixes`` at a name boundary; an empty list allows every image."""
    if not prefixes:
        return True
    for prefix in prefixes:
        if image == prefix:
            return True
        if image.startswith(prefix) and (prefix[-1] in _NAME_BOUNDARIES or image[len(prefix)] in _NAME_BOUNDARIES):
            return True
    return False


def evaluate(service: LLMService, settings: TenantPolicy) -> PolicyVerdict:
    """The verdict of the operator's tenant policy on one LLMService (see the module docstring)."""
    spec = service.spec
    refusals: list[PolicyRefusal] = []
    warnings: list[PolicyWarning] = []

    if spec.image is not None and not image_allowed(spec.image, settings.allowed_image_prefixes):
        refusals.append(
            PolicyRefusal(
                "spec.image",
                "--allowed-image-prefixes",
                f"spec.image {spec.image} is not allowed by the operator's --allowed-image-prefixes "
                f"({', '.join(settings.allowed_image_prefixes)}); name an image under one of them, or none for "
                "the operator's default",
            )
        )

    service_type = spec.service.type
    if service_type not in settings.allowed_service_types:
        allowed = ", ".join(kind.value for kind in settings.allowed_service_types)
        refusals.append(
            PolicyRefusal(
                "spec.service.type",
                "--allowed-service-types",
                f"spec.service.type {service_type.value} is not allowed by the operator's --allowed-service-types "
                f"({allowed})",
            )
        )
    else:
        _, reason, said = authentication(service_type, spec.auth is not None)
        if reason == PUBLIC_WITHOUT_AUTH:
            if settings.allow_public_without_auth:
                warnings.append(PolicyWarning(PUBLIC_WITHOUT_AUTH, said))
            else:
                refusals.append(
                    PolicyRefusal(
                        "spec.auth",
                        "--allow-public-without-auth",
                        f"spec.auth is required for spec.service.type {service_type.value}: the operator runs "
                        "with --no-allow-public-without-auth; set spec.auth.apiKeySecretRef or use ClusterIP",
                    )
                )

    claim = spec.storage.claim_name
    if claim is not None and not settings.allow_storage_claims:
        refusals.append(
            PolicyRefusal(
                "spec.storage.claimName",
                "--allow-storage-claims",
                f"spec.storage.claimName {claim} is not allowed: the operator runs with --no-allow-storage-claims; "
                "leave it unset for an emptyDir cache (spec.storage.cacheSize)",
            )
        )

    patterns = settings.allowed_env_names
    if patterns:
        for index, var in enumerate(spec.env):
            if not any(fnmatchcase(var.name, pattern) for pattern in patterns):
                refusals.append(
                    PolicyRefusal(
                        f"spec.env[{index}].name",
                        "--allowed-env-names",
                        f"spec.env[{index}].name {var.name} is not allowed by the operator's --allowed-env-names "
                        f"({', '.join(patterns)})",
                    )
                )
    return PolicyVerdict(tuple(refusals), tuple(warnings))
