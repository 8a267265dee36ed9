"""Typed request/response on bigtcp streams: `RpcServer` (node side), `MeshClient` (trio), `SyncMeshClient`.

The protocol and `RpcError`: `rpc_protocol.py`; the server: `rpc_server.py`; the trio client:
`rpc_client.py`; the blocking client: `rpc_sync.py`. Import them from here.
"""

from __future__ import annotations

from mesh.bigtcp.rpc_client import ClientCall, MeshClient
from mesh.bigtcp.rpc_protocol import RPC_META, RpcError
from mesh.bigtcp.rpc_server import Call, Handler, RpcServer
from mesh.bigtcp.rpc_sync import SyncCall, SyncMeshClient

__all__ = ["RPC_META", "Call", "ClientCall", "Handler", "MeshClient", "RpcError", "RpcServer", "SyncCall", "SyncMeshClient"]
