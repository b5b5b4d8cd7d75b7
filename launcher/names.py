"""Kubernetes' rules for names, label keys and values, as the API server applies them (apimachinery
pkg/util/validation), so a bad one fails here, naming the config key, before anything is rendered.

    check_name("storage.claim", "data", SUBDOMAIN)      # or raise ConfigError naming the key
    check_labels("cluster.node_selector", {"k": "v"})

Every rule is a full match (re.fullmatch): a pattern anchored with `$` also matches before a
trailing newline, which is how "job\\n" once reached a manifest. Values are quoted with repr() in
messages, so a control character is visible there rather than printed raw.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from dlrm.errors import ConfigError

_LABEL_1123 = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_NAME_PART = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"


@dataclass(frozen=True)
class Rule:
    what: str  # for the message: "a DNS-1123 label (...)"
    pattern: re.Pattern
    max_len: int

    def accepts(self, value) -> bool:
        return isinstance(value, str) and len(value) <= self.max_len and self.pattern.fullmatch(value) is not None


DNS1035_LABEL = Rule("a DNS-1035 label: lowercase letters, digits and '-', starting with a letter, ending with a "
                     "letter or digit, at most 63 chars", re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?"), 63)
DNS1123_LABEL = Rule("a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit, "
                     "at most 63 chars", re.compile(_LABEL_1123), 63)
SUBDOMAIN = Rule("a Kubernetes object name (DNS-1123 subdomain): lowercase letters, digits, '-' and '.', starting and "
                 "ending with a letter or digit, at most 253 chars", re.compile(rf"{_LABEL_1123}(\.{_LABEL_1123})*"), 253)
LABEL_VALUE = Rule("a label value: empty, or letters, digits, '-', '_' and '.', starting and ending with a letter or "
                   "digit, at most 63 chars", re.compile(rf"({_NAME_PART})?"), 63)
# An object's name that a label also carries (Kueue's queue-name and priority-class labels): a label value
# of mixed case or with '_' passes the API server but names no LocalQueue, and the job waits forever.
LABELLED_NAME = Rule("the name of a queue or priority class, as a label carries it: lowercase letters, digits, '-' "
                     "and '.', starting and ending with a letter or digit, at most 63 chars", SUBDOMAIN.pattern, 63)
ENV_NAME = Rule("an environment variable name: letters, digits and '_', not starting with a digit",
                re.compile(r"[A-Za-z_][A-Za-z0-9_]*"), 1024)
_QUALIFIED = Rule("a qualified name ([prefix/]name: the prefix a DNS subdomain, the name letters, digits, '-', '_' "
                  "and '.', starting and ending with a letter or digit, at most 63 chars)",
                  re.compile(rf"({_LABEL_1123}(\.{_LABEL_1123})*/)?{_NAME_PART}"), 253 + 1 + 63)
TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
TOLERATION_OPERATORS = ("Exists", "Equal")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def _fail(path: str, value, rule_what: str) -> None:
    raise ConfigError(f"{path} {value!r} is not {rule_what}")


def check_name(path: str, value: str, rule: Rule = SUBDOMAIN, optional: bool = False) -> None:
    """`value` must follow `rule`; an empty value passes only if `optional`."""
    if optional and value == "":
        return
    if not rule.accepts(value):
        _fail(path, value, rule.what)


def qualified_name(value: str, need_prefix: bool = False) -> bool:
    """A label key / resource name: [prefix/]name with the name part at most 63 chars."""
    if not _QUALIFIED.accepts(value):
        return False
    prefix, _, name = value.rpartition("/")
    return len(name) <= 63 and len(prefix) <= 253 and (bool(prefix) or not need_prefix)


def check_key(path: str, key: str, need_prefix: bool = False) -> None:
    if not qualified_name(key, need_prefix):
        _fail(path, key, ("a qualified name with a domain prefix (<domain>/<name>)" if need_prefix else "") or _QUALIFIED.what)


def check_labels(path: str, labels: dict[str, str]) -> None:
    """A label map (a nodeSelector): every key a qualified name, every value a label value."""
    for k, v in labels.items():
        check_key(f"{path} key", k)
        check_name(f"{path}.{k}", v, LABEL_VALUE)


def check_tolerations(path: str, tolerations: list[dict]) -> None:
    """Each toleration as the API server validates it (core/v1 Toleration)."""
    for i, t in enumerate(tolerations):
        where = f"{path}[{i}]"
        unknown = sorted(set(map(str, t)) - TOLERATION_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (valid keys: {', '.join(sorted(TOLERATION_KEYS))})")
        op = t.get("operator", "Equal")
        if op not in TOLERATION_OPERATORS:
            raise ConfigError(f"{where}.operator must be one of {', '.join(TOLERATION_OPERATORS)}, got {op!r}")
        key = t.get("key", "")
        if key != "" and not qualified_name(str(key)) or not isinstance(key, str):
            _fail(f"{where}.key", key, _QUALIFIED.what)
        if key == "" and op != "Exists":
            raise ConfigError(f"{where}: an empty key needs operator Exists")
        value = t.get("value", "")
        if op == "Exists" and value:
            raise ConfigError(f"{where}: operator Exists takes no value, got {value!r}")
        check_name(f"{where}.value", value, LABEL_VALUE)
        effect = t.get("effect", "")
        if effect not in ("", *TAINT_EFFECTS):
            raise ConfigError(f"{where}.effect must be empty or one of {', '.join(TAINT_EFFECTS)}, got {effect!r}")
        seconds = t.get("tolerationSeconds")
        if seconds is not None and (not isinstance(seconds, int) or isinstance(seconds, bool) or effect != "NoExecute"):
            raise ConfigError(f"{where}.tolerationSeconds must be an integer, with effect NoExecute; got {seconds!r}")


# The distribution reference grammar (what the kubelet's image pull parses): [domain/]path[:tag][@digest].
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_PATH_PART = r"[a-z0-9]+(?:(?:[_.]|__|-+)[a-z0-9]+)*"
IMAGE_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
IMAGE_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
MAX_IMAGE_NAME = 255


def check_image(path: str, value: str) -> None:
    """An image reference the registry would take: `[domain[:port]/]path[:tag][@sha256:<64 hex>]`, the
    path lowercase, the tag at most 128 of [A-Za-z0-9_.-] (not starting with . or -), ASCII only.
    Each mistake is named: an image pull would fail only on the node, after scheduling."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"{path} {value!r} is not an image reference: {why} "
                           f"(e.g. registry.example.com/dlrm-k8s-train:1.0 or ...@sha256:<64 hex digits>)")

    if not isinstance(value, str) or not value:
        raise bad("empty")
    odd = next((c for c in value if c.isspace() or ord(c) < 32 or ord(c) >= 127), None)
    if odd is not None:
        raise bad(f"{odd!r} is not allowed (whitespace, control or non-ASCII character)")
    rest, _, digest = value.partition("@")
    if _ and not IMAGE_DIGEST.fullmatch(digest):
        raise bad(f"digest {digest!r}: expected sha256: and 64 lowercase hex digits")
    name, tag = rest, None
    if ":" in rest.rpartition("/")[2]:  # a colon after the last slash is the tag's (a port comes before one)
        name, _, tag = rest.rpartition(":")
        if not IMAGE_TAG.fullmatch(tag):
            raise bad(f"tag {tag!r}: expected 1-128 of A-Z a-z 0-9 _ . - not starting with . or -")
    first, slash, remainder = name.partition("/")
    is_domain = slash and ("." in first or ":" in first or first == "localhost")
    repository = remainder if is_domain else name
    if is_domain and not re.fullmatch(_DOMAIN, first):
        raise bad(f"registry {first!r} is not a host[:port]")
    if repository != repository.lower():
        raise bad(f"repository {repository!r} must be lowercase")
    if not all(re.fullmatch(_PATH_PART, part) for part in repository.split("/")):
        raise bad(f"repository {repository!r}: each /-separated part is lowercase letters and digits, "
                  f"joined by . _ __ or -")
    if len(name) > MAX_IMAGE_NAME:
        raise bad(f"the name is {len(name)} characters, at most {MAX_IMAGE_NAME}")
