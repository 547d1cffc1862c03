"""Read GGUF model headers (metadata and tensor infos) quickly, without touching tensor data.

    model = read_model(path)
    model.architecture, model.block_count, model.parameter_size, model.layers()

Any file that is not a usable GGUF raises pollama.errors.InvalidModelFile.
"""

from pollama.ggufmeta.model import GGUFModel
from pollama.ggufmeta.reader import read_model, read_string_items
from pollama.ggufmeta.records import LayerGroup, TensorInfo, TruncatedArray

__all__ = [
    "GGUFModel",
    "LayerGroup",
    "TensorInfo",
    "TruncatedArray",
    "read_model",
    "read_string_items",
]
