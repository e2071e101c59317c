"""Errors of the event lake, all under :class:`streams.errors.SinkError`."""

from __future__ import annotations

from streams.errors import SinkError


class LakeError(SinkError):
    """The lake could not be written or read (files, manifests, layout)."""


class LakeInputError(LakeError):
    """A batch handed to the lake is malformed: unknown event type, missing field, bad time."""
