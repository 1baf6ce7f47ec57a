"""
tests/e2e/servers.py - private MariaDB, Redis and dnsmasq servers for end-to-end tests.

Each server runs from Debian's own binaries on 127.0.0.1, on a port from free_port(), with its
data in the test's directory, and is started through a Procs (conftest.py), so it is killed at
teardown and its log is shown when a test fails. Nothing here touches a system instance.

    db = MariaDB(procs)             # db.port, db.query("SELECT 1"), db.stop(), db.start()
    r = Redis(procs)                # r.port, r.client() (python3-redis), r.stop(), r.start()
    dns = Dnsmasq(procs, {"pods.svc.test": ["127.0.0.2"]})  # dns.addr, dns.set_hosts({...})

stop()/start() keep the data directory and the port: a test can take a server away under load
and bring the same one back.
"""

import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import free_port, port_open, wait_for

MARIADBD = shutil.which("mariadbd", path="/usr/sbin:/usr/bin") or "/usr/sbin/mariadbd"
MARIADB_INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
DNSMASQ = shutil.which("dnsmasq", path="/usr/sbin:/usr/bin") or "/usr/sbin/dnsmasq"


def _need(binary, package):
    if not os.access(binary, os.X_OK):
        pytest.fail("%s not found: apt-get install %s (or run scripts/install-deps.sh)"
                    % (binary, package))


class MariaDB:
    """mariadbd with a fresh data directory; root without password on 127.0.0.1 only, and a
    database |database| created at first start."""

    def __init__(self, procs, name="mariadb", database="modelgate"):
        _need(MARIADBD, "mariadb-server")
        self.procs = procs
        self.name = name
        self.database = database
        self.user = "root"
        self.password = ""
        self.dir = os.path.join(procs.dir, name)
        self.datadir = os.path.join(self.dir, "data")
        self.socket = os.path.join(self.dir, "mysqld.sock")
        self.port = free_port()
        # its own temporary directory: the server's temporary tables are files there, and a
        # shared /tmp let one bootstrap fail on a vanished "#sql-temptable-*" file
        self.tmpdir = os.path.join(self.dir, "tmp")
        os.makedirs(self.tmpdir, exist_ok=True)
        r = subprocess.run([MARIADB_INSTALL_DB, "--no-defaults", "--datadir=" + self.datadir,
                            "--auth-root-authentication-method=normal", "--skip-test-db",
                            "--user=root", "--skip-name-resolve", "--tmpdir=" + self.tmpdir],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            pytest.fail("mariadb-install-db failed (%d):\n%s%s" % (r.returncode, r.stdout,
                                                                  r.stderr))
        self.proc = None
        self.start()
        self.query("CREATE DATABASE IF NOT EXISTS `%s`" % database, db=None)

    def start(self):
        argv = [MARIADBD, "--no-defaults", "--datadir=" + self.datadir, "--socket=" + self.socket,
                "--port=%d" % self.port, "--bind-address=127.0.0.1", "--user=root",
                "--skip-name-resolve", "--tmpdir=" + self.tmpdir, "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=16M", "--innodb-flush-log-at-trx-commit=2",
                "--pid-file=" + os.path.join(self.dir, "mysqld.pid"),
                "--log-error=" + os.path.join(self.dir, "error.log"), "--skip-log-bin"]
        self.proc = self.procs.spawn(self.name, argv)
        self.proc.extra_logs.append(os.path.join(self.dir, "error.log"))
        self.proc.wait_ready([self.port])
        wait_for(self._answers, 30, 0.1, "%s to answer queries" % self.name)

    def stop(self, sig=signal.SIGTERM):
        """Stops the server (SIGKILL: as a crash would) and waits until it is gone."""
        if self.proc and self.proc.alive():
            self.proc.signal(sig)
            if self.proc.wait(60) is None:
                self.proc.stop()
        wait_for(lambda: not port_open(self.port), 10, 0.05, "%s to close its port" % self.name)

    def _answers(self):
        try:
            self.query("SELECT 1", db=None)
            return True
        except Exception:
            return False

    def connect(self, db="default"):
        import pymysql
        return pymysql.connect(host="127.0.0.1", port=self.port, user=self.user,
                               password=self.password,
                               database=self.database if db == "default" else db,
                               autocommit=True, connect_timeout=5)

    def query(self, sql, args=None, db="default"):
        """Runs one statement; returns its rows (a list of tuples)."""
        conn = self.connect(db)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def conf(self):
        """The connection settings as the gateway's configuration spells them."""
        return {"host": "127.0.0.1", "port": self.port, "user": self.user,
                "database": self.database}


class Redis:
    """redis-server without persistence, on 127.0.0.1 only."""

    def __init__(self, procs, name="redis"):
        _need(REDIS_SERVER, "redis-server")
        self.procs = procs
        self.name = name
        self.dir = os.path.join(procs.dir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.proc = None
        self.start()

    def start(self):
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                "--save", "", "--appendonly", "no", "--protected-mode", "yes",
                "--daemonize", "no", "--loglevel", "warning"]
        self.proc = self.procs.spawn(self.name, argv)
        self.proc.wait_ready([self.port])

    def stop(self, sig=signal.SIGKILL):
        if self.proc and self.proc.alive():
            self.proc.signal(sig)
            self.proc.wait(10)
        wait_for(lambda: not port_open(self.port), 10, 0.05, "%s to close its port" % self.name)

    def client(self):
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)


class Dnsmasq:
    """dnsmasq as an authoritative-only resolver for the names given, on a UDP and TCP port of
    127.0.0.1 (no upstream servers, no /etc/hosts). set_hosts() rewrites its hosts file and
    makes it reload (SIGHUP), as a Kubernetes headless Service changes its A records."""

    def __init__(self, procs, hosts, name="dnsmasq", ttl=1, domains=None):
        _need(DNSMASQ, "dnsmasq")
        self.procs = procs
        self.name = name
        self.dir = os.path.join(procs.dir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.hosts_path = os.path.join(self.dir, "hosts")
        self.port = free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self._write(hosts)
        argv = [DNSMASQ, "--keep-in-foreground", "--no-daemon", "--conf-file=/dev/null",
                "--no-resolv", "--no-hosts", "--no-poll", "--addn-hosts=" + self.hosts_path,
                "--listen-address=127.0.0.1", "--bind-interfaces", "--port=%d" % self.port,
                "--local-ttl=%d" % ttl, "--cache-size=0", "--user=root",
                "--pid-file=" + os.path.join(self.dir, "dnsmasq.pid"), "--log-facility=-"]
        # authoritative for these domains: a name without records gets NXDOMAIN / no data, as
        # from a cluster's DNS, instead of REFUSED (dnsmasq has no upstream to ask)
        for d in sorted(domains or {n.split(".", 1)[1] for n in hosts if "." in n}):
            argv.append("--local=/%s/" % d)
        self.proc = procs.spawn(name, argv)
        self.proc.wait_ready([self.port])  # dnsmasq also answers DNS over TCP

    def _write(self, hosts):
        tmp = self.hosts_path + ".tmp"
        with open(tmp, "w") as f:
            for name, addrs in hosts.items():
                for a in addrs:
                    f.write("%s %s\n" % (a, name))
        os.replace(tmp, self.hosts_path)

    def set_hosts(self, hosts):
        self._write(hosts)
        self.proc.signal(signal.SIGHUP)
        time.sleep(0.05)  # dnsmasq re-reads the file on its next loop turn
