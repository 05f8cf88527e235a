"""Confine the current process before it touches untrusted bytes: what the kernel offers without root.

Each layer is detected at run time and applied when it is there; :func:`report`
says which are (the system check warns about the missing ones):

* resource limits (always): address space, CPU seconds, file size 0, no child
  processes, few open files, no core dumps;
* a network namespace of its own (``unshare``; a user namespace too when not
  root), so not even loopback reaches the server or Redis;
* Landlock (Linux 5.13+): files are readable only beneath the directories code
  is imported from, nothing is writable, and TCP bind/connect are denied
  (ABI 4+);
* seccomp (through libseccomp, ``pyseccomp``): no sockets, no exec, no fork or
  clone, no ptrace or kill, no opening files for writing, no namespace or
  mount changes.

Only Linux has these; elsewhere the resource limits that exist are applied.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
import struct
import sys
from dataclasses import dataclass, field

try:  # imported here, unconfined: finding libseccomp may run ldconfig, which no job may do
    import pyseccomp
except Exception:  # noqa: BLE001 - missing package or missing libseccomp.so
    pyseccomp = None

# Linux constants (the same on every architecture for these).
PR_SET_NO_NEW_PRIVS = 38
PR_SET_PDEATHSIG = 1
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

# Landlock: syscall numbers are shared by every architecture (added after the unified table).
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
ACCESS_FS_EXECUTE = 1 << 0
ACCESS_FS_READ_FILE = 1 << 2
ACCESS_FS_READ_DIR = 1 << 3
# Every filesystem right each ABI knows: handled (so denied) unless a rule grants it.
FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
ACCESS_NET_BIND_TCP = 1 << 0
ACCESS_NET_CONNECT_TCP = 1 << 1

SECCOMP_DENIED = (
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    "execve", "execveat", "fork", "vfork", "clone", "clone3", "ptrace", "process_vm_readv", "process_vm_writev",
    "kill", "tkill", "tgkill", "pidfd_open", "pidfd_send_signal", "pidfd_getfd",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "move_mount", "open_tree", "fsopen",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
    "init_module", "finit_module", "delete_module", "kexec_load", "reboot", "swapon", "swapoff", "syslog",
    "open_by_handle_at", "name_to_handle_at", "personality", "setuid", "setgid", "setreuid", "setregid",
    "setresuid", "setresgid", "setgroups", "creat", "unlink", "unlinkat", "rename", "renameat", "renameat2",
    "mkdir", "mkdirat", "rmdir", "symlink", "symlinkat", "link", "linkat", "chmod", "fchmod", "fchmodat",
    "chown", "fchown", "lchown", "fchownat", "truncate", "ftruncate", "mknod", "mknodat",
)
WRITE_FLAGS = (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC, os.O_APPEND)


@dataclass
class Limits:
    """What the confined process may use."""

    memory_bytes: int
    cpu_seconds: int
    open_files: int = 64


@dataclass
class Report:
    """Which layers are in force (or, from :func:`report`, available)."""

    rlimits: bool = False
    network_namespace: bool = False
    landlock: int = 0  # the ABI version, 0 when missing
    seccomp: bool = False
    problems: list[str] = field(default_factory=list)

    def missing(self) -> list[str]:
        names = []
        if not self.network_namespace:
            names.append("a network namespace")
        if not self.landlock:
            names.append("Landlock")
        if not self.seccomp:
            names.append("seccomp")
        return names


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def landlock_abi() -> int:
    """The Landlock ABI version the kernel offers (0: none, or not Linux)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        version = _libc().syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                                  ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(int(version), 0)


def seccomp_available() -> bool:
    if pyseccomp is None:
        return False
    try:
        pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    except Exception:  # missing package or missing libseccomp.so
        return False
    return True


def _unshare_network(libc) -> bool:
    """A network namespace of our own (with a user namespace when not root)."""
    flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
    return libc.unshare(ctypes.c_int(flags)) == 0


def _landlock(libc, abi: int, readable: list[str]) -> bool:
    fs_rights = FS_RIGHTS_BY_ABI.get(abi, FS_RIGHTS_BY_ABI[5])
    if abi >= 4:
        attr = struct.pack("QQ", fs_rights, ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP)
    else:
        attr = struct.pack("Q", fs_rights)
    attr_buffer = ctypes.create_string_buffer(attr, len(attr))
    ruleset = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, attr_buffer, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    if ruleset < 0:
        return False
    try:
        read_rights = ACCESS_FS_EXECUTE | ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR
        for path in readable:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                rights = read_rights if os.path.isdir(path) else ACCESS_FS_EXECUTE | ACCESS_FS_READ_FILE
                rule = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd), 12)
                libc.syscall(SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                             rule, ctypes.c_uint32(0))
            finally:
                os.close(fd)
        return libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) == 0
    finally:
        os.close(ruleset)


def _seccomp() -> bool:
    if pyseccomp is None:
        return False
    try:
        denied = pyseccomp.ERRNO(errno.EPERM)
        rules = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
        for name in SECCOMP_DENIED:
            try:
                rules.add_rule(denied, name)
            except (OSError, ValueError):  # a syscall this architecture does not have
                continue
        for name, flags_arg in (("open", 1), ("openat", 2), ("openat2", 2)):
            for flag in WRITE_FLAGS:
                try:
                    rules.add_rule(denied, name, pyseccomp.Arg(flags_arg, pyseccomp.MASKED_EQ, flag, flag))
                except (OSError, ValueError):
                    continue
        rules.load()
    except Exception:  # libseccomp missing or refusing: the other layers still hold
        return False
    return True


def set_rlimits(limits: Limits) -> None:
    """Resource limits; each one only lowers what the process may use."""
    def lower(kind: int, value: int) -> None:
        soft, hard = resource.getrlimit(kind)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(kind, (value, value))

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writing a file fails with EFBIG instead of killing us
    lower(resource.RLIMIT_CORE, 0)
    lower(resource.RLIMIT_FSIZE, 0)
    lower(resource.RLIMIT_NOFILE, limits.open_files)
    lower(resource.RLIMIT_CPU, limits.cpu_seconds)
    if hasattr(resource, "RLIMIT_NPROC"):
        lower(resource.RLIMIT_NPROC, 0)
    if hasattr(resource, "RLIMIT_AS"):
        lower(resource.RLIMIT_AS, limits.memory_bytes)


def confine(limits: Limits, readable: list[str]) -> Report:
    """Apply every layer available, in the order that keeps each one possible; say what holds."""
    report = Report()
    if sys.platform.startswith("linux"):
        libc = _libc()
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the process that started us
        report.network_namespace = _unshare_network(libc)
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        abi = landlock_abi()
        if abi and _landlock(libc, abi, readable):
            report.landlock = abi
    set_rlimits(limits)
    report.rlimits = True
    if sys.platform.startswith("linux"):
        report.seccomp = _seccomp()
    return report


def report() -> Report:
    """Which layers this machine offers, found by trying them in a throw-away child process."""
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return Report(rlimits=True)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.close(read_end)
            libc = _libc()
            found = (
                int(_unshare_network(libc)), landlock_abi(), int(seccomp_available()),
            )
            os.write(write_end, struct.pack("iii", *found))
        finally:
            os._exit(0)
    os.close(write_end)
    data = os.read(read_end, 12)
    os.close(read_end)
    os.waitpid(pid, 0)
    if len(data) != 12:
        return Report(rlimits=True)
    network, landlock, seccomp = struct.unpack("iii", data)
    return Report(rlimits=True, network_namespace=bool(network), landlock=landlock, seccomp=bool(seccomp))
