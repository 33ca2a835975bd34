"""Exports of lmforge models to other runtimes: ONNX (`lmforge.export.onnx`, needs the `onnx` extra)."""
