"""Prometheus metrics of the mesh layer (build, gossip, membership, the mesh-wide view).

Module-level objects on the default registry: several nodes may share one test process, so nothing is
registered per instance. Transport metrics live in `mesh/bigtcp/transport_metrics.py`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Info

from mesh import __version__

BUILD = Info("gpumesh_build", "Software version of this node")
BUILD.info({"version": __version__})

PEERS_KNOWN = Gauge("gpumesh_peers_known", "Peers in this node's membership view (self excluded)")
ADVERTS_SENT = Counter("gpumesh_adverts_sent_total", "Capacity adverts this node published")
ADVERT_DELTAS_SENT = Counter("gpumesh_advert_deltas_sent_total", "Of the adverts sent, deltas (the rest are full)")
ADVERTS_RECEIVED = Counter("gpumesh_adverts_received_total", "Capacity adverts received and accepted")
GOSSIP_MESSAGES_RECEIVED = Counter("gpumesh_gossip_messages_received_total",
                                   "Pubsub messages received from peers, duplicates included (each costs a decrypt)")
ADVERTS_REJECTED = Counter(
    "gpumesh_adverts_rejected_total", "Capacity adverts dropped", ["reason"]
)  # malformed, signature, oversized, version, stale (issue time or sequence), replay, not_admitted, no_base
ADVERTS_EXPIRED = Counter("gpumesh_adverts_expired_total", "Peers expired from the view after their TTL")
GOSSIP_PUBLISH_ERRORS = Counter("gpumesh_gossip_publish_errors_total", "Advert publishes that raised")
MEMBERSHIP_EVENTS = Counter("gpumesh_membership_events_total", "Join/update/leave events", ["event"])
ADVERT_LIES = Counter("gpumesh_advert_lies_total", "Adverts caught lying, by kind (capacity: free slots "
                      "advertised that claims never found)", ["kind"])
PEERS_REFUSED = Counter("gpumesh_peers_refused_total", "Connections refused by mesh admission", ["plane"])
LIBP2P_CONNECTED = Gauge("gpumesh_libp2p_connected_peers", "Peers with an open libp2p connection")

# Local device gauges (memory, compute units, calibration) are exported by worker/devices.py.
MESH_DEVICES = Gauge("gpumesh_mesh_devices", "Devices in the whole mesh view (self included), by kind", ["kind"])
MESH_FREE_SLOTS = Gauge("gpumesh_mesh_free_slots", "Free job slots in the whole mesh view, by device kind", ["kind"])
PEER_STANDING = Gauge("gpumesh_peer_standing", "Reputation of a peer in placement (1 trusted .. 0 never)", ["peer"])


def reset_peer_labels(peers: set[str]) -> None:
    """Drop per-peer series of peers no longer known, so label sets stay bounded."""
    for labels in list(PEER_STANDING._metrics):  # noqa: SLF001 - prometheus-client has no public API for this
        if labels[0] not in peers:
            PEER_STANDING.remove(*labels)
