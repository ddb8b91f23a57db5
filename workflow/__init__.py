"""dlsci: a cached, resumable pipeline for the science of deep learning.

The package holds every method of the pipeline (training, pruning, distillation,
analysis, plotting) and knows nothing of Snakemake: each stage is a plain function,
reachable from the command line as ``python -m workflow <stage> ...``. What each
method and analysis computes, with its formula, is in the repository's
``docs/methods.md``.
"""

__version__ = "0.1.0"
