"""Our own GGUF reader (hostile-input safe) and vectorized torch dequantizers."""

from engine.gguf.reader import GGUFFile, GGUFTensorInfo, read_gguf
from engine.gguf.types import GGMLType

__all__ = ["GGMLType", "GGUFFile", "GGUFTensorInfo", "read_gguf"]
