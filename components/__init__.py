"""Kubeflow Pipelines v2 components: a typed interface plus one call into ``rakuten_mm.steps`` each.

Every component runs in the project image of :mod:`components.base` (dependencies live in the image, nothing is
installed at run time). Bodies import inside the function: KFP ships only the function's source to the container.
"""
