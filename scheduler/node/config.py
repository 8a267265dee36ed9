"""Node configuration: flags > environment (GPUMESH_*) > TOML config file > defaults.

One pydantic model is the single source of truth: the CLI's `--help`, the docs' configuration reference and
validation all come from it. Bad configuration fails before any network I/O, in one line.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import multiaddr
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from scheduler.core.local import default_data_dir


class ConfigError(Exception):
    """Configuration that cannot be used; the message is one line for the operator."""


def parse_hostport(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{what} must be HOST:PORT, got {value!r}")
    host = host.strip("[]")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not all(part.isalnum() or "-" in part for part in host.split(".")):
                raise ValueError(f"{what}: bad host {host!r}") from None
    return host, int(port)


def has_port(addr: str) -> bool:
    """'host:port' or '[v6]:port' (an IPv6 address alone has colons but no port)."""
    return addr.startswith("[") and "]:" in addr or addr.count(":") == 1


class NodeSettings(BaseSettings):
    """Options of `mesh-node run`. Each field's description is its --help text."""

    model_config = SettingsConfigDict(env_prefix="GPUMESH_", extra="forbid", validate_default=True)

    data_dir: Path = Field(default_factory=default_data_dir,
                           description="Directory for the node's identity key, journal and control socket")
    listen: list[str] = Field(default=["/ip4/0.0.0.0/tcp/4001"],
                              description="libp2p listen multiaddr (repeatable)")
    bootstrap: list[str] = Field(default=[],
                                 description="Peer to join through, as /ip4/HOST/tcp/PORT/p2p/PEER_ID (repeatable)")
    join: list[str] = Field(default=[],
                            description="Data-plane address HOST:PORT of a node to join through: its peer id and "
                                        "libp2p addresses are learned from it (the mesh key still checked); repeatable")
    mdns: bool = Field(default=False, description="Discover peers on the local network with mDNS")
    data_listen: str = Field(default="0.0.0.0:4002", description="HOST:PORT of the bigtcp data plane (jobs, results, client API)")
    data_plane_insecure: bool = Field(default=False,
                                      description="Run the data plane without TLS (trusted networks and benchmarks only)")
    advertise_host: str = Field(default="",
                                description="HOST, or HOST:PORT, peers should dial for the data plane (a NAT, port "
                                            "mapping or proxy in front of this node; default: derived from --data-listen)")
    metrics_listen: str = Field(default="127.0.0.1:9464",
                                description="HOST:PORT for Prometheus metrics, or 'off'")
    devices: str = Field(default="all",
                         description="OpenCL devices to offer: 'all', 'none' (run no jobs: a coordinator/gateway only), "
                                     "or a comma list of ids / name substrings")
    advert_interval: float = Field(default=2.0, gt=0.05, le=300,
                                   description="Shortest seconds between full capacity adverts (small meshes); the "
                                               "interval grows with the number of peers, up to --advert-max-interval")
    advert_max_interval: float = Field(default=60.0, gt=0.05, le=3600,
                                       description="Longest seconds between full capacity adverts (large meshes)")
    advert_ttl: float | None = Field(default=None, gt=0,
                                     description="Seconds before a silent peer expires at the shortest interval "
                                                 "(default: 3 intervals); peers announcing a longer interval expire "
                                                 "after as many of their own intervals")
    rescan_interval: float = Field(default=30.0, gt=0, description="Seconds between OpenCL device re-scans")
    slots_per_device: int = Field(default=1, ge=1, le=64, description="Jobs run at once on each device")
    max_queue: int = Field(default=64, ge=1, le=100_000, description="Queued jobs per device before 'saturated'")
    runner_memory_mb: int = Field(default=0, ge=0, le=1 << 24,
                                  description="Memory (MiB) a runner process may use for one job beyond its own baseline; "
                                              "0: a quarter of RAM, between 1 and 8 GiB")
    mesh_key_file: Path | None = Field(default=None,
                                       description="Private-network key file: only nodes holding the same key can join")
    allow_peers: Path | None = Field(default=None,
                                     description="File of peer ids (one per line) allowed to join; others are refused")
    max_client_calls: int = Field(default=256, ge=1, le=100_000,
                                  description="Calls one API token may have in progress at once (all its connections)")
    stall_timeout: float = Field(default=60.0, gt=0, le=3600,
                                 description="Seconds a data-plane send may wait for the peer to grant credit or read "
                                             "before the stream is reset (the connection closed)")
    share: float = Field(default=1.0, ge=0.0, le=1.0,
                         description="Share of this host's device slots the mesh may use for remote jobs (0.0..1.0)")
    exit_with_parent: bool = Field(default=False,
                                   description="Stop when the process that started this node exits (for harnesses "
                                               "and supervisors that start nodes as child processes)")
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level")
    log_format: Literal["text", "json"] = Field(default="text", description="Log format (json: one object per line)")

    @field_validator("listen", "bootstrap")
    @classmethod
    def _multiaddrs(cls, v: list[str], info) -> list[str]:
        for a in v:
            try:
                ma = multiaddr.Multiaddr(a)
            except Exception as e:
                raise ValueError(f"bad multiaddr {a!r}: {e}") from None
            if info.field_name == "bootstrap" and "/p2p/" not in str(ma):
                raise ValueError(f"bootstrap address {a!r} must end with /p2p/<peer-id> (`mesh-node id` on that host prints it)")
        return v

    @field_validator("join")
    @classmethod
    def _joins(cls, v: list[str]) -> list[str]:
        for a in v:
            parse_hostport(a, "join")
        return v

    @field_validator("data_listen")
    @classmethod
    def _hostport(cls, v: str) -> str:
        parse_hostport(v, "data-listen")
        return v

    @field_validator("advertise_host")
    @classmethod
    def _advertise(cls, v: str) -> str:
        if has_port(v):
            parse_hostport(v, "advertise-host")
        return v

    @field_validator("metrics_listen")
    @classmethod
    def _metrics(cls, v: str) -> str:
        if v != "off":
            parse_hostport(v, "metrics-listen")
        return v

    @field_validator("mesh_key_file", "allow_peers")
    @classmethod
    def _readable(cls, v: Path | None) -> Path | None:
        if v is not None and not os.access(v, os.R_OK):
            raise ValueError(f"cannot read {v}")
        return v

    @model_validator(mode="after")
    def _insecure_alone(self) -> NodeSettings:
        if self.data_plane_insecure and (self.mesh_key_file or self.allow_peers):
            raise ValueError("--data-plane-insecure cannot be combined with --mesh-key-file or --allow-peers: "
                             "without TLS a peer id is an unproven claim, so neither would keep anyone out")
        return self

    @model_validator(mode="after")
    def _ttl(self) -> NodeSettings:
        if self.advert_ttl is None:
            self.advert_ttl = 3 * self.advert_interval
        elif self.advert_ttl <= self.advert_interval:
            raise ValueError("advert-ttl must be longer than advert-interval")
        if self.advert_max_interval < self.advert_interval:
            raise ValueError("advert-max-interval must be at least advert-interval")
        return self

    @property
    def ttl_intervals(self) -> float:
        """A silent peer expires after this many of the refresh intervals it announces."""
        assert self.advert_ttl is not None
        return self.advert_ttl / self.advert_interval

    @property
    def ttl_s(self) -> float:
        assert self.advert_ttl is not None
        return self.advert_ttl


class _DictSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(NodeSettings.model_fields))
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(unknown)}")
    return data


def load_settings(flags: dict[str, Any], config_file: Path | None = None) -> NodeSettings:
    """Merge the sources in precedence order; raise ConfigError with one readable line."""
    file_data = read_config_file(config_file) if config_file else {}

    class _Settings(NodeSettings):
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                       file_secret_settings):
            return (init_settings, env_settings, _DictSource(settings_cls, file_data))

    try:
        return _Settings(**flags)
    except ValidationError as e:
        err = e.errors()[0]
        where = "-".join(str(p) for p in err["loc"] if isinstance(p, str)) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{where.replace('_', '-')}: {msg}") from None


# --- options of the client commands (argparse) ---------------------------------------------------------

def add_data_dir_option(p: Any, what: str = "the node to ask") -> None:
    """--data-dir, for every CLI command that talks to a node (argparse parser `p`)."""
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("GPUMESH_DATA_DIR", default_data_dir())),
                   help=f"data dir of {what} (default: $GPUMESH_DATA_DIR or the XDG data dir)")


def add_node_options(p: Any, token: str = "API token") -> None:
    """--data-dir, --node, --token, --insecure: how a client command reaches a node (read by
    `scheduler.client.client.address_from_args`)."""
    add_data_dir_option(p, "the local node to use")
    p.add_argument("--node", metavar="HOST:PORT", default=os.environ.get("GPUMESH_NODE"),
                   help="data-plane address of the node to use (default: the local node of --data-dir)")
    p.add_argument("--token", default=os.environ.get("GPUMESH_TOKEN"),
                   help=f"{token} (default: $GPUMESH_TOKEN, or the local node's own token)")
    p.add_argument("--peer-id", default=os.environ.get("GPUMESH_PEER_ID"),
                   help="with --node: the node's peer id (`mesh-node id` there); default: the id recorded for that "
                        "address in the known-nodes file, trusted and recorded on first use")
    p.add_argument("--insecure", action="store_true", help="the node runs with --data-plane-insecure")
