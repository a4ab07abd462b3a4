"""Every configuration field, defined once.

The CLI is generated from these fields (see ``cli.py``), the library API takes the
same names as keyword arguments, and a shard receives a ``Config`` as its only
instructions.  Field metadata carries what the CLI needs: help text, choices,
whether a boolean has a ``--no-`` form, and whether the option repeats.
"""

from __future__ import annotations

import dataclasses
import math
import os
import ssl
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
HTTP_BACKENDS = ("auto", "httptools", "python", "h11")
LOOPS = ("auto", "uvloop", "asyncio")
LIFESPAN_MODES = ("auto", "on", "off")
WS = ("auto", "websockets", "none")
STEERING = ("hash", "cpu")
SHARD_MODES = ("process", "subinterpreter")


def option(
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    negatable: bool = False,
    multiple: bool = False,
    cli: bool = True,
    minimum: float | None = None,
    maximum: float | None = None,
    metavar: str | None = None,
    flag: str | None = None,
    kind: str | None = None,
    aliases: tuple[str, ...] = (),
    env: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Metadata for one field: how the CLI presents it.

    ``aliases``: more flag names (uvicorn's); ``env``: more environment variables read
    after ``SHARDSERVE_<NAME>`` (ones uvicorn honours).
    """
    return {
        "flag": flag,
        "aliases": aliases,
        "env": env,
        "kind": kind,
        "help": help,
        "choices": choices,
        "negatable": negatable,
        "multiple": multiple,
        "cli": cli,
        "minimum": minimum,
        "maximum": maximum,
        "metavar": metavar,
    }


@dataclass
class Config:
    # The application.
    app: Any = field(
        default=None,
        metadata=option("ASGI application as 'module:attribute', or the app object.", cli=False),
    )
    factory: bool = field(
        default=False,
        metadata=option("Treat APP as a factory: call it with no arguments to get the app."),
    )
    app_dir: str = field(
        default="",
        metadata=option("Look for APP in this directory, by adding it to sys.path."),
    )

    # Where to listen.
    host: str = field(default="127.0.0.1", metadata=option("Bind socket to this host."))
    port: int = field(
        default=8000,
        metadata=option("Bind socket to this port; 0 picks a free port.", minimum=0, maximum=65535),
    )
    uds: str | None = field(default=None, metadata=option("Bind to a UNIX domain socket."))
    fd: int | None = field(
        default=None, metadata=option("Serve on an inherited listening socket fd.", minimum=0)
    )
    backlog: int = field(
        default=2048, metadata=option("Maximum number of queued connections.", minimum=1)
    )

    # Implementations.
    http: str = field(
        default="auto",
        metadata=option(
            "HTTP/1.1 parser back-end (auto: httptools, else the pure-Python parser).",
            choices=HTTP_BACKENDS,
        ),
    )
    http2: bool = field(
        default=True,
        metadata=option(
            "Serve HTTP/2: over TLS when ALPN chooses h2, in cleartext to clients that "
            "open with its preface (h2c prior knowledge).",
            negatable=True,
        ),
    )
    h2_max_concurrent_streams: int = field(
        default=100,
        metadata=option(
            "HTTP/2 streams a connection may have answered at once (more: REFUSED_STREAM).",
            minimum=1,
        ),
    )
    h2_max_header_list_size: int = field(
        default=65536,
        metadata=option(
            "Largest HTTP/2 request header list, in bytes after HPACK decoding.", minimum=1024
        ),
    )
    h2_max_inbound_frame_size: int = field(
        default=16384,
        metadata=option(
            "Largest HTTP/2 frame payload accepted, in bytes.", minimum=16384, maximum=16777215
        ),
    )
    h2_initial_stream_window_size: int = field(
        default=65535,
        metadata=option(
            "HTTP/2 request body bytes a stream may send ahead of the app reading them.",
            minimum=1,
            maximum=2**31 - 1,
        ),
    )
    h2_initial_connection_window_size: int = field(
        default=1048576,
        metadata=option(
            "HTTP/2 request body bytes a connection may send ahead of the app reading them.",
            minimum=65535,
            maximum=2**31 - 1,
        ),
    )
    loop: str = field(default="auto", metadata=option("Event loop.", choices=LOOPS))
    lifespan: str = field(
        default="auto", metadata=option("ASGI lifespan protocol.", choices=LIFESPAN_MODES)
    )

    # WebSockets.
    ws: str = field(
        default="auto",
        metadata=option("WebSocket implementation ('none' serves upgrades as HTTP).", choices=WS),
    )
    ws_max_size: int = field(
        default=16 * 1024 * 1024,
        metadata=option("Largest WebSocket message accepted, in bytes (larger: 1009).", minimum=1),
    )
    ws_max_queue: int = field(
        default=32,
        metadata=option(
            "WebSocket messages a connection holds for the app before it stops reading.",
            minimum=1,
        ),
    )
    ws_ping_interval: float | None = field(
        default=20.0,
        metadata=option("Seconds between WebSocket pings (keep-alive).", minimum=0.1),
    )
    ws_ping_timeout: float | None = field(
        default=20.0,
        metadata=option("Close a WebSocket whose ping is not answered within this.", minimum=0.1),
    )
    ws_per_message_deflate: bool = field(
        default=True,
        metadata=option("Offer WebSocket per-message-deflate compression.", negatable=True),
    )

    # Request scope.
    root_path: str = field(
        default="",
        metadata=option("Mount path of the app when served behind a path-prefixing proxy."),
    )
    proxy_headers: bool = field(
        default=True,
        metadata=option(
            "Trust X-Forwarded-For, X-Forwarded-Proto and Forwarded from --forwarded-allow-ips.",
            negatable=True,
        ),
    )
    forwarded_allow_ips: str | None = field(
        default=None,
        metadata=option(
            "Comma-separated addresses or CIDR ranges to trust proxy headers from, or '*'. "
            "Defaults to $FORWARDED_ALLOW_IPS or 127.0.0.1."
        ),
    )

    # Response defaults.
    server_header: bool = field(
        default=True, metadata=option("Send a Server header.", negatable=True)
    )
    date_header: bool = field(default=True, metadata=option("Send a Date header.", negatable=True))
    headers: list[str] = field(
        default_factory=list,
        metadata=option(
            "A default response header as NAME:VALUE; repeat for more.",
            multiple=True,
            metavar="NAME:VALUE",
            flag="header",
        ),
    )

    # Timeouts and limits.
    timeout_keep_alive: float = field(
        default=5.0,
        metadata=option("Close keep-alive connections idle for this many seconds.", minimum=0),
    )
    timeout_request_header: float = field(
        default=10.0,
        metadata=option(
            "Close connections that take longer than this to send a request's headers.",
            minimum=0,
        ),
    )
    timeout_request_body: float = field(
        default=60.0,
        metadata=option(
            "Close a connection whose request body sends nothing for this many seconds "
            "while the app waits for it (the app gets http.disconnect); 0: no limit.",
            minimum=0,
        ),
    )
    timeout_send: float = field(
        default=60.0,
        metadata=option(
            "Close an HTTP/2 connection whose client reads nothing, or keeps a response's "
            "flow-control window shut, for this many seconds.",
            minimum=0.1,
        ),
    )
    timeout_graceful_shutdown: float | None = field(
        default=None,
        metadata=option(
            "On shutdown, wait at most this many seconds for in-flight requests.", minimum=0
        ),
    )
    limit_concurrency: int | None = field(
        default=None,
        metadata=option(
            "Answer 503 beyond this many concurrent connections or requests per shard.",
            minimum=1,
        ),
    )
    limit_max_requests: int | None = field(
        default=None,
        metadata=option("Stop a shard after it has served this many requests.", minimum=1),
    )
    limit_max_rss: int | None = field(
        default=None,
        metadata=option(
            "Replace a shard whose resident memory stays above this many MB (MiB) for 3 s "
            "(successor ready first, then it drains). Process shards only.",
            minimum=1,
            metavar="MB",
        ),
    )
    limit_request_body: int | None = field(
        default=None,
        metadata=option(
            "Largest request body accepted, in bytes: a larger declared Content-Length is "
            "answered 413 before the app runs; a chunked body that grows past it ends "
            "with http.disconnect (and 413 if no response began). Default: no limit.",
            minimum=0,
            metavar="BYTES",
        ),
    )
    limit_request_line: int = field(
        default=8190,
        metadata=option("Longest request target accepted (longer: 414).", minimum=16),
    )
    limit_request_fields: int = field(
        default=100,
        metadata=option("Most request header fields accepted (more: 431).", minimum=1),
    )
    limit_request_field_size: int = field(
        default=8190,
        metadata=option("Longest request header field accepted (longer: 431).", minimum=16),
    )

    # Logging.
    log_level: str | None = field(
        default=None, metadata=option("Log level (default: info).", choices=LOG_LEVELS)
    )
    access_log: bool = field(
        default=True, metadata=option("Log one line per request.", negatable=True)
    )
    log_config: str | None = field(
        default=None,
        metadata=option("Logging configuration file: .json, .yaml/.yml or .ini (fileConfig)."),
    )
    use_colors: bool | None = field(
        default=None,
        metadata=option("Colour the log (default: when the output is a terminal).", negatable=True),
    )
    env_file: str | None = field(
        default=None, metadata=option("Load environment variables from this file.")
    )

    # Development.
    reload: bool = field(
        default=False,
        metadata=option(
            "Watch the source and roll the shards onto new code when it changes "
            "(development; needs watchfiles)."
        ),
    )
    reload_dirs: list[str] = field(
        default_factory=list,
        metadata=option(
            "Directory to watch with --reload (default: the current one); repeat for more.",
            multiple=True,
            flag="reload_dir",
            metavar="DIR",
        ),
    )
    reload_includes: list[str] = field(
        default_factory=list,
        metadata=option(
            "Glob of files whose changes reload (besides '*.py'); repeat for more.",
            multiple=True,
            flag="reload_include",
            metavar="GLOB",
        ),
    )
    reload_excludes: list[str] = field(
        default_factory=list,
        metadata=option(
            "Glob, directory or directory name whose changes never reload (besides "
            "'.*', '.py[cod]', '.sw.*', '~*'); repeat for more.",
            multiple=True,
            flag="reload_exclude",
            metavar="GLOB",
        ),
    )
    reload_delay: float = field(
        default=0.25,
        metadata=option("Seconds to wait after one reload before the next.", minimum=0),
    )

    # TLS.
    ssl_keyfile: str | None = field(default=None, metadata=option("TLS private key file."))
    ssl_certfile: str | None = field(default=None, metadata=option("TLS certificate file."))
    ssl_keyfile_password: str | None = field(
        default=None, metadata=option("Password for the TLS private key.")
    )
    ssl_version: int = field(
        default=int(ssl.PROTOCOL_TLS_SERVER),
        metadata=option("TLS protocol version (see the stdlib ssl module)."),
    )
    ssl_cert_reqs: int = field(
        default=int(ssl.CERT_NONE),
        metadata=option("Whether a client certificate is required (see the stdlib ssl module)."),
    )
    ssl_ca_certs: str | None = field(default=None, metadata=option("CA certificates file."))
    ssl_ciphers: str = field(default="TLSv1", metadata=option("TLS ciphers (see the ssl module)."))

    # Sharding.
    shards: int | str = field(
        default=1,
        metadata=option(
            "Number of shards (one event loop each), or 'auto': the usable CPUs, capped "
            "by a cgroup CPU quota. One shard runs in this process; more run as processes.",
            kind="shards",
            metavar="N|auto",
            aliases=("--workers",),
            env=("WEB_CONCURRENCY",),
        ),
    )
    metrics: str | None = field(
        default=None,
        metadata=option(
            "Serve Prometheus metrics (/metrics) and health checks (/healthz, /readyz) "
            "from the coordinator on HOST:PORT.",
            metavar="HOST:PORT",
        ),
    )
    control_socket: str | None = field(
        default=None,
        metadata=option(
            "Unix socket for `shardserve status`, `reload` and `stop` (mode 0600; default: "
            "$XDG_RUNTIME_DIR/shardserve/<pid>.sock whenever shards are supervised).",
            metavar="PATH",
        ),
    )
    shard_mode: str = field(
        default="process",
        metadata=option(
            "Run shards as processes, or as own-GIL subinterpreters of one process "
            "(Python 3.13+; stdlib asyncio and the pure-Python parser).",
            choices=SHARD_MODES,
        ),
    )
    cpus: str | None = field(
        default=None,
        metadata=option("CPUs to place shards on, e.g. '0-3,8' (default: the usable CPUs)."),
    )
    pin: bool = field(default=False, metadata=option("Pin shard i to the i-th CPU of --cpus."))
    reuseport_steering: str = field(
        default="hash",
        metadata=option(
            "How the kernel spreads connections over shards: 'hash' of the 4-tuple, or "
            "'cpu': the shard pinned to the CPU that received the connection (needs --pin).",
            choices=STEERING,
        ),
    )
    timeout_shard_heartbeat: float = field(
        default=30.0,
        metadata=option(
            "Replace a shard whose event loop has not answered for this many seconds.",
            minimum=1,
        ),
    )
    limit_max_requests_jitter: int = field(
        default=0,
        metadata=option(
            "Add up to this many requests (random, per shard) to --limit-max-requests.",
            minimum=0,
        ),
    )

    @property
    def is_ssl(self) -> bool:
        return bool(self.ssl_certfile)

    @property
    def trusted_proxies(self) -> str:
        if self.forwarded_allow_ips is not None:
            return self.forwarded_allow_ips
        return os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")

    def validate(self) -> None:
        """Refuse combinations that cannot work, with one line each."""
        if self.app is None:
            raise ConfigError("no application given: pass APP as 'module:attribute'")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ConfigError("--ssl-keyfile needs --ssl-certfile")
        if self.uds is not None and self.fd is not None:
            raise ConfigError("--uds and --fd cannot be combined")
        if type(self.port) is not int or not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port!r}: expected a port number from 0 to 65535")
        for name in ("ssl_certfile", "ssl_keyfile", "ssl_ca_certs", "log_config", "env_file"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} {path}: no such file")
        if self.shards != "auto" and (type(self.shards) is not int or self.shards < 1):
            raise ConfigError(f"--shards {self.shards!r}: expected a number of at least 1, or auto")
        if self.shards != 1 and not isinstance(self.app, str):
            raise ConfigError(
                "more than one shard needs the app as an import string ('module:attribute')"
            )
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                flag = "--" + (f.metadata.get("flag") or f.name).replace("_", "-")
                raise ConfigError(f"{flag} {value}: expected a finite number")
        if self.shard_mode == "subinterpreter" and self.limit_max_rss is not None:
            raise ConfigError(
                "--limit-max-rss cannot apply to subinterpreter shards: they share one "
                "process, so no shard's memory can be measured alone; use --shard-mode process"
            )
        if self.shard_mode == "subinterpreter":
            self.check_subinterpreter_settings()
        if self.metrics is not None:
            from .coord.metrics import parse_address

            parse_address(self.metrics)
        if self.reload:
            self.check_reload_settings()
        for header in self.headers:
            name, sep, _ = header.partition(":")
            if not sep or not name.strip():
                raise ConfigError(f"--header {header!r}: expected NAME:VALUE")
        from .shard.http.proxy import parse_trusted

        try:
            parse_trusted(self.trusted_proxies)
        except ValueError as exc:
            raise ConfigError(f"--forwarded-allow-ips: {exc}") from None

    def check_subinterpreter_settings(self) -> None:
        """What a subinterpreter shard cannot honour (C extensions refuse to load there)."""
        for flag, value, native in (
            ("--loop", self.loop, "uvloop"),
            ("--http", self.http, "httptools"),
        ):
            if value == native:
                raise ConfigError(
                    f"{flag} {value} cannot load in a subinterpreter shard: "
                    f"leave {flag} at auto, or use --shard-mode process"
                )
        if not isinstance(self.app, str):
            raise ConfigError("subinterpreter shards need the app as an import string")

    def check_reload_settings(self) -> None:
        if not isinstance(self.app, str):
            raise ConfigError("--reload needs the app as an import string ('module:attribute')")
        try:
            import watchfiles  # noqa: F401
        except ImportError:
            raise ConfigError("--reload needs watchfiles: pip install watchfiles") from None
        for directory in self.reload_dirs:
            if not os.path.isdir(directory):
                raise ConfigError(f"--reload-dir {directory}: no such directory")

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def shards_from_environment() -> dict[str, int | str]:
    """uvicorn.run honours $WEB_CONCURRENCY when given no worker count; so does run()."""
    meta = next(f for f in dataclasses.fields(Config) if f.name == "shards").metadata
    for name in meta["env"]:
        value = os.environ.get(name, "").strip()
        if value:
            if value == "auto":
                return {"shards": value}
            try:
                return {"shards": int(value)}
            except ValueError:
                raise ConfigError(f"${name} {value!r}: expected a number of shards") from None
    return {}


def config_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(Config) if f.metadata.get("cli", True)]
