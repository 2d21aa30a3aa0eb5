"""Network definitions the shipped bundles name in their ``configs/inference.json``.

Kept apart from the pipelines (as MONAI keeps networks apart from transforms
and inferers): a bundle refers to a network by its import path, and the
pipeline neither knows nor cares which one it is.
"""
