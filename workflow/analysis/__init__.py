"""Analyses of trained models, each a module that knows nothing of Snakemake.

* :mod:`~workflow.analysis.activations`: record a model's layers on a probe set;
* :mod:`~workflow.analysis.similarity`: every similarity measure between two stores of
  activations (its parts: :mod:`~workflow.analysis.cka`, :mod:`~workflow.analysis.layer_blocks`,
  :mod:`~workflow.analysis.covariance`, :mod:`~workflow.analysis.hsic`);
* :mod:`~workflow.analysis.ntk`, :mod:`~workflow.analysis.hessian`: spectra;
* :mod:`~workflow.analysis.connectivity`: linear mode connectivity;
* :mod:`~workflow.analysis.relative`, :mod:`~workflow.analysis.rank`: relative
  representations and effective rank;
* :mod:`~workflow.analysis.stages`: the analysis jobs (read inputs, write one store);
  :mod:`~workflow.analysis.plan`: which analyses a study runs.
"""
