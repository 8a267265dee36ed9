"""Size limits of a scene: they keep one scene's upload, BVH build and per-ray work bounded on any worker.

Scene parsing (`scene_parse.py`) enforces them all; OBJ loading the triangle and vertex counts too, and reading
a texture file its side (one definition, no import cycle).
"""

MAX_WIDTH = 4096
MAX_HEIGHT = 4096
MAX_PIXELS = 3840 * 2160
MAX_OBJECTS = 256
MAX_LIGHTS = 16
MAX_MATERIALS = 256
MAX_NAME = 128
MAX_TEXTURE_SIDE = 4096
MAX_TEXELS = 8 << 20  # all textures of a scene together (4 bytes each on the device)
MAX_TRIANGLES = 262_144
MAX_VERTICES = 3 * MAX_TRIANGLES
