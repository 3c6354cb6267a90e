"""Canvas: task calls as data, composed into workflows."""

from taskframe.canvas.signature import Signature, maybe_signature, signature

__all__ = ["Signature", "maybe_signature", "signature"]
