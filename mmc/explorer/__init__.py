"""``mmc explorer``: one self-contained, interactive HTML page per evaluation dataset (docs/report.md).

A grid of the dataset's first ``report.explorer_images`` images; clicking a point shows, for every
model side by side, the similarity map of the patch under the point and the mask at a threshold
slider, with the IoU of the annotated object under the point. The page computes the maps itself,
from compact features (:mod:`mmc.explorer.encode`) obtained through the evaluation's own feature
path, and thresholds them with the rule of :func:`mmc.evaluation.protocol.predicted_mask`
(:mod:`mmc.explorer.page` assembles it; ``explorer.js`` is its code).
"""
