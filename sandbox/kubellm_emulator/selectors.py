"""Label selectors (`a=b,c!=d,e in (f,g),!h`) and field selectors (`metadata.name=x,status.phase!=Running`)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from kubellm_emulator.errors import bad_request

_SET_TERM = re.compile(r"^\s*(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^)]*)\)\s*$")


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator == "exists":
            return present
        if self.operator == "!exists":
            return not present
        if self.operator in ("=", "in"):
            return present and value in self.values
        # "!=" and "notin" match objects without the label too, as in Kubernetes.
        return not present or value not in self.values


def _split_terms(selector: str) -> list[str]:
    """Splits on commas outside parentheses."""
    terms, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [term.strip() for term in terms if term.strip()]


def parse_label_selector(selector: str | None) -> list[Requirement]:
    requirements: list[Requirement] = []
    for term in _split_terms(selector or ""):
        set_match = _SET_TERM.match(term)
        if set_match:
            values = tuple(v.strip() for v in set_match["values"].split(",") if v.strip())
            requirements.append(Requirement(set_match["key"], set_match["op"], values))
        elif "!=" in term:
            key, value = term.split("!=", 1)
            requirements.append(Requirement(key.strip(), "!=", (value.strip(),)))
        elif "==" in term:
            key, value = term.split("==", 1)
            requirements.append(Requirement(key.strip(), "=", (value.strip(),)))
        elif "=" in term:
            key, value = term.split("=", 1)
            requirements.append(Requirement(key.strip(), "=", (value.strip(),)))
        elif term.startswith("!"):
            requirements.append(Requirement(term[1:].strip(), "!exists"))
        elif re.fullmatch(r"[A-Za-z0-9._/-]+", term):
            requirements.append(Requirement(term, "exists"))
        else:
            raise bad_request(f"unable to parse requirement: invalid label selector term {term!r}")
    return requirements


def selector_from_match_labels(selector: dict[str, Any] | None) -> str:
    """Renders a metav1.LabelSelector (matchLabels + matchExpressions) as a selector string."""
    if not selector:
        return ""
    terms = [f"{key}={value}" for key, value in sorted((selector.get("matchLabels") or {}).items())]
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        if operator == "In":
            terms.append(f"{key} in ({','.join(values)})")
        elif operator == "NotIn":
            terms.append(f"{key} notin ({','.join(values)})")
        elif operator == "Exists":
            terms.append(str(key))
        elif operator == "DoesNotExist":
            terms.append(f"!{key}")
    return ",".join(terms)


def _lookup(obj: dict[str, Any], dotted: str) -> Any:
    current: Any = obj
    for part in dotted.split("."):
        if not isinstance(current, dict):
            return None
        current = current.get(part)
    return current


def _field_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_field_selector(selector: str | None) -> Callable[[dict[str, Any]], bool]:
    checks: list[tuple[str, bool, str]] = []
    for term in _split_terms(selector or ""):
        if "!=" in term:
            key, value = term.split("!=", 1)
            checks.append((key.strip(), False, value.strip()))
        elif "==" in term or "=" in term:
            key, value = term.split("==", 1) if "==" in term else term.split("=", 1)
            checks.append((key.strip(), True, value.strip()))
        else:
            raise bad_request(f"invalid field selector term {term!r}: expected field=value or field!=value")

    def matches(obj: dict[str, Any]) -> bool:
        return all((_field_text(_lookup(obj, key)) == value) is equal for key, equal, value in checks)

    return matches


def label_matcher(selector: str | None) -> Callable[[dict[str, Any]], bool]:
    requirements = parse_label_selector(selector)

    def matches(obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(requirement.matches(labels) for requirement in requirements)

    return matches
