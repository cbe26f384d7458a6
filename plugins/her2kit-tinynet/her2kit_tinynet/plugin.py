"""Entry point: registers the model. Kept light (no torch import at discovery)."""

from __future__ import annotations

from pathlib import Path

from her2kit.hookspecs import ModelSpec, hookimpl, lazy

#: made by the commands in this package's README (her2kit's own train command)
WEIGHTS = Path(__file__).resolve().parent / "weights" / "tiny-unet.json"


@hookimpl
def her2kit_models():
    return [
        ModelSpec(
            name="tiny-unet",
            description="tiny two-level U-Net (example model plugin, ~6k parameters)",
            factory=lazy("her2kit_tinynet.net:TinyUNet"),
            weights=str(WEIGHTS),
        )
    ]
