"""Training data: the Chest ImaGenome reader and the phantom generator that mimics it.

The reader is light (numpy + stdlib) and imported eagerly; the phantom generator pulls in
torch and pydicom, so its names load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from anaxreport.data.imagenome import (
    ImaGenomeDataset,
    SceneGraph,
    SplitEntry,
    read_scene_graph,
    read_split,
)

if TYPE_CHECKING:
    from anaxreport.data.phantom import (
        Phantom,
        PhantomSummary,
        generate_phantoms,
        render_phantom,
        write_samples,
    )

__all__ = [
    "ImaGenomeDataset",
    "Phantom",
    "PhantomSummary",
    "SceneGraph",
    "SplitEntry",
    "generate_phantoms",
    "read_scene_graph",
    "read_split",
    "render_phantom",
    "write_samples",
]

_LAZY = {"Phantom", "PhantomSummary", "generate_phantoms", "render_phantom", "write_samples"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from anaxreport.data import phantom

        return getattr(phantom, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
