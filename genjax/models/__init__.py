"""Model families. Each is a module of pure functions: `init`, `loss` (or a two-player step), `sample`."""

import importlib
from types import ModuleType

FAMILIES = ("vae", "gan", "diffusion", "transformer")


def get(family: str) -> ModuleType:
    """The family module by name (imported on demand, so unused families cost nothing at import)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    return importlib.import_module(f"genjax.models.{family}")
