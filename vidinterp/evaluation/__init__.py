"""Evaluation at dataset scale: the runner, its per-benchmark tasks and the aggregated tables.

* :mod:`~vidinterp.evaluation.runner`: :func:`evaluate` traces every clip once and writes one
  result file per clip (atomic, resumable, sharded over processes);
* :mod:`~vidinterp.evaluation.tasks`: how each benchmark's clips are traced and scored;
* :mod:`~vidinterp.evaluation.fitting`: the one rule fitting clips (frames, masks, tracks) to a
  model's geometry;
* :mod:`~vidinterp.evaluation.methods`: method names (and the IMAP paper's ablation variants);
* :mod:`~vidinterp.evaluation.aggregate`: means, bootstrap intervals, markdown/CSV tables and
  per-clip netCDF/zarr;
* :mod:`~vidinterp.evaluation.sharding`: which clips each process takes (each loads the model
  once, :func:`vidinterp.inputs.load_model`);
* :mod:`~vidinterp.evaluation.command`: ``vidinterp eval``.

Submodules import lazily (``vidinterp.evaluation.judge`` and ``.mls`` need no torch).
"""
