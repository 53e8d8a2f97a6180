"""The application layer: everything a tool, the main job, inference or a benchmark does with a checkpoint.

- ``registry``: one typed :class:`~qarep_dense.tasks.base.TaskRow` per task (cls, det, seg) and the one way to
  load a checkpoint, ours or foreign, fused (``load_fused``);
- ``splits``: a task's evaluation / calibration / selection data (selection: training images held back to
  choose between quantization candidates);
- ``quant_check``: ``quantize_and_check`` -> ``QuantReport``, the one INT8 pipeline (quantize, evaluate,
  export QDQ ONNX, check in onnxruntime, latency);
- ``ptq_study``: the FP32-vs-INT8 table of tools/ptq_eval.py;
- ``classification`` / ``detection`` / ``segmentation``: each task's config, training and row.

Nothing is imported here, so that ``import qarep_dense`` stays light; import the module you need.
"""
