"""End-to-end task recipes (config dataclass + ``train()``) behind the tools/ command lines.

Import the task module you need (``qarep_dense.tasks.classification``, ``qarep_dense.tasks.detection``);
nothing is imported here so that ``import qarep_dense`` stays light.
"""
