"""The one error type of the render package, so callers catch bad input without catching bugs."""

from __future__ import annotations


class SceneError(ValueError):
    """A scene, pose, tile or OBJ file is invalid; the message starts with the path of the bad field."""
