"""storeflow stages: plain, typed functions over DataFrames, one subpackage each.

Each stage subpackage holds the stage logic and a ``component.py`` with the thin KFP wrapper that
imports it; nothing here imports KFP, MLflow or Evidently at module load.
"""
