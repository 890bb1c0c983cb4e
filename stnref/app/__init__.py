"""The training application: the ``stnref`` command line and what it runs.

- :mod:`stnref.app.cli` -- the ``stnref`` command (train, evaluate, demo, experiment,
  bench, reference);
- :mod:`stnref.app.train` -- seeded training with exact resume, evaluation, runs on disk
  (in :mod:`stnref.checkpoint` files);
- :mod:`stnref.app.experiment` -- the paper's Table 1 grid on a stated budget;
- :mod:`stnref.app.demo` -- ``stnref demo``;
- :mod:`stnref.app.plotting` -- figures (optional: matplotlib);
- :mod:`stnref.app.bench` -- ``stnref bench``, the sampler against PyTorch.
"""
