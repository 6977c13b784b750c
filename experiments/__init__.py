"""minisub's own experiments, installed as ``minisub_experiments`` (the folder is ``experiments/``).

They reach the CLI through the ``minisub.experiments`` entry-point group declared in
``pyproject.toml``, exactly as an outside package's experiments do (``minisub.registry``).
"""
