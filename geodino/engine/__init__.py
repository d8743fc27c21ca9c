"""Stage 3 of the pipeline: backbone inference on a device (GPU or CPU)."""

from geodino.engine.engine import Engine, EngineSpec, get_engine, prepare_batch, resolve_device

__all__ = ["Engine", "EngineSpec", "get_engine", "prepare_batch", "resolve_device"]
