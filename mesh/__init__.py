"""gpumesh mesh layer: identity, capacity adverts, membership, gossip and the bigtcp data plane.

Knows nothing of jobs; `scheduler/` joins this layer to `worker/`.
"""

__version__ = "0.1.0"
