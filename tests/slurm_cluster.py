"""A real single-node Slurm cluster on localhost for tests (munged, MariaDB, slurmdbd, slurmctld, slurmd).

Everything lives in one temporary folder (keys, configs, state, spool, logs, MariaDB data) and
every daemon is started in the foreground as a child of this process, in its own session, so
`stop()` can end each one by PID (and its process group) and leave nothing behind. Settings are
the ones measured to work on these machines (DESIGN.md, "Slurm, Hydra launchers, browser"):
proctrack/linuxproc, task/none, select/cons_tres, node = `hostname -s`, no cgroups, and real
accounting through slurmdbd because submitit polls `sacct` (without it a hard-killed job is
waited for forever).

Clients (sbatch, squeue, sacct, scancel, and so submitit) find the cluster through the
`SLURM_CONF` environment variable, which `SlurmCluster.env()` / the pytest fixture set.

Ports are picked free at start, so a developer's own Slurm on the default ports is untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETUP_SCRIPT = REPO / ".ci" / "slurm-setup.sh"
BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "sacctmgr", "sinfo")
CLUSTER_NAME = "lungbench"


class ClusterError(RuntimeError):
    """The cluster could not be started; the message names the daemon and ends with its log."""


def _which(name: str) -> str | None:
    # Daemons live in /usr/sbin, which a non-root PATH often lacks.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def _mariadb_binaries() -> tuple[str | None, str | None]:
    server = _which("mariadbd") or _which("mysqld")
    install = _which("mariadb-install-db") or _which("mysql_install_db")
    return server, install


def missing_binaries() -> list[str]:
    """Names of the programs the cluster needs that are not installed."""
    missing = [b for b in BINARIES if _which(b) is None]
    server, install = _mariadb_binaries()
    if server is None or install is None:
        missing.append("mariadbd/mariadb-install-db")
    return missing


def ensure_installed() -> None:
    """Run `.ci/slurm-setup.sh` when a binary is missing; raise ClusterError if that cannot help."""
    if not missing_binaries():
        return
    proc = subprocess.run(["bash", str(SETUP_SCRIPT)], capture_output=True, text=True)
    still = missing_binaries()
    if proc.returncode != 0 or still:
        raise ClusterError(
            f"{SETUP_SCRIPT.name} could not install {', '.join(still) or 'the packages'} "
            f"(exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-800:]}"
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _mem_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise ClusterError("cannot read MemTotal from /proc/meminfo")


class SlurmCluster:
    """One single-node cluster under `root`; use as a context manager or call start()/stop()."""

    def __init__(self, root: Path | None = None, cpus: int | None = None) -> None:
        # A short path: munge's unix socket path must stay under ~100 characters.
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="lbslurm-", dir="/tmp"))
        self._own_root = root is None
        self.host = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 1
        # Leave the OS some room; Slurm refuses --mem above RealMemory.
        self.real_memory_mb = int(_mem_total_mb() * 0.9)
        self.partition = "debug"
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "etc" / "slurm.conf"

    # ------------------------------------------------------------------ config
    def _write_configs(self) -> None:
        r = self.root
        for d in ("etc", "munge", "state", "spool", "log", "run", "mysql-tmp"):
            (r / d).mkdir(parents=True, exist_ok=True)
            (r / d).chmod(0o700)
        self.ports = {name: _free_port() for name in ("mysql", "dbd", "ctld", "slurmd")}
        self.munge_socket = r / "munge" / "munge.socket.2"
        user = _current_user()
        auth = f"AuthType=auth/munge\nAuthInfo=socket={self.munge_socket}\n"
        self.conf.write_text(
            f"ClusterName={CLUSTER_NAME}\n"
            f"SlurmctldHost={self.host}(127.0.0.1)\n"
            f"SlurmUser={user}\nSlurmdUser={user}\n"
            f"SlurmctldPort={self.ports['ctld']}\nSlurmdPort={self.ports['slurmd']}\n"
            f"{auth}"
            f"StateSaveLocation={r / 'state'}\nSlurmdSpoolDir={r / 'spool'}\n"
            f"SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}\nSlurmdPidFile={r / 'run' / 'slurmd.pid'}\n"
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}\nSlurmdLogFile={r / 'log' / 'slurmd.log'}\n"
            # No cgroups here: the settings measured to work in containers and on plain VMs.
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core_Memory\n"
            "JobAcctGatherType=jobacct_gather/none\nMpiDefault=none\nReturnToService=2\n"
            "MailProg=/bin/true\nSlurmctldTimeout=30\nSlurmdTimeout=30\nInactiveLimit=0\nKillWait=5\n"
            "AccountingStorageType=accounting_storage/slurmdbd\n"
            f"AccountingStorageHost=127.0.0.1\nAccountingStoragePort={self.ports['dbd']}\n"
            # For connections to slurmdbd the munge socket is named here, not by AuthInfo.
            f"AccountingStoragePass={self.munge_socket}\n"
            "JobCompType=jobcomp/none\n"
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} "
            f"RealMemory={self.real_memory_mb} State=UNKNOWN\n"
            f"PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n"
        )
        dbd = r / "etc" / "slurmdbd.conf"
        dbd.write_text(
            f"{auth}DbdHost=localhost\nDbdAddr=127.0.0.1\nDbdPort={self.ports['dbd']}\n"
            f"SlurmUser={user}\nPidFile={r / 'run' / 'slurmdbd.pid'}\nLogFile={r / 'log' / 'slurmdbd.log'}\n"
            "StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\n"
            f"StoragePort={self.ports['mysql']}\nStorageUser={user}\nStorageLoc=slurm_acct_db\n"
        )
        dbd.chmod(0o600)  # slurmdbd refuses a config readable by others

    def env(self) -> dict[str, str]:
        """Environment for Slurm clients (and submitit) to talk to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    # ------------------------------------------------------------------ start / stop
    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.root / "log" / f"{name}.out", "ab")
        # Own session: stop() can signal the daemon's whole process group.
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=self.env(), cwd=self.root, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def _log_tail(self, name: str, n: int = 15) -> str:
        texts = []
        for f in sorted((self.root / "log").glob(f"{name}*")):
            with contextlib.suppress(OSError):
                lines = f.read_text(errors="replace").splitlines()[-n:]
                texts.append(f"--- {f.name}\n" + "\n".join(lines))
        return "\n".join(texts) or "(no log)"

    def _wait(self, name: str, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise ClusterError(f"{name} exited with {proc.returncode} before {what}\n{self._log_tail(name)}")
            time.sleep(0.1)
        raise ClusterError(f"{name}: no {what} after {timeout:.0f} s\n{self._log_tail(name)}")

    def _run(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=self.env(), capture_output=True, text=True, timeout=timeout)

    def node_state(self) -> str:
        p = self._run([_which("sinfo") or "sinfo", "-h", "-N", "-o", "%t"], timeout=10)
        return p.stdout.strip() if p.returncode == 0 else f"sinfo failed: {p.stderr.strip()}"

    def start(self, timeout: float = 60) -> SlurmCluster:
        """Start all daemons and wait until the node is idle; on failure stop what started and raise."""
        try:
            self._start(timeout)
        except BaseException:
            self.stop(remove=False)
            raise
        return self

    def _start(self, timeout: float) -> None:
        self._write_configs()
        r, user = self.root, _current_user()
        # munge: a fresh key, socket and seed under root.
        key = r / "munge" / "munge.key"
        p = subprocess.run([_which("mungekey"), "-c", "-k", str(key)], capture_output=True, text=True)
        if p.returncode != 0:
            raise ClusterError(f"mungekey failed: {p.stderr.strip()}")
        key.chmod(0o600)
        self._spawn("munged", [_which("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={r / 'run' / 'munged.pid'}",
                               f"--seed-file={r / 'munge' / 'munged.seed'}",
                               f"--log-file={r / 'log' / 'munged.log'}"])
        self._wait("munged", self.munge_socket.exists, timeout, "munge socket")

        # MariaDB for slurmdbd: private data dir, TCP on 127.0.0.1 only, no grant tables (test-only DB).
        server, install = _mariadb_binaries()
        data = r / "mysql"
        p = subprocess.run([install, "--no-defaults", f"--datadir={data}", f"--user={user}",
                            "--auth-root-authentication-method=normal", "--skip-test-db"],
                           capture_output=True, text=True, cwd=r)
        if p.returncode != 0:
            raise ClusterError(f"{Path(install).name} failed: {(p.stderr or p.stdout).strip()[-800:]}")
        self._spawn("mariadbd", [server, "--no-defaults", f"--datadir={data}", f"--user={user}",
                                 f"--socket={r / 'run' / 'mysqld.sock'}", f"--port={self.ports['mysql']}",
                                 "--bind-address=127.0.0.1", "--skip-grant-tables", "--skip-name-resolve",
                                 f"--pid-file={r / 'run' / 'mysqld.pid'}", f"--tmpdir={r / 'mysql-tmp'}",
                                 f"--log-error={r / 'log' / 'mariadbd.log'}",
                                 "--innodb-buffer-pool-size=32M", "--skip-log-bin"])
        self._wait("mariadbd", lambda: _port_open(self.ports["mysql"]), timeout, "MariaDB port")

        self._spawn("slurmdbd", [_which("slurmdbd"), "-D"])
        self._wait("slurmdbd", lambda: _port_open(self.ports["dbd"]), timeout, "slurmdbd port")
        deadline = time.monotonic() + timeout
        while True:  # slurmdbd creates its tables first; retry until it answers
            p = self._run([_which("sacctmgr"), "-i", "add", "cluster", CLUSTER_NAME])
            if p.returncode == 0 or "already exists" in (p.stdout + p.stderr).lower():
                break
            if time.monotonic() > deadline:
                raise ClusterError(f"sacctmgr add cluster failed: {(p.stderr or p.stdout).strip()}\n"
                                   f"{self._log_tail('slurmdbd')}")
            time.sleep(0.3)

        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-c", "-i"])
        self._wait("slurmctld", lambda: _port_open(self.ports["ctld"]), timeout, "slurmctld port")
        self._spawn("slurmd", [_which("slurmd"), "-D", "-N", self.host])
        self._wait("slurmd", lambda: self.node_state() == "idle", timeout, "idle node")

    def stop(self, remove: bool = True) -> None:
        """Cancel jobs, then stop every daemon by PID (TERM, then KILL), newest first; remove the folder."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            with contextlib.suppress(Exception):
                self._run([_which("scancel") or "scancel", "--full", "-u", _current_user()], timeout=10)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    q = self._run([_which("squeue") or "squeue", "-h"], timeout=10)
                    if q.returncode != 0 or not q.stdout.strip():
                        break
                    time.sleep(0.3)
        for name in reversed(list(self.procs)):
            _terminate(self.procs[name])
        self.procs.clear()
        if remove and self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values()]

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _terminate(proc: subprocess.Popen, grace: float = 10) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # the daemon is its group's leader (own session)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    # Children that outlived the leader (e.g. a slurmstepd) still carry the group id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def _serving(cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """Yield ``cluster`` with SLURM_CONF exported; restore SLURM_CONF and stop it afterwards."""
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        cluster.stop()


@contextlib.contextmanager
def running_cluster(timeout: float = 60) -> Iterator[SlurmCluster]:
    """Install if needed, start, yield with SLURM_CONF exported, stop. Raises ClusterError."""
    ensure_installed()
    with _serving(SlurmCluster().start(timeout)) as cluster:
        yield cluster


# ----------------------------------------------------------------------------- pytest fixture
try:
    import pytest
except ImportError:  # the module is also usable without pytest (e.g. by hand)
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def slurm_cluster() -> Iterator[SlurmCluster]:
        """A running single-node cluster for the session (SLURM_CONF exported), stopped at the end.

        Skips, with the reason, where the cluster cannot start (packages not installable, daemons
        refusing to run); with LUNGBENCH_REQUIRE_SLURM=1 (CI) that is a failure instead.
        """
        try:
            ensure_installed()
            cluster = SlurmCluster().start()
        except (ClusterError, OSError, subprocess.SubprocessError) as e:
            msg = f"single-node Slurm cannot start here: {e}"
            if os.environ.get("LUNGBENCH_REQUIRE_SLURM") == "1":
                pytest.fail(msg)
            pytest.skip(msg)
        pids = cluster.pids()
        with _serving(cluster):
            yield cluster
        alive = [p for p in pids if Path(f"/proc/{p}").exists()]
        assert not alive, f"Slurm test daemons left running: {alive}"
        assert not cluster.root.exists(), f"{cluster.root} not removed"
