"""A real PostgreSQL server on loopback, for tests and for ``python -m sweeps.stack up``.

Uses the distribution's server binaries (Debian: ``apt-get install postgresql``).
PostgreSQL refuses to run as root, so when we are root the server runs as the
``postgres`` OS user (``setpriv``, falling back to ``runuser``) and its
directories are handed to that user.

Administration (roles, databases) goes through a Unix socket in a private
0700 directory with ``trust`` auth: only the server's OS user and root can reach
it. TCP on 127.0.0.1 requires the application user's password (scram-sha-256).
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from sweeps import names
from sweeps.secrets import mask_url
from sweeps.stack._process import ServerStartError, free_port, tail, terminate_tree, wait_until

__all__ = ["PostgresServer", "find_pg_bin_dir"]

PG_BIN_ENV = names.ENV_PG_BIN
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def find_pg_bin_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Directory holding ``initdb`` and ``postgres``.

    Order: ``explicit``, ``$SIAMESE_SWEEP_PG_BIN``, the resolved ``initdb`` on PATH,
    then the newest ``/usr/lib/postgresql/*/bin`` (Debian keeps them off PATH).
    """
    candidates: list[Path] = []
    for value in (explicit, os.environ.get(PG_BIN_ENV)):
        if value:
            candidates.append(Path(value))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)

    def version_key(p: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", Path(p).parent.name) or [0])

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True)]
    for d in candidates:
        if (d / "initdb").is_file() and (d / "postgres").is_file():
            return d
    raise FileNotFoundError(
        f"PostgreSQL server binaries (initdb, postgres) not found; install them "
        f"(Debian/Ubuntu: apt-get install postgresql) or set {PG_BIN_ENV} to their directory"
    )


def _validate_ident(kind: str, name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"Expected a lowercase SQL identifier for {kind}, received: {kind}={name!r}")
    return name


class PostgresServer:
    """Start/stop one PostgreSQL cluster with an application user and database.

    ``base_dir=None`` makes a throwaway cluster in a temporary directory that
    :meth:`stop` deletes. With a ``base_dir`` the cluster persists there and is
    reused by the next start (role password and databases are re-asserted).
    """

    def __init__(
        self,
        *,
        user: str = "sweeps",
        password: str | None = None,
        database: str = "sweeps",
        host: str = "127.0.0.1",
        port: int | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        os_user: str | None = None,
        bin_dir: str | os.PathLike[str] | None = None,
        fsync: bool = True,
        settings: dict[str, str] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.user = _validate_ident("user", user)
        self.database = _validate_ident("database", database)
        self.password = password if password is not None else secrets.token_urlsafe(18)
        self.host = host
        self.port = port or 0
        self._base_dir = Path(base_dir).resolve() if base_dir is not None else None
        self._owns_base_dir = base_dir is None
        self.bin_dir = find_pg_bin_dir(bin_dir)
        self.os_user = os_user if os_user is not None else ("postgres" if os.geteuid() == 0 else None)
        self.settings = {"fsync": "on" if fsync else "off", **(settings or {})}
        if not fsync:
            self.settings.setdefault("synchronous_commit", "off")
            self.settings.setdefault("full_page_writes", "off")
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock_dir: Path | None = None
        self.startup_seconds: float | None = None

    # ---------------------------------------------------------------- paths / urls
    @property
    def base_dir(self) -> Path:
        if self._base_dir is None:
            raise RuntimeError("PostgresServer has not been started")
        return self._base_dir

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "postgres.log"

    def url_for(self, database: str, *, driver: str = "psycopg2", user: str | None = None,
                password: str | None = None) -> str:
        """SQLAlchemy URL for ``database`` as `user` (default: the application user), password included."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        pw = quote(self.password if password is None else password, safe="")
        return f"{scheme}://{quote(user or self.user, safe='')}:{pw}@{self.host}:{self.port}/{database}"

    @property
    def url(self) -> str:
        """``postgresql+psycopg2://user:pw@127.0.0.1:PORT/db`` (contains the password)."""
        return self.url_for(self.database)

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"PostgresServer({self.masked_url if self.port else '<not started>'}, {state})"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid (``setpriv`` execs it, so it is the child's own)."""
        return self._proc.pid if self._proc is not None else None

    # ---------------------------------------------------------------- lifecycle
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> PostgresServer:
        if self.is_running():
            return self
        if self._base_dir is None:
            self._base_dir = Path(tempfile.mkdtemp(prefix="sweeps-pg-"))
        self.base_dir.mkdir(parents=True, exist_ok=True)
        # The socket path must stay under ~107 bytes, so it gets its own short temp dir.
        self._sock_dir = Path(tempfile.mkdtemp(prefix="pgsock-"))
        try:
            self._hand_over(self.base_dir, self._sock_dir)
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb()
            if not self.port:
                self.port = free_port(self.host)
            self._launch()
            self._bootstrap()
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)  # don't leak a server if the caller forgets stop()
        return self

    def stop(self) -> None:
        """Fast shutdown (SIGINT: abort transactions, checkpoint), then clean up."""
        self._terminate()
        if self._owns_base_dir and self._base_dir is not None:
            shutil.rmtree(self._base_dir, ignore_errors=True)
            self._base_dir = None

    def restart(self, *, down_s: float = 0.0) -> PostgresServer:
        """Shut down and start again after `down_s` seconds: same port, data, role and password (an outage for
        tests)."""
        self._terminate()
        if down_s > 0:
            time.sleep(down_s)
        return self.start()

    def _terminate(self) -> None:
        atexit.unregister(self.stop)
        if self._proc is not None:
            # setpriv execs, so the Popen pid is the postmaster itself.
            terminate_tree(self._proc, first_signal=signal.SIGINT, signal_group=False, timeout=30.0)
            self._proc = None
        if self._sock_dir is not None:
            shutil.rmtree(self._sock_dir, ignore_errors=True)
            self._sock_dir = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------- databases
    def connect_admin(self, database: str = "postgres"):  # -> psycopg2 connection
        """Superuser connection over the private Unix socket (autocommit)."""
        import psycopg2

        if self._sock_dir is None:
            raise RuntimeError("PostgresServer is not running")
        conn = psycopg2.connect(
            host=str(self._sock_dir), port=self.port, user="postgres", dbname=database, connect_timeout=5
        )
        conn.autocommit = True
        return conn

    def create_database(self, name: str, *, owner: str | None = None) -> str:
        """Create ``name`` owned by `owner` (default: the application user) if missing; return its URL for the
        application user.

        Only the owner may connect: ``CONNECT`` is revoked from ``PUBLIC``, so the role of one database (say,
        the workers' Optuna role) cannot even open another (MLflow's auth database with its password hashes).
        """
        from psycopg2 import sql

        _validate_ident("database", name)
        owner = _validate_ident("owner", owner or self.user)
        conn = self.connect_admin()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name),
                                                                              sql.Identifier(owner)))
                cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))
                cur.execute(sql.SQL("GRANT ALL ON DATABASE {} TO {}").format(sql.Identifier(name),
                                                                             sql.Identifier(owner)))
        finally:
            conn.close()
        return self.url_for(name)

    def create_role(self, name: str, password: str, *, database: str | None = None) -> str:
        """Create (or re-password) a login role; with `database`, also create that database owned by it.

        Returns the URL of `database` (or of the application database) as that role.
        """
        from psycopg2 import sql

        _validate_ident("role", name)
        conn = self.connect_admin()
        try:
            with conn.cursor() as cur:
                cur.execute("SET log_min_error_statement = 'panic'")  # never echo a password into the server log
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
                verb = "ALTER" if cur.fetchone() else "CREATE"
                cur.execute(sql.SQL(verb + " ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}")
                            .format(sql.Identifier(name), sql.Literal(password)))
        finally:
            conn.close()
        if database is not None:
            self.create_database(database, owner=name)
        return self.url_for(database or self.database, user=name, password=password)

    # ---------------------------------------------------------------- internals
    def _run_as(self, argv: list[str]) -> list[str]:
        """Prefix ``argv`` so it runs as ``os_user`` (no-op when not root)."""
        if self.os_user is None or os.geteuid() != 0:
            return argv
        try:
            pw = pwd.getpwnam(self.os_user)
        except KeyError:
            raise ServerStartError(
                f"PostgreSQL cannot run as root and OS user {self.os_user!r} does not exist; "
                "install the postgresql package (it creates 'postgres') or pass os_user=..."
            ) from None
        if shutil.which("setpriv"):
            return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--", *argv]
        return ["runuser", "-u", self.os_user, "--", *argv]

    def _child_env(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        env["HOME"] = str(self.base_dir)
        return env

    def _hand_over(self, *dirs: Path) -> None:
        """Give our directories to the server's OS user and check it can reach them."""
        for d in dirs:
            os.chmod(d, 0o700)
            if self.os_user is not None and os.geteuid() == 0:
                pw = pwd.getpwnam(self.os_user)
                for root, _subdirs, files in os.walk(d):
                    os.chown(root, pw.pw_uid, pw.pw_gid)
                    for f in files:
                        os.chown(os.path.join(root, f), pw.pw_uid, pw.pw_gid)
        if self.os_user is not None and os.geteuid() == 0:
            for d in dirs:
                probe = subprocess.run(self._run_as(["test", "-w", str(d), "-a", "-x", str(d)]), check=False)
                if probe.returncode != 0:
                    raise ServerStartError(
                        f"OS user {self.os_user!r} cannot reach {d}: a parent directory is not "
                        "traversable (e.g. pytest's 0700 tmp dirs); choose a base_dir under /tmp or /srv"
                    )

    def _initdb(self) -> None:
        argv = [
            str(self.bin_dir / "initdb"),
            "-D", str(self.data_dir),
            "-U", "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E", "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            res = subprocess.run(
                self._run_as(argv), stdout=log, stderr=subprocess.STDOUT, cwd=self.base_dir, env=self._child_env()
            )
        if res.returncode != 0:
            raise ServerStartError(f"initdb failed (exit {res.returncode}):\n{tail(self.log_path)}")

    def _launch(self) -> None:
        assert self._sock_dir is not None
        argv = [
            str(self.bin_dir / "postgres"),
            "-D", str(self.data_dir),
            "-h", self.host,
            "-p", str(self.port),
            "-k", str(self._sock_dir),
        ]  # fmt: skip
        for key, value in self.settings.items():
            argv += ["-c", f"{key}={value}"]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._run_as(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.base_dir,
                env=self._child_env(),
                start_new_session=True,
            )
        self.startup_seconds = wait_until(
            self._accepts_admin,
            timeout=self.startup_timeout,
            proc=self._proc,
            what="PostgreSQL",
            log_path=self.log_path,
        )

    def _accepts_admin(self) -> bool:
        import psycopg2

        try:
            self.connect_admin().close()
        except psycopg2.OperationalError:
            return False
        return True

    def _bootstrap(self) -> None:
        """Create (or re-password) the application role and its database; only owners connect to databases."""
        from psycopg2 import sql

        self.create_role(self.user, self.password, database=self.database)
        conn = self.connect_admin()
        try:
            with conn.cursor() as cur:  # the maintenance database is for the superuser only
                cur.execute(sql.SQL("REVOKE CONNECT ON DATABASE postgres FROM PUBLIC"))
        finally:
            conn.close()
        self._check_tcp_login()

    def _check_tcp_login(self) -> None:
        import psycopg2

        try:
            psycopg2.connect(
                host=self.host, port=self.port, user=self.user, password=self.password,
                dbname=self.database, connect_timeout=5,
            ).close()  # fmt: skip
        except psycopg2.OperationalError as e:
            from sweeps.secrets import mask_secrets

            raise ServerStartError(f"PostgreSQL is up but password login failed: {mask_secrets(str(e))}") from None
