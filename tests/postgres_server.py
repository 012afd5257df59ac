"""A throwaway PostgreSQL server on a free loopback port (Debian's `postgresql` package; .ci/run installs it).

Password authentication (scram-sha-256) over TCP only, one database and owner per name given, so a test
connects with the URL a Kubernetes Secret would hold. PostgreSQL refuses to run as root: where the test
runs as root, the server runs as the package's ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if found:
        return Path(found[-1]).parent
    binary = shutil.which("postgres")
    return Path(binary).parent if binary else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def postgres_server(directory: Path, databases: dict[str, str]):
    """Yields host:port of a server where each ``{name: password}`` database is owned by a role ``name``."""
    bindir = _bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    directory.mkdir(parents=True, exist_ok=True)
    as_user: list[str] = []
    server_dir = directory
    if os.geteuid() == 0:  # pytest's tmp dirs are root-only: the server's files live in a dir of its own user
        user = pwd.getpwnam("postgres")
        server_dir = Path(tempfile.mkdtemp(prefix="storeflow-postgres-"))
        os.chown(server_dir, user.pw_uid, user.pw_gid)
        as_user = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    data, sockets = server_dir / "data", server_dir / "sockets"
    done = subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
                           "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    subprocess.run([*as_user, "mkdir", str(sockets)], check=True)
    port = _free_port()
    log = (directory / "postgres.log").open("w")
    proc = subprocess.Popen([*as_user, str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={sockets}",
                             "-c", "fsync=off", "-c", "max_connections=200"], stdout=log, stderr=subprocess.STDOUT)
    try:
        psql = [*as_user, str(bindir / "psql"), "-h", str(sockets), "-p", str(port), "-U", "postgres",
                "-v", "ON_ERROR_STOP=1", "-q"]
        deadline = time.monotonic() + 30
        while subprocess.run([*psql, "-c", "select 1"], capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("postgres did not start:\n" + (directory / "postgres.log").read_text()[-3000:])
            time.sleep(0.2)
        for name, password in databases.items():
            subprocess.run([*psql, "-c", f"CREATE ROLE {name} LOGIN PASSWORD '{password}'",
                            "-c", f"CREATE DATABASE {name} OWNER {name}"], check=True, capture_output=True)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if server_dir != directory:
            shutil.rmtree(server_dir, ignore_errors=True)
