"""``deploy`` and ``rollback``: read the InferenceService, write one change, wait for Ready.

Each is a read-modify-write loop: GET, build the body (``rollout.spec``), POST or PATCH with the
``resourceVersion`` precondition, and on a 409 read again (at most ``CONFLICT_ATTEMPTS`` times).
"""

from __future__ import annotations

import logging
from typing import Any

from rollout.defaults import default_manifest
from rollout.errors import DeployError
from rollout.session import CONFLICT_ATTEMPTS, Session
from rollout.spec import (
    PREVIOUS_URI_ANNOTATION,
    annotations_of,
    check_arguments,
    check_bundle_uri,
    check_image,
    check_manifest,
    creation_body,
    generation,
    rollout_patch,
)

logger = logging.getLogger(__name__)


def deploy(
    bundle_uri: str,
    name: str = "rakuten",
    namespace: str = "rakuten",
    canary_percent: int = 0,
    timeout_s: int = 600,
    poll_s: float = 5.0,
    api_client: Any | None = None,
    manifest: dict | None = None,
    *,
    image: str | None = None,
) -> dict:
    """Serve ``bundle_uri`` from InferenceService ``namespace/name``; wait for Ready; describe what happened.

    Creates the service from ``manifest`` (default: :func:`rollout.defaults.default_manifest`) when it is
    absent, with ``image`` (if given) as the image of its ``kserve-container``s; otherwise patches its bundle
    URI and canary split (``image`` and ``manifest`` are then not used). Returns ``{"action": "created"|
    "patched", "url", "previous_storage_uri", "storage_uri", "canary_percent"}``, where
    ``previous_storage_uri`` is what :func:`rollback` would restore. Raises ``ConfigError`` for bad arguments
    (before any request), ``DeployError`` when the API refuses, ``DeployTimeout`` when the service is not
    Ready in ``timeout_s``.
    """
    if isinstance(canary_percent, float) and canary_percent in range(101):
        canary_percent = int(canary_percent)  # KFP can hand numeric parameters over as floats
    check_bundle_uri(bundle_uri)
    check_arguments(name, namespace, timeout_s, poll_s, canary_percent=canary_percent)
    if manifest is not None:
        check_manifest(manifest)
    if image is not None:
        check_image(image)

    with Session(api_client, name, namespace) as isvcs:
        for _ in range(CONFLICT_ATTEMPTS):
            current = isvcs.get()
            if current is None:
                body = creation_body(manifest if manifest is not None else default_manifest(), bundle_uri, name,
                                     namespace, image=image)
                action, previous, effective_canary = "created", None, 0  # a first revision gets all traffic
                written = isvcs.create(body)  # None: someone created it since our GET -> patch theirs
            else:
                if image is not None or manifest is not None:
                    logger.warning("%s/%s exists: only its bundle and canary split change (image and manifest "
                                   "are used when creating it)", namespace, name)
                patch, previous = rollout_patch(current, bundle_uri, canary_percent)
                action, effective_canary = "patched", canary_percent if 0 < canary_percent < 100 else 0
                written = isvcs.patch(patch)  # None: it changed since our GET -> read it again
            if written is not None:
                break
        else:
            raise isvcs.conflict_error()
        logger.info("%s InferenceService %s/%s: %s, canary %s%%", action, namespace, name, bundle_uri,
                    effective_canary or 100)
        url = isvcs.wait_ready(generation(written), timeout_s, poll_s)
    return {"action": action, "url": url, "previous_storage_uri": previous, "storage_uri": bundle_uri,
            "canary_percent": effective_canary}


def rollback(
    name: str = "rakuten",
    namespace: str = "rakuten",
    timeout_s: int = 600,
    poll_s: float = 5.0,
    api_client: Any | None = None,
) -> dict:
    """Serve the bundle named by the ``rakuten.io/previous-storage-uri`` annotation again (full rollout).

    The current URI becomes the annotation, so a second rollback undoes the first. Returns the same keys
    as :func:`deploy`, with ``action: "rolled_back"``.
    """
    check_arguments(name, namespace, timeout_s, poll_s)
    with Session(api_client, name, namespace) as isvcs:
        for _ in range(CONFLICT_ATTEMPTS):
            current = isvcs.get()
            if current is None:
                raise DeployError(f"there is no InferenceService {namespace}/{name} to roll back", status=404)
            previous = annotations_of(current).get(PREVIOUS_URI_ANNOTATION)
            if not previous:
                raise DeployError(
                    f"nothing to roll back to: InferenceService {namespace}/{name} has no {PREVIOUS_URI_ANNOTATION}"
                    " annotation (`rakuten deploy` sets it when it replaces a bundle)"
                )
            check_bundle_uri(previous, what=f"the {PREVIOUS_URI_ANNOTATION} annotation")
            patch, replaced = rollout_patch(current, previous, 0)
            patched = isvcs.patch(patch)
            if patched is not None:
                break
        else:
            raise isvcs.conflict_error()
        logger.info("rolled InferenceService %s/%s back to %s", namespace, name, previous)
        url = isvcs.wait_ready(generation(patched), timeout_s, poll_s)
    return {"action": "rolled_back", "url": url, "previous_storage_uri": replaced, "storage_uri": previous,
            "canary_percent": 0}
