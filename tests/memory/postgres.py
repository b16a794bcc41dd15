"""A throw-away PostgreSQL server from Debian's packages: initdb into a temporary directory, unix socket only."""

from __future__ import annotations

import glob
import os
import pwd
import subprocess
from pathlib import Path


def find_bin_dir() -> Path | None:
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    return Path(dirs[-1]) if dirs and Path(dirs[-1], "initdb").exists() else None


def unavailable() -> str:
    """Why no PostgreSQL server can be started here, or "" (scripts/env.sh installs Debian's package)."""
    if find_bin_dir() is None:
        return "no /usr/lib/postgresql/*/bin/initdb: apt-get install postgresql (scripts/test.sh does)"
    return ""


class PostgresServer:
    """initdb + pg_ctl start in `root`; `url` connects over the unix socket in `root` (listen_addresses='')."""

    def __init__(self, root: Path) -> None:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise RuntimeError("no PostgreSQL binaries under /usr/lib/postgresql/*/bin")
        self.bin = bin_dir
        self.root = root
        self.data = root / "data"
        self.sock = root / "sock"
        self.sock.mkdir(parents=True)
        # PostgreSQL refuses to run as root: run it as the 'postgres' user Debian creates, or 'nobody'.
        self.user = "postgres" if _has_user("postgres") else "nobody"
        if os.geteuid() == 0:
            pw = pwd.getpwnam(self.user)
            for p in (root, self.sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "omni", "-A", "trust", "--no-sync",
                   "-E", "UTF8"])
        self._run([
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-l", str(root / "log"),
            "-o", f"-c listen_addresses='' -k {self.sock} -c fsync=off", "start",
        ])
        self.url = f"postgresql://omni@/postgres?host={self.sock}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://omni@/{name}?host={self.sock}"

    def stop(self) -> None:
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"])

    def _run(self, cmd: list[str]) -> None:
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            log = (self.root / "log").read_text() if (self.root / "log").exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr}{r.stdout}{log[-2000:]}")


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
