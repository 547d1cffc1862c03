"""The demo model (SmolLM2-135M, Q4_1/Q8_0) dequantized to an F16 GGUF: a source that
may be quantized (``general.file_type`` MOSTLY_F16), about 270 MB.

Every KV field is copied as it is but ``general.file_type``; every tensor is
dequantized with the gguf package's own ``gguf.quants.dequantize`` and written as
F16, except 1-D tensors (the norms), which stay F32 as llama.cpp's converter writes
them. Built once per session.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize

from pollama.demo import demo_model_path

MOSTLY_F16 = int(gguf.LlamaFileType.MOSTLY_F16)
# Written by the writer itself, or describing the file rather than the model.
_SKIPPED = ("GGUF.", "general.architecture")


def write_f16(source: Path, path: Path) -> Path:
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(path, str(reader.fields["general.architecture"].contents()))
    for name, field in reader.fields.items():
        if name.startswith(_SKIPPED):
            continue
        if name == "general.file_type":
            writer.add_file_type(MOSTLY_F16)
            continue
        sub_type = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub_type)
    for tensor in reader.tensors:
        values = dequantize(tensor.data, tensor.tensor_type)
        values = values.reshape(tuple(reversed([int(n) for n in tensor.shape])))
        dtype = np.float32 if values.ndim == 1 else np.float16
        writer.add_tensor(tensor.name, values.astype(dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def f16_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model as an F16 GGUF file."""
    return write_f16(demo_model_path(), tmp_path_factory.mktemp("f16") / "smollm2-f16.gguf")
