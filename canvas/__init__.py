"""Canvas: task calls as data, composed into workflows (chain, group, chord, map, chunks)."""

from taskframe.canvas.chain import chain
from taskframe.canvas.chord import chord
from taskframe.canvas.group import group
from taskframe.canvas.maps import chunks, xmap, xstarmap
from taskframe.canvas.signature import Signature, from_dict, maybe_signature, signature

__all__ = [
    "Signature",
    "chain",
    "chord",
    "chunks",
    "from_dict",
    "group",
    "maybe_signature",
    "signature",
    "xmap",
    "xstarmap",
]
