"""Which images users may run on the admin's ClusterTrainingRuntime (admin.allowed_images): one rule,
enforced by the cluster and checked offline.

    allowed_images(cfg)                      # ['registry.example.com/ml/', ...] from the site config
    image_allowed(image, runtime_image, allowed)          # the rule itself
    image_errors(image, runtime_image, runtime, label)    # offline (launcher.trainjob.image_errors: validate/run-local)

The rule: a TrainJob on the runtime may leave spec.trainer.image unset (the runtime's own image runs,
the admin's pin), set the runtime's image, or set an image admin.allowed_images admits. An entry ending
in '/', ':' or '@' is a prefix (a registry path, a repository's tags, its digests); any other entry is
one exact image. So `registry.example.com/ml` cannot admit `registry.example.com/ml-untrusted/x`.
Empty (the default): only the runtime's own image, because the runtime's pods carry the site's cloud
identity, node folders and devices, and an image is arbitrary code; the admin widens it on purpose.

Where it holds: the bundle's ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1, Kubernetes
>= 1.30) refuses other images at admission, whoever wrote the TrainJob. The runtime carries the same
list in ALLOWED_IMAGES_ANNOTATION, which is what `launcher validate --runtime FILE` reads offline.
"""
from __future__ import annotations

import json
from dataclasses import fields

from dlrm.errors import ConfigError
from dlrm.training.runlog import JOB_ENV

ALLOWED_IMAGES_ANNOTATION = "dlrm-k8s.io/allowed-images"  # JSON list on the ClusterTrainingRuntime
PREFIX_ENDS = ("/", ":", "@")
IMAGE_ENV = JOB_ENV["image"]  # the run record's image: the runtime's own when the job leaves the image to it
ALLOWED_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:@")


def allowed_images(cfg) -> list[str]:
    """admin.allowed_images, checked: each entry a prefix or an image, of image-reference characters only
    (they are spliced into the policy's CEL as string literals)."""
    for i, entry in enumerate(cfg.admin.allowed_images):
        odd = next((c for c in entry if c not in ALLOWED_CHARS), None) if isinstance(entry, str) else "?"
        if not isinstance(entry, str) or not entry or odd is not None:
            raise ConfigError(f"admin.allowed_images[{i}]: {entry!r} is not an image prefix "
                              + (f"({odd!r} cannot be in an image reference)" if entry else "(empty)")
                              + "; expected e.g. registry.example.com/ml/ (a path), .../dlrm-k8s-train: (its tags) "
                                "or one exact image")
    return list(cfg.admin.allowed_images)


def image_allowed(image: str, runtime_image: str, allowed: list[str]) -> bool:
    if image == runtime_image:
        return True
    return any(image.startswith(a) if a.endswith(PREFIX_ENDS) else image == a for a in allowed)


def image_from_runtime(cfg) -> bool:
    """A user's TrainJob on the admin's runtime that names no image of its own (`image` left at its
    default) leaves spec.trainer.image unset: the runtime's pinned image runs."""
    default = next(f.default for f in fields(cfg) if f.name == "image")
    return cfg.api == "trainjob" and cfg.trainjob.runtime_source == "admin" and cfg.image == default


def _cel(value) -> str:
    return json.dumps(value)  # a JSON string or list of strings is a CEL literal as well


def policy_context(cfg, runtime_kind: str) -> dict:
    """What the bundle's ValidatingAdmissionPolicy templates need: its name, which TrainJobs it matches
    (those referencing the runtime, a `runtime_kind`), the rule as CEL, the refusal's message, and the
    runtime's annotation of the same list."""
    runtime, allowed = cfg.admin.runtime, allowed_images(cfg)
    image = "object.spec.trainer.image"
    exact = [cfg.image, *[a for a in allowed if not a.endswith(PREFIX_ENDS)]]
    prefixes = [a for a in allowed if a.endswith(PREFIX_ENDS)]
    rule = f"!has(object.spec.trainer) || !has({image}) || {image} in {_cel(exact)}"
    if prefixes:
        rule += f" || {_cel(prefixes)}.exists(p, {image}.startsWith(p))"
    told = (f"is not allowed on {runtime_kind} {runtime}: allowed are {', '.join([cfg.image, *allowed])} "
            f"(admin.allowed_images; leave spec.trainer.image unset to run the runtime image)")
    return {
        "policy_name": f"{runtime}-images",
        "policy_match": (f"object.spec.runtimeRef.name == {_cel(runtime)} && (!has(object.spec.runtimeRef.kind) || "
                         f"object.spec.runtimeRef.kind == {_cel(runtime_kind)})"),
        "policy_rule": rule,
        "policy_message": f"spec.trainer.image {told}",
        "policy_message_expression": f"'spec.trainer.image ' + {image} + ' {told}'",
        "allowed_images_annotation": {ALLOWED_IMAGES_ANNOTATION: json.dumps(allowed)},
    }


def image_errors(image: str | None, runtime_image: str | None, runtime: dict, label: str) -> list[str]:
    """The rule offline: a TrainJob's spec.trainer.image (None: unset) against the runtime it references
    (`runtime_image`: its node container's), when that runtime carries ALLOWED_IMAGES_ANNOTATION (the admin
    bundle's); other runtimes say nothing about images. launcher.trainjob.image_errors finds both."""
    raw = ((runtime.get("metadata") or {}).get("annotations") or {}).get(ALLOWED_IMAGES_ANNOTATION)
    if raw is None or image is None:
        return []
    where = f"{runtime.get('kind')}/{(runtime.get('metadata') or {}).get('name')}"
    try:
        allowed = json.loads(raw)
        assert isinstance(allowed, list) and all(isinstance(a, str) for a in allowed)
    except (ValueError, AssertionError):
        return [f"{where}: metadata.annotations.{ALLOWED_IMAGES_ANNOTATION}: {raw!r} is not a JSON list of image prefixes"]
    if image_allowed(image, runtime_image, allowed):
        return []
    return [f"{label}: spec.trainer.image: {image!r} is not allowed on {where}: allowed are its own image {runtime_image!r}"
            + (f" and {', '.join(repr(a) for a in allowed)}" if allowed else " only")
            + " (the admin's admin.allowed_images; leave `image` unset to run the runtime's, or ask the admin to add yours)"]
