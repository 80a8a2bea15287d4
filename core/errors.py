"""One error hierarchy for everything mconv refuses.

Every error carries where it happened (file, zip member, tensor, byte offset) so the CLI can print one
line, ``mconv: error: <file>: <where>: <what>``, and tests can assert the exact message.
"""

from __future__ import annotations

import os
from typing import Optional


class MconvError(Exception):
    """Root of every error mconv raises on purpose (exit code 2 in the CLI)."""

    def __init__(
        self,
        message: str,
        *,
        path: Optional[str | os.PathLike[str]] = None,
        offset: Optional[int] = None,
        member: Optional[str] = None,
        tensor: Optional[str] = None,
    ) -> None:
        self.message = message
        self.path = os.fspath(path) if path is not None else None
        self.offset = offset
        self.member = member
        self.tensor = tensor
        super().__init__(str(self))

    def where(self) -> str:
        parts = []
        if self.member is not None:
            parts.append(f"member {self.member!r}")
        if self.tensor is not None:
            parts.append(f"tensor {self.tensor!r}")
        if self.offset is not None:
            parts.append(f"offset {self.offset}")
        return ", ".join(parts)

    def __str__(self) -> str:
        head = [p for p in (self.path, self.where()) if p]
        return ": ".join(head + [self.message])

    def at(self, *, path: Optional[str | os.PathLike[str]] = None, member: Optional[str] = None,
           tensor: Optional[str] = None, offset: Optional[int] = None) -> "MconvError":
        """Fill in location fields that are still unknown (outer layers know the file)."""
        if self.path is None and path is not None:
            self.path = os.fspath(path)
        if self.member is None and member is not None:
            self.member = member
        if self.tensor is None and tensor is not None:
            self.tensor = tensor
        if self.offset is None and offset is not None:
            self.offset = offset
        self.args = (str(self),)
        return self


class FormatError(MconvError):
    """Malformed, truncated or hostile input."""


class UnsupportedError(MconvError):
    """Valid input or request that a format or command cannot handle."""


class LossyConversionError(MconvError):
    """A value-changing step that needs --allow-lossy (or an explicit --dtype)."""


class UnknownFormatError(MconvError):
    """No registered format matches a name or sniffs a file."""


class PluginError(MconvError):
    """A plugin failed to load or registered something invalid."""


class ValidationError(MconvError):
    """The executor or validator cannot run a model (missing tensors, shape mismatch...)."""


class QuantError(MconvError):
    """A tensor cannot be quantized to the requested type (row length, values)."""


class UsageError(MconvError):
    """Bad command-line usage."""


class ModelsDiffer(MconvError):
    """A comparison ran and the models differ beyond tolerance (``translate --validate``): the CLI
    prints ``mconv: validation failed: ...`` and exits 1, not 2."""
