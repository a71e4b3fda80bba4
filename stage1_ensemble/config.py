"""Training and inference settings: pydantic models that refuse unknown keys."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Windowed(Strict):
    """Windows of at most ``max_length`` tokens, ``stride`` of them shared with the next."""

    max_length: int = Field(512, ge=16, le=8192)
    stride: int = Field(32, ge=0)

    @model_validator(mode="after")
    def _windows_advance(self):
        if self.stride > self.max_length // 2:
            raise ValueError(f"stride {self.stride} must be at most half of max_length "
                             f"{self.max_length}, or windows barely advance")
        return self


class TrainConfig(Windowed):
    """One member's training recipe; the defaults are the paper's."""

    learning_rate: float = 1e-5
    warmup_steps: int = 100
    max_steps: int = 2000
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    seed: int = 42
    bf16: bool | None = None  # None: bf16 where CUDA is available
    # Dropout in the encoder; None keeps the checkpoint's own. On the CPU, dropout inside
    # attention rules out the fused SDPA kernel: a MiniLM step takes 1.7x as long with it
    # (bench/bench_train_step.py).
    attention_dropout: float | None = Field(None, ge=0, lt=1)
    hidden_dropout: float | None = Field(None, ge=0, lt=1)
    # Keep the word-embedding table as it is: a multilingual encoder's (XLM-R's 250K
    # pieces: 96M of multilingual-e5-small's 118M weights) then needs no gradient and no
    # AdamW state, which is most of a CPU step's update (bench/bench_encoders.py).
    freeze_embeddings: bool = False
    logging_steps: int = 50


class InferenceConfig(Windowed):
    """How members run. A ``max_length`` beyond a member's positions is lowered to them."""

    batch_size: int = Field(32, ge=1)  # windows per forward pass
    device: str | None = None  # None: cuda where available, else cpu

    @field_validator("device")
    @classmethod
    def _device_here(cls, device: str | None) -> str | None:
        """A device torch knows and this machine has (not, hours later, at the first
        batch)."""
        if device is None:
            return None
        import torch

        try:
            kind = torch.device(device).type
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"{device!r} is not a torch device ({exc}); e.g. cpu, cuda, "
                             "cuda:1") from None
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{device!r}: this machine has no CUDA device (use cpu)")
        return device
    bf16: bool | None = None  # None: bf16 on cuda
    # torch.compile the encoder (fuses its elementwise work; the first batches pay the
    # compilation). Batch widths are then rounded up to a multiple of width_multiple so
    # that few shapes are compiled.
    compile: bool = False
    width_multiple: int = Field(1, ge=1)


Model = TypeVar("Model", bound=BaseModel)


def problems_of(exc: ValidationError, plain: bool = False) -> str:
    """Each problem of a validation as "key.path: what is wrong", in one line (``plain``:
    without pydantic's "Value error, " before a validator's own message)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: "
                     f"{e['msg'].removeprefix('Value error, ') if plain else e['msg']}"
                     for e in exc.errors())


def load_config(path: Path, model: type[Model] = TrainConfig, what: str | None = None) -> Model:
    """A pydantic model from a JSON file; a misspelt key or broken JSON fails here, in one
    line naming the file and each problem."""
    try:
        return model.model_validate_json(Path(path).read_text(encoding="utf-8"))
    except ValidationError as exc:  # one line: "key: what is wrong", each problem
        raise ValueError(f"{path}: not a valid {what or model.__name__}: "
                         f"{problems_of(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
