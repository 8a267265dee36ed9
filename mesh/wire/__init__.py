"""Wire schemas: the one place where each message that crosses a trust boundary is decoded into typed,
bounded data (msgspec structs with lengths, ranges, enums and address syntax), or refused with a reason.

    advert.py   capacity adverts and delta adverts (gossip): body fields, devices, data-plane address,
                signed issue time
    hello.py    the data plane's HELLO (the one message decoded before a peer is authenticated)

Job messages (job, offer, result, lease, cancel) are checked by their `from_wire` in scheduler/core/job.py, RPC
envelopes by `mesh.bigtcp.rpc.RpcServer`. Every refusal is counted with its reason:
`gpumesh_adverts_rejected_total{reason}`, `gpumesh_transport_handshake_failures_total{reason}` (HELLO),
`gpumesh_dataplane_rpc_requests_total{method, code}` (bad_request, invalid, invalid_spec, quota, busy...).
"""
