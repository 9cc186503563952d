"""A private pgbouncer in transaction-pooling mode in front of a `PostgresServer` (tests, benchmarks).

Transaction pooling is the mode that breaks session state: each transaction may run on a different
server connection. Workers reach the database through it exactly as through PostgreSQL (same user,
password and database names, another port). Uses the distribution's binary (Debian: ``apt-get install
pgbouncer``); its packaged service is not used. pgbouncer refuses to run as root, so as root it runs as
the PostgreSQL server's OS user.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from sweeps.stack._process import free_port, terminate_tree, wait_until
from sweeps.stack.postgres import PostgresServer

__all__ = ["PgBouncer", "find_pgbouncer"]


def find_pgbouncer() -> Path:
    """The ``pgbouncer`` binary (PATH, then Debian's /usr/sbin)."""
    found = shutil.which("pgbouncer") or next((p for p in ("/usr/sbin/pgbouncer",) if Path(p).is_file()), None)
    if found is None:
        raise FileNotFoundError("pgbouncer not found; install it (Debian/Ubuntu: apt-get install pgbouncer)")
    return Path(found)


class PgBouncer:
    """Start/stop one pgbouncer (``pool_mode``, default ``transaction``) for the application user of `pg`."""

    def __init__(self, pg: PostgresServer, *, pool_mode: str = "transaction", pool_size: int = 20,
                 max_client_conn: int = 200, query_wait_timeout: int = 120, host: str = "127.0.0.1") -> None:
        self.pg = pg
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.max_client_conn = max_client_conn
        self.query_wait_timeout = query_wait_timeout  # seconds a client may wait for a server connection
        self.host = host
        self.port = 0
        self.binary = find_pgbouncer()
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        if self._dir is None:
            raise RuntimeError("PgBouncer has not been started")
        return self._dir / "pgbouncer.log"

    def url_for(self, database: str, *, driver: str = "psycopg2") -> str:
        """SQLAlchemy URL of `database` through pgbouncer, as the application user (password included)."""
        pw = quote(self.pg.password, safe="")
        return f"postgresql+{driver}://{quote(self.pg.user, safe='')}:{pw}@{self.host}:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_for(self.pg.database)

    def __repr__(self) -> str:
        return f"PgBouncer({self.host}:{self.port}, pool_mode={self.pool_mode})"

    def _owner(self) -> pwd.struct_passwd | None:
        return pwd.getpwnam(self.pg.os_user) if os.geteuid() == 0 and self.pg.os_user else None

    def start(self) -> PgBouncer:
        if self._proc is not None and self._proc.poll() is None:
            return self
        self._dir = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
        self.port = self.port or free_port(self.host)
        # the auth file holds the plain password so pgbouncer can do SCRAM both to clients and to PostgreSQL
        (self._dir / "userlist.txt").write_text(f'"{self.pg.user}" "{self.pg.password}"\n')
        (self._dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={self.pg.host} port={self.pg.port}\n"
            "[pgbouncer]\n"
            f"listen_addr = {self.host}\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = scram-sha-256\nauth_file = {self._dir / 'userlist.txt'}\n"
            f"pool_mode = {self.pool_mode}\ndefault_pool_size = {self.pool_size}\n"
            f"max_client_conn = {self.max_client_conn}\nquery_wait_timeout = {self.query_wait_timeout}\n"
            f"logfile = {self._dir / 'pgbouncer.log'}\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
        )
        owner = self._owner()
        argv = [str(self.binary), str(self._dir / "pgbouncer.ini")]
        if owner is not None:
            for path in (self._dir, *self._dir.iterdir()):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            argv = ["setpriv", f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}", "--init-groups", "--", *argv]
        os.chmod(self._dir, 0o700)
        (self._dir / "userlist.txt").chmod(0o600)
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_until(self._accepts_login, timeout=30.0, proc=self._proc, what="pgbouncer", log_path=self.log_path)
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)
        return self

    def _accepts_login(self) -> bool:
        import psycopg2

        try:
            psycopg2.connect(host=self.host, port=self.port, user=self.pg.user, password=self.pg.password,
                             dbname=self.pg.database, connect_timeout=5).close()
        except psycopg2.OperationalError:
            return False
        return True

    def stop(self) -> None:
        atexit.unregister(self.stop)
        if self._proc is not None:
            terminate_tree(self._proc, first_signal=signal.SIGINT, signal_group=False, timeout=10.0)
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


