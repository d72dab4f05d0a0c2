"""Files written the same way in every process."""

import subprocess
import sys

import torch
from safetensors.torch import load_file

from onereward.io import canonical_safetensors

SAVE = ("import sys, torch; from safetensors.torch import save_file; "
        "save_file({'b': torch.arange(6.).view(2, 3), 'a': torch.ones(3)}, sys.argv[1], "
        "metadata={'format': 'pt', 'lora_adapter_metadata': '{}', 'z': '1', 'k': '2'})")


def test_safetensors_metadata_order_is_fixed_across_processes(tmp_path):
    """safetensors orders metadata by a per-process hash map; after canonical_safetensors the
    bytes are the same in every process and the tensors and metadata are unchanged."""
    files = []
    for i in range(6):
        path = tmp_path / f"{i}.safetensors"
        subprocess.run([sys.executable, "-c", SAVE, str(path)], check=True)
        files.append(path)
    raw = {f.read_bytes() for f in files}
    for f in files:
        canonical_safetensors(f)
    assert len({f.read_bytes() for f in files}) == 1, f"{len(raw)} distinct files before"
    t = load_file(str(files[0]))
    assert torch.equal(t["b"], torch.arange(6.).view(2, 3)) and torch.equal(t["a"], torch.ones(3))
    from safetensors import safe_open

    with safe_open(str(files[0]), "pt") as f:
        assert f.metadata() == {"format": "pt", "lora_adapter_metadata": "{}", "z": "1", "k": "2"}
