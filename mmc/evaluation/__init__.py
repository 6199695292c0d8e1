"""The zero-shot evaluation protocol: prompt-patch segmentation and intra/inter-object similarity.

See docs/evaluation.md. Modules, from the maths outwards (each imports only those before it):

- ``metrics``: pure numpy maths (grid geometry, IoU over every threshold at once, the exact oracle,
  prompts, token membership, histograms, balanced accuracy);
- ``bootstrap``: pure numpy percentile bootstrap intervals of per-object means and paired
  differences (``mmc tables``);
- ``protocol``: the rules shared by every consumer: the tau grid and its column names, prompt
  placement, and the one definition of an object's predicted mask (:func:`protocol.predicted_mask`);
- ``summary``: the result files ``summary.json`` and ``similarity.json`` as typed objects, with one
  reader each (``mmc tables`` and ``mmc figures`` read the files with it; ``mmc select`` gets the same
  object from ``segment.evaluate_checkpoint``);
- ``job``: what the two commands share: the argument list, the model under evaluation and the
  tracked job set-up (config, job record, model);
- ``features``: patch features of a model on a dataset, and their cache;
- ``segment`` (``mmc segment``) and ``similarity`` (``mmc similarity``): the two commands.

Heavy imports (torch, pandas, matplotlib) stay inside functions, as everywhere in ``mmc``.
"""
