from typing import NamedTuple

from components.base import component


@component
def deploy(
    bundle_uri: str,
    name: str,
    namespace: str,
    canary_percent: int,
) -> NamedTuple("DeployOutputs", [("url", str), ("action", str), ("previous_storage_uri", str)]):  # type: ignore[valid-type]
    """Create or update the KServe InferenceService serving bundle_uri (canary_percent > 0: as a canary)."""
    from rollout.deploy import deploy as deploy_bundle

    result = deploy_bundle(bundle_uri, name=name, namespace=namespace, canary_percent=canary_percent)
    return (result["url"] or "", result["action"], result["previous_storage_uri"] or "")
