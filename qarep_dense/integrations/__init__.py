"""Adapters to other frameworks. Import the submodule you need (``qarep_dense.integrations.mmseg``);
this package itself imports nothing, so ``import qarep_dense`` stays free of mmengine/mmseg/mmcv."""
