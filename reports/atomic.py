"""Write files whole or not at all (lungbench's one atomic writer lives in contracts.fsutil)."""

from contracts.fsutil import write_bytes, write_text

__all__ = ["write_bytes", "write_text"]
