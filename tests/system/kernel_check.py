# Runs in a notebook kernel started by the service's Jupyter, i.e. inside the unit's sandbox: what
# users' code commonly does, each line a reason the hardening keeps or drops a setting.
import ctypes
import multiprocessing
import os
import socket
from pathlib import Path

import cffi
import matplotlib
import numpy
import psutil

print("numpy", float(numpy.linalg.inv(numpy.eye(3) * 2).sum()))
print("ctypes callback", ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)(41))
ffi = cffi.FFI()
print("cffi callback", ffi.callback("int(int)", lambda x: x + 1)(41))  # needs W+X memory
with multiprocessing.Pool(2) as pool:  # POSIX semaphores in /dev/shm
    print("multiprocessing", sum(pool.map(abs, range(-3, 3))))
os.sched_setaffinity(0, os.sched_getaffinity(0))  # @resources
print("psutil", psutil.virtual_memory().total > 0, psutil.cpu_count() > 0)  # /proc/meminfo, /proc/stat
print("addrinfo", socket.getaddrinfo("localhost", 80, flags=socket.AI_ADDRCONFIG)[0][4][0])  # netlink
home = Path.home()
(home / ".cache").mkdir(exist_ok=True)
print("home", home, os.access(home / ".cache", os.W_OK))
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

plt.plot([1, 2])
plt.savefig("/tmp/plot.png")  # PrivateTmp
print("matplotlib", Path("/tmp/plot.png").stat().st_size > 0)
print("user", os.getuid() != 0, "caps", Path("/proc/self/status").read_text().split("CapEff:")[1].split()[0])
print("KERNEL-CHECK-DONE")
