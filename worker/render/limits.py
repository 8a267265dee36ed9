"""Size limits of a scene that scene parsing and OBJ loading both enforce (one definition, no import cycle)."""

MAX_TRIANGLES = 262_144
MAX_VERTICES = 3 * MAX_TRIANGLES
