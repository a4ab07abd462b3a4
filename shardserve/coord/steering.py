"""Reuseport CPU steering: each connection goes to the listener of the CPU that got it.

A classic BPF program attached to the SO_REUSEPORT group returns the number of the
CPU that handled the SYN; the kernel uses it as the index of the listening socket
(``listen()`` order), so with shard i pinned to CPU i a connection stays on the CPU
whose softirq received it.  An index outside the group falls back to hashing.  It
must be attached after the group's last ``listen()``.  On real NICs, RSS/RPS and IRQ
affinity decide that CPU: align them with the pinning (docs/deployment.md).
"""

from __future__ import annotations

import ctypes
import socket

SO_ATTACH_REUSEPORT_CBPF = 51

_BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_BPF_RET_A = 0x16  # BPF_RET | BPF_A
_SKF_AD_CPU = 0xFFFFF000 + 36  # SKF_AD_OFF + SKF_AD_CPU


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def attach_cpu_steering(sock: socket.socket) -> None:
    """Attach ``ld cpu; ret a`` to the reuseport group ``sock`` belongs to."""
    program = (_SockFilter * 2)(
        _SockFilter(_BPF_LD_W_ABS, 0, 0, _SKF_AD_CPU),
        _SockFilter(_BPF_RET_A, 0, 0, 0),
    )
    fprog = _SockFprog(len(program), program)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(fprog))
