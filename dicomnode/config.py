"""Node configuration: one TOML file, overridable by environment variables.

The file layout is the contract in SPEC.md (``[node]``, ``[storage]``,
``[database]``, ``[assembly]``, ``[api]``, ``[[destinations]]``,
``[[sources]]``, ``[[routes]]``, ``[pipelines.NAME]``). An environment variable
``DICOMNODE_SECTION__KEY`` overrides ``SECTION.KEY`` (values are parsed as
TOML literals when they can be, so ``DICOMNODE_NODE__PORT=11113`` is an int).

Every validation error is reported as one :class:`ConfigError` whose message
names the offending key, e.g. ``node.port: Input should be less than or equal
to 65535``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dicomnode.outputs import OUTPUT_KINDS, OutputKind, every_kind

ENV_PREFIX = "DICOMNODE_"
DEFAULT_CONFIG_NAME = "dicomnode.toml"

_SUBKEY = re.compile(r"^[a-z_]+(\.[a-z0-9_]+)*: ")
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: no backslash, no control


class ConfigError(ValueError):
    """A configuration problem, with a one-line message naming the key."""


class _Section(BaseModel):
    # Env values are parsed as TOML literals, so an AE title "1234" arrives as an int.
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


def _check_ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError("must be 1-16 printable characters without backslash")
    return value.strip()


class TLSConfig(_Section):
    """DICOM TLS for the receiver (server side)."""

    enabled: bool = False
    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificates: Path | None = None  # set to verify client certificates
    require_client_certificate: bool = False

    @model_validator(mode="after")
    def _files_when_enabled(self) -> TLSConfig:
        if self.enabled and (self.certificate is None or self.private_key is None):
            raise ValueError("certificate and private_key are required when TLS is enabled")
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("ca_certificates is required to verify client certificates")
        return self


class NodeConfig(_Section):
    """The DICOM receiver (SCP)."""

    ae_title: str = "DICOMNODE"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    allowed_calling_aets: list[str] = Field(default_factory=list)
    max_associations: int = Field(16, ge=1, le=1024)  # node-wide, over every receiver process
    # Receiver processes sharing the port (SO_REUSEPORT); None: one per core; 0: in the
    # serving process itself (no extra processes).
    receiver_processes: int | None = Field(None, ge=0, le=256)
    network_timeout: float = Field(60.0, gt=0)
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(60.0, gt=0)
    maximum_pdu_size: int = Field(4_194_304, ge=0)  # 0: unlimited
    tls: TLSConfig = Field(default_factory=TLSConfig)

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return _check_ae_title(value)

    @field_validator("allowed_calling_aets")
    @classmethod
    def _aets(cls, values: list[str]) -> list[str]:
        return [_check_ae_title(v) for v in values]


class StorageConfig(_Section):
    """Where received instances and produced results live."""

    path: Path = Path("var/storage")
    min_free_bytes: int = Field(1_073_741_824, ge=0)  # below this, C-STORE answers 0xA700
    fsync: bool = True  # only benchmarks of the disk itself should turn this off
    # Also fsync the folder after every rename (file systems that do not journal
    # renames with the data; ext4, XFS and btrfs do). See dicomnode/store/files.py.
    fsync_directory: bool = False


class DatabaseConfig(_Section):
    """SQLAlchemy URL of the job database."""

    url: str = "sqlite:///var/dicomnode.db"

    @field_validator("url")
    @classmethod
    def _supported(cls, url: str) -> str:
        if not (url.startswith("sqlite:") or url.startswith("postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        return url


class AssemblyConfig(_Section):
    """When is a study complete."""

    quiet_seconds: float = Field(10.0, gt=0)
    early_quiet_seconds: float = Field(2.0, ge=0)  # quiet time once a route's series are present
    check_interval: float = Field(1.0, gt=0)
    # Instances arriving this long after the study was complete re-open it: the jobs whose
    # inputs they change re-run and revise their results (docs/revisions.md). 0: never.
    reopen_window_seconds: float = Field(86400.0, ge=0)


class WorkersConfig(_Section):
    """Job execution."""

    processes: int = Field(1, ge=0, le=64)  # worker processes started by `serve`
    lease_seconds: float = Field(60.0, gt=1)
    heartbeat_seconds: float = Field(10.0, gt=0)
    poll_seconds: float = Field(1.0, gt=0)
    job_timeout_seconds: float = Field(3600.0, gt=0)
    max_attempts: int = Field(3, ge=1)  # claims of one job before it is failed
    # On SIGTERM a worker finishes its job for this long, then hands it back to the queue.
    shutdown_grace_seconds: float = Field(20.0, ge=0)

    @model_validator(mode="after")
    def _heartbeat_inside_lease(self) -> WorkersConfig:
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError("heartbeat_seconds must be shorter than lease_seconds")
        return self


class DeliveryConfig(_Section):
    """Sending results to destinations."""

    max_attempts: int = Field(5, ge=1)
    backoff_seconds: float = Field(5.0, gt=0)
    backoff_max_seconds: float = Field(600.0, gt=0)
    check_interval: float = Field(1.0, gt=0)


class RetentionConfig(_Section):
    """Removing stored files of finished studies (their database records stay)."""

    enabled: bool = False
    max_age_hours: float = Field(720.0, gt=0)  # after the study completed
    check_interval_seconds: float = Field(300.0, gt=0)
    # Below this much free space, remove the oldest finished studies first, whatever their age.
    emergency_free_bytes: int = Field(0, ge=0)


WebAuth = Literal["none", "basic", "bearer", "oauth2"]
_SECRET_FROM_ENV = "env:"


def _secret(value: str | None) -> str | None:
    """A secret as written, or ``env:NAME``: the value of environment variable NAME.

    Lets an admin keep passwords and tokens out of the file (systemd
    ``EnvironmentFile``, Kubernetes secrets) while the file names where they are.
    """
    if value is None or not value.startswith(_SECRET_FROM_ENV):
        return value
    name = value[len(_SECRET_FROM_ENV) :]
    found = os.environ.get(name)
    if not found:
        raise ValueError(f"environment variable {name} is not set")
    return found


class APITokenConfig(_Section):
    """One bearer token of the admin API and what it may do."""

    token: str = Field(min_length=16)
    # read: GET only; store: STOW-RS only (a modality or PACS pushing); admin: everything.
    role: Literal["read", "store", "admin"] = "read"
    name: str | None = None  # who holds it (logged with admin actions instead of the token)

    @field_validator("token", mode="before")
    @classmethod
    def _printable(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        value = _secret(value) or ""  # before min_length: "env:NAME" is checked as its value
        if not value.isascii() or not value.isprintable() or " " in value:
            raise ValueError("must be printable ASCII without spaces")
        return value


def is_loopback(host: str) -> bool:
    """Whether *host* only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class APIConfig(_Section):
    """The admin REST API, dashboard and metrics (``dicomnode/api``).

    Without tokens the API is open to every local process and must listen on
    loopback; listening elsewhere requires at least one token.
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)  # 0: any free port (tests)
    tokens: list[APITokenConfig] = Field(default_factory=list)
    # STOW-RS under /dicomweb (PS3.18): instances pushed over HTTP, stored like C-STOREs.
    stow: bool = False

    @model_validator(mode="after")
    def _tokens_off_loopback(self) -> APIConfig:
        if not self.tokens and not is_loopback(self.host):
            raise ValueError(
                f"tokens: required when the API listens on {self.host} (not loopback); "
                'add [[api.tokens]] with token and role = "admin" or "read"'
            )
        tokens = [t.token for t in self.tokens]
        for i, token in enumerate(tokens):
            if token in tokens[:i]:
                raise ValueError(f"tokens.{i}.token: the same token is listed twice")
        if self.stow and not any(t.role in ("store", "admin") for t in self.tokens):
            raise ValueError(
                'stow: needs a token that may store: add [[api.tokens]] with role = "store"'
            )
        return self


class RemoteConfig(_Section):
    """A peer the node talks to: over DIMSE (AE title, host, port) or DICOMweb (a base URL).

    The keys shared by ``[[sources]]`` and ``[[destinations]]``. DICOMweb
    authentication: ``auth = "basic"`` (``username``, ``password``),
    ``"bearer"`` (``token``) or ``"oauth2"`` (client credentials:
    ``token_url``, ``client_id``, ``client_secret``, optional ``scope``); a
    secret may be written ``env:NAME`` to read it from the environment.
    ``ca_certificates`` verifies the peer's TLS certificate in both kinds.
    """

    name: str
    kind: Literal["dimse", "dicomweb"] = "dimse"
    # DIMSE
    ae_title: str | None = None
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    tls: bool = False
    ca_certificates: Path | None = None  # verify the peer (default: system CAs)
    certificate: Path | None = None  # our client certificate, when the peer asks for one
    private_key: Path | None = None
    # DICOMweb
    url: str | None = None
    auth: WebAuth = "none"
    username: str | None = None
    password: str | None = None
    token: str | None = None
    token_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    scope: str | None = None
    http_timeout: float = Field(60.0, gt=0)  # seconds without a byte from the server

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str | None) -> str | None:
        return None if value is None else _check_ae_title(value)

    @field_validator("url", "token_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("password", "token", "client_secret")
    @classmethod
    def _secrets(cls, value: str | None) -> str | None:
        return _secret(value)

    @model_validator(mode="after")
    def _keys_of_kind(self) -> RemoteConfig:
        if self.kind == "dimse":
            missing = [k for k in ("ae_title", "host", "port") if getattr(self, k) is None]
            if missing:
                raise ValueError(f'{missing[0]}: required for kind = "dimse"')
            return self
        if self.url is None:
            raise ValueError('url: required for kind = "dicomweb"')
        needed = {
            "basic": ("username", "password"),
            "bearer": ("token",),
            "oauth2": ("token_url", "client_id", "client_secret"),
            "none": (),
        }[self.auth]
        for key in needed:
            if not getattr(self, key):
                raise ValueError(f"{key}: required with auth = {self.auth!r}")
        return self

    def dimse_peer(self) -> tuple[str, str, int]:
        """(AE title, host, port) of a DIMSE peer (ValueError for a DICOMweb one)."""
        if self.ae_title is None or self.host is None or self.port is None:
            raise ValueError(f"{self.name} is a DICOMweb peer, not a DIMSE one")
        return self.ae_title, self.host, self.port

    @property
    def address(self) -> str:
        """Where the peer is, for messages: ``AET@HOST:PORT`` or the URL."""
        if self.kind == "dicomweb":
            return str(self.url)
        return f"{self.ae_title}@{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """Client TLS context for this DIMSE peer, or None when TLS is off."""
        if not self.tls:
            return None
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH,
            cafile=str(self.ca_certificates) if self.ca_certificates else None,
        )
        if self.certificate is not None:
            ctx.load_cert_chain(
                str(self.certificate), str(self.private_key) if self.private_key else None
            )
        return ctx


class DestinationConfig(RemoteConfig):
    """A peer results are sent to: C-STORE (``kind = "dimse"``) or STOW-RS (``"dicomweb"``)."""

    # Which result objects this peer gets (dicomnode.outputs): e.g. a PACS that shows
    # neither SEG nor SR takes ["gsps", "sc"]. Default: all of them.
    outputs: list[OutputKind] = Field(default_factory=every_kind)

    @field_validator("outputs")
    @classmethod
    def _some_outputs(cls, value: list[OutputKind]) -> list[OutputKind]:
        if not value:
            raise ValueError(f"must list at least one of {', '.join(OUTPUT_KINDS)}")
        return value

    def takes(self, kind: str | None) -> bool:
        """Whether this destination gets objects of *kind* (None: a kind no filter covers)."""
        return kind is None or kind in self.outputs


class SourceConfig(RemoteConfig):
    """A PACS the node may query and retrieve studies from (``[[sources]]``).

    DIMSE sources are queried with C-FIND (Study Root) and retrieved with
    C-MOVE to the node's own AE title (``retrieve = "move"``: the PACS must
    know that AE title's host and port) or with C-GET over the query's own
    association (``"get"``: for PACS behind a firewall that cannot connect back).
    DICOMweb sources are queried with QIDO-RS and retrieved with WADO-RS.
    """

    retrieve: Literal["move", "get"] = "move"
    # Seconds without a response from the PACS before a query or retrieve is given up.
    response_timeout: float = Field(60.0, gt=0)
    # The whole retrieve of one study, however busy the PACS is.
    retrieve_timeout: float = Field(3600.0, gt=0)
    max_query_results: int = Field(10_000, ge=1)


class SenderConfig(_Section):
    """Where the calling AE of a study can be reached (destination ``sender``)."""

    ae_title: str
    host: str | None = None  # default: the address its association came from
    port: int = Field(ge=1, le=65535)


MatchValue = str | int | float | bool | list[Any] | dict[str, Any]


class RouteConfig(_Section):
    """Sends studies that match to a pipeline. See :mod:`dicomnode.routing`."""

    name: str | None = None
    pipeline: str
    match: dict[str, MatchValue] = Field(default_factory=dict)
    send_to: list[str] = Field(default_factory=list)
    priority: int = 0
    # The study may complete before quiet_seconds once one series matches each entry.
    complete_when: list[dict[str, MatchValue]] = Field(default_factory=list)
    # False: the first matching route wins. True: later routes are tried too.
    continue_matching: bool = False

    @field_validator("match", "complete_when", mode="after")
    @classmethod
    def _valid_conditions(cls, value: Any) -> Any:
        from dicomnode.routing import validate_conditions  # routing imports config

        for conditions in value if isinstance(value, list) else [value]:
            validate_conditions(conditions)
        return value


class PipelineOptions(BaseModel):
    """The keys every ``[pipelines.NAME]`` section takes.

    A pipeline declares its own options as a subclass (``Pipeline.options_model``);
    keys neither declares are errors (``extra="forbid"``), so a typo is reported
    by ``dicomnode config check`` and at start-up instead of being ignored.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # An installed pipeline name or "package.module:Class"; default: the section name.
    type: str | None = Field(None, description="installed pipeline name or package.module:Class")
    timeout_seconds: float | None = Field(None, gt=0, description="job timeout (default: workers)")


class ResultOptions(PipelineOptions):
    """Options of pipelines that write DICOM results (SEG, SR, SC) into the study."""

    notice: str = Field("Not for diagnostic use", description="notice carried by every result")
    seg_series_number: int = Field(9901, ge=1, description="Series Number of the SEG")
    sr_series_number: int = Field(9902, ge=1, description="Series Number of the SR")
    sc_series_number: int = Field(9903, ge=1, description="Series Number of key images")
    pr_series_number: int = Field(9904, ge=1, description="Series Number of the GSPS")
    series_description: str | None = Field(
        None, description="start of result Series Descriptions (default: the pipeline name)"
    )
    key_images: bool = Field(
        True, description="Secondary Capture copies for viewers without SEG/SR"
    )
    omit_empty_frames: bool = Field(True, description="SEG frames only where a segment is")
    presentation_states: bool = Field(
        True, description="a GSPS outlining the findings on the source images (greyscale only)"
    )

    def result_series(self, kind: str, pipeline: str) -> tuple[int, str]:
        """(Series Number, Series Description) for result *kind* ("seg", "sr", "sc" or "pr")."""
        number = {
            "seg": self.seg_series_number,
            "sr": self.sr_series_number,
            "sc": self.sc_series_number,
            "pr": self.pr_series_number,
        }[kind]
        label = {
            "seg": "segmentation",
            "sr": "report",
            "sc": "key images",
            "pr": "outlines",
        }[kind]
        return number, f"{self.series_description or pipeline} {label}"


class PriorsOptions(BaseModel):
    """``[pipelines.NAME.priors]``: which earlier studies a pipeline that wants priors compares with.

    A prior is an earlier study of the same patient (Patient ID, and Issuer
    of Patient ID when both studies have one; never the accession number),
    of the same modality, and of the same body part when both say one, at
    most ``max_years`` before the current study; the newest ``max_priors``
    are used. ``dicomnode.followup.priors`` finds them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="look for priors and compare with them")
    max_years: float = Field(3.0, gt=0, description="how far back a prior may be (years)")
    max_priors: int = Field(1, ge=1, le=10, description="priors compared with at most")


class ModelOptions(ResultOptions):
    """Options of pipelines that run a model bundle (:class:`~dicomnode.pipelines.model.ModelPipeline`)."""

    bundle: Path | None = Field(None, description="model bundle folder (default: models/<its own>)")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    amp: bool | None = Field(None, description="mixed precision (default: on for CUDA)")


class PipelineConfig(ModelOptions):
    """One ``[pipelines.NAME]`` section as written, checked against its pipeline's options later.

    The node knows the common keys (typed here); a pipeline's own options it
    cannot know before the pipeline is found (pipelines are plugins), so extra
    keys are kept and :func:`dicomnode.pipelines.registry.check_pipelines`
    validates the whole section against the pipeline's ``options_model``.
    """

    model_config = ConfigDict(extra="allow", frozen=False)

    def values(self) -> dict[str, Any]:
        """The keys as written in the file (and the environment)."""
        return {**self.model_dump(exclude_unset=True), **(self.model_extra or {})}


class Settings(_Section):
    """The whole node configuration."""

    node: NodeConfig = Field(default_factory=NodeConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    assembly: AssemblyConfig = Field(default_factory=AssemblyConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    api: APIConfig = Field(default_factory=APIConfig)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    destinations: list[DestinationConfig] = Field(default_factory=list)
    sources: list[SourceConfig] = Field(default_factory=list)
    senders: list[SenderConfig] = Field(default_factory=list)
    routes: list[RouteConfig] = Field(default_factory=list)
    pipelines: dict[str, PipelineConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references_resolve(self) -> Settings:
        names = [d.name for d in self.destinations]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"destinations.{i}.name: {name!r} is used twice")
        for i, route in enumerate(self.routes):
            for target in route.send_to:
                if target != "sender" and target not in names:
                    raise ValueError(f"routes.{i}.send_to: unknown destination {target!r}")
        sources = [s.name for s in self.sources]
        for i, source in enumerate(self.sources):
            if source.name in sources[:i]:
                raise ValueError(f"sources.{i}.name: {source.name!r} is used twice")
            allowed = self.node.allowed_calling_aets
            moves = source.kind == "dimse" and source.retrieve == "move"
            if moves and allowed and source.ae_title not in allowed:
                raise ValueError(
                    f"sources.{i}.ae_title: {source.ae_title} is not in "
                    "node.allowed_calling_aets, so the C-STOREs of its C-MOVEs would be "
                    "refused; add it there"
                )
        return self

    def destination(self, name: str) -> DestinationConfig:
        """The destination called *name* (KeyError if there is none)."""
        for dest in self.destinations:
            if dest.name == name:
                return dest
        raise KeyError(name)

    def source(self, name: str) -> SourceConfig:
        """The source called *name* (KeyError if there is none)."""
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(name)

    def pipeline(self, name: str) -> PipelineConfig:
        """The ``[pipelines.NAME]`` section of *name* as written; empty when it has none."""
        return self.pipelines.get(name, PipelineConfig())


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env(data: dict[str, Any], environ: dict[str, str]) -> None:
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: {'.'.join(path)} is not a table")
        node[path[-1]] = _parse_env_value(raw)


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    # Whole-config and section checks name their key (or sub-key) at the start of the message.
    key = ".".join(str(p) for p in first["loc"])
    separator = "." if key and _SUBKEY.match(msg) else ": "
    text = f"{key}{separator}{msg}" if key else msg
    more = len(err.errors()) - 1
    return text + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def resolve_config_path(path: str | os.PathLike[str] | None) -> Path | None:
    """The file to load: *path*, else ``$DICOMNODE_CONFIG``, else ``./dicomnode.toml``."""
    if path is not None:
        return Path(path)
    env = os.environ.get(ENV_PREFIX + "CONFIG")
    if env:
        return Path(env)
    default = Path(DEFAULT_CONFIG_NAME)
    return default if default.exists() else None


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: dict[str, str] | None = None,
    resolve: bool = True,
) -> Settings:
    """Load, override from the environment and validate the configuration.

    Parameters
    ----------
    path
        A TOML file. ``None`` looks for ``$DICOMNODE_CONFIG`` then
        ``dicomnode.toml`` and falls back to built-in defaults.
    environ
        Environment to take ``DICOMNODE_*`` overrides from (default ``os.environ``).
    resolve
        Whether to look up the default locations when *path* is None.

    Raises
    ------
    ConfigError
        With a one-line message naming the bad key.
    """
    file = resolve_config_path(path) if resolve else (Path(path) if path else None)
    data: dict[str, Any] = {}
    if file is not None:
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{file}: no such file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    _apply_env(data, dict(os.environ if environ is None else environ))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None
