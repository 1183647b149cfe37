"""Put a model bundle behind the live KServe InferenceService, and take it back out.

``rollout.deploy.deploy`` creates the InferenceService when it is absent, or patches it to serve a new bundle;
``rollout.deploy.rollback`` restores the bundle it served before. Both wait until the service reports Ready
and return its URL. The pipeline's deploy component and ``rakuten deploy`` / ``rakuten rollback``
(``rollout.cli``) call these. Only ``rakuten_mm.errors`` is imported from the core; nothing but the entry
point and ``components/deploy.py`` imports this package.

Modules
    ``errors``    DeployError, DeployTimeout
    ``spec``      constants, argument checks and the pure spec transforms (creation body, rollout patch,
                  RFC 7386 merge patch); no I/O
    ``defaults``  the InferenceService to create from: ``manifests/base/inferenceservice.yaml``, shipped as
                  package data (``rollout/inferenceservice.yaml`` is a symlink to it), and ``--manifest`` files
    ``session``   the Kubernetes calls on one InferenceService (get / create / patch / wait for Ready)
    ``deploy``    deploy and rollback: the read-modify-write loop
    ``cli``       ``rakuten deploy`` / ``rakuten rollback``

Where the bundle URI lives (the same pointers as ``manifests/README.md``)
    The CRD has no predictor-level ``storageUri`` for custom containers, so the project's manifest names
    the bundle with the ``STORAGE_URI`` env var of the predictor's container named ``kserve-container``:
    ``spec.predictor.containers[name=kserve-container].env[name=STORAGE_URI].value``, found by name, not
    index. The transformer needs no bundle and carries no ``STORAGE_URI``; an object from before that change
    whose transformer still has one gets it patched too (and the same canary split). A predictor that uses
    a model format instead (``spec.predictor.model.storageUri``) is supported as well.

How it is patched
    One JSON merge patch (``application/merge-patch+json``, what ``CustomObjectsApi`` sends). A merge patch
    replaces lists whole, so the patch carries each patched component's ``containers`` list as read, with
    only the ``STORAGE_URI`` value changed, plus ``metadata.resourceVersion`` as a precondition: if anyone
    changed the object between our GET and PATCH, the API server answers 409 and we read it again and retry,
    instead of overwriting their change. The previous URI goes into the ``rakuten.io/previous-storage-uri``
    annotation; ``rollback`` swaps it with the current one.

Canary (``canary_percent``)
    1..99 sets ``canaryTrafficPercent`` on every component whose bundle changes (the predictor; also an old
    transformer that still names the bundle): in Knative mode KServe then sends that share of traffic to
    the new revision and the rest to the last revision that was rolled out with 100%. 0 (or 100) is a full
    rollout: the field is removed, so the latest ready revision gets all traffic; deploying the same bundle
    again with 0 therefore promotes a canary. Standard (raw Deployment) mode has no
    ``canaryTrafficPercent``; it takes a separate ``spec.canary[]`` entry (KServe >= 0.20), which this
    package does not write: a canary on a Standard-mode service is refused. On creation there is nothing to
    split, so the first bundle always gets 100% (the result says ``canary_percent: 0``).

Ready
    ``status.conditions[type=Ready].status == "True"`` and, when the status has ``observedGeneration``, that
    it has caught up with the generation our write produced (so an old "Ready" is not taken for the new
    revision). Without ``observedGeneration`` a status from before the write cannot be told apart.

RBAC
    ``get`` / ``create`` / ``patch`` on ``inferenceservices.serving.kserve.io`` in the namespace
    (``manifests/base/rbac.yaml`` grants them to the ``rakuten-pipeline`` service account).
"""
