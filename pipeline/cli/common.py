"""Options shared by run, tune and ablate (their loaders live in pipeline.recognizer)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

InferenceConfigOption = Annotated[Path | None, typer.Option(
    help="InferenceConfig JSON for the ensemble (batch_size, device, bf16, compile, "
         "width_multiple, max_length, stride; unknown keys fail).")]
