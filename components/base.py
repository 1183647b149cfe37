"""The one container image every component runs in, tied to the package version.

Built from ``images/pipeline.Dockerfile`` (CUDA torch, the project, ImageNet VGG16 weights) and pushed as
``IMAGE``; ``rakuten pipeline compile --image REF`` points a compiled pipeline at another registry or tag.
"""

from collections.abc import Callable
from typing import Any

from kfp import dsl

import rakuten_mm

REGISTRY = "registry.example.com/rakuten"
IMAGE = f"{REGISTRY}/rakuten-pipeline:{rakuten_mm.__version__}"


def component(func: Callable[..., Any]) -> Any:
    """``@dsl.component`` on the project image. kfp is already in the image: no ``pip install`` at run time."""
    return dsl.component(func, base_image=IMAGE, packages_to_install=[], install_kfp_package=False)
