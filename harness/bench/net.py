"""`lguest-harness bench net`: virtio-net on virtio-mmio (KVM), guest -> namespace over a tap.

The launcher runs inside a network namespace this benchmark creates and removes, so the
tap and the traffic stay there.  The guest sends /dev/zero with busybox nc to a Python
receiver in the namespace, which times MOVE_MB MiB from its first byte and then closes
(nc exits on the reset).  Beside it: the same receiver fed over the namespace's loopback by
a host sender (what the host's own stack does with no guest in the way).  A second row has the
guest's busybox httpd send a file from tmpfs with sendfile() to a fetch in the namespace:
busybox nc writes 1 KiB at a time, and in a kvm_pvm guest every syscall and every packet's
trip through the (emulated) guest kernel costs milliseconds.  Launcher CPU
per MiB moved is measured around each transfer from /proc (vCPU thread / device threads).
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from harness.bench.runner import MIB, boot_guest, check, launcher_cpu, mbps

MOVE_MB = 2     # TCP in a kvm_pvm guest runs at tens of KB/s: its kernel code is emulated
HOST_IP, GUEST_IP = "10.213.9.1", "10.213.9.2"
PORT = 5101

RECEIVER = textwrap.dedent("""
    import socket, sys, time
    host, port, want = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port)); srv.listen(1); srv.settimeout(300)
    print("listening", flush=True)
    conn, _ = srv.accept(); conn.settimeout(300)
    got, start = 0, None
    while got < want:
        chunk = conn.recv(1 << 20)
        if not chunk:
            break
        if start is None:
            start = time.perf_counter()
        got += len(chunk)
    elapsed = time.perf_counter() - start
    conn.close()
    print(got, elapsed, flush=True)
""")

HTTP_MB = 4
FETCH = textwrap.dedent("""
    import sys, time, urllib.error, urllib.request
    deadline = time.monotonic() + 120       # httpd takes a fork and an exec to start listening
    while True:
        try:
            start = time.perf_counter()
            data = urllib.request.urlopen(sys.argv[1], timeout=600).read()
            break
        except (ConnectionError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    print(len(data), time.perf_counter() - start, flush=True)
""")

SENDER = textwrap.dedent("""
    import socket, sys
    conn = socket.create_connection((sys.argv[1], int(sys.argv[2])))
    block = bytes(1 << 20)
    try:
        while True:
            conn.sendall(block)
    except OSError:
        pass
""")


def _netns() -> str:
    name = f"lhbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    return name


def _receive(ns: str, host: str, port: int, start_sender) -> tuple[int, float]:
    receiver = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", RECEIVER, host, str(port),
                                 str(MOVE_MB * MIB)], stdout=subprocess.PIPE, text=True)
    try:
        if receiver.stdout.readline().strip() != "listening":
            raise RuntimeError("the receiver in the namespace did not start")
        start_sender()
        got, elapsed = receiver.stdout.readline().split()
        return int(got), float(elapsed)
    finally:
        receiver.kill()
        receiver.wait()


def main(args) -> int:
    runs = max(1, getattr(args, "runs", 3) or 1)
    ns = _netns()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-net-") as tmp:
            guest = boot_guest(Path(tmp), net=[f"{HOST_IP}/24"], netns=ns,
                               cmdline=[f"ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off"])
            try:
                pid = guest.child.pid
                rows = []
                for run in range(runs):
                    before = launcher_cpu(pid)
                    got, elapsed = _receive(ns, HOST_IP, PORT + run,
                                            lambda p=PORT + run: guest.sendline(f"nc {HOST_IP} {p} < /dev/zero"))
                    guest.expect(r"# ", 120)
                    cpu = launcher_cpu(pid) - before
                    rows.append((mbps(got, elapsed), cpu, got))
                check(guest, f"mkdir -p /tmp/www && head -c {HTTP_MB * MIB} /dev/zero > /tmp/www/blob && "
                             f"(httpd -p 8080 -h /tmp/www &)")
                http = []
                for run in range(runs):
                    before = launcher_cpu(pid)
                    done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", FETCH,
                                           f"http://{GUEST_IP}:8080/blob"],
                                          capture_output=True, text=True, timeout=900, check=True)
                    cpu = launcher_cpu(pid) - before
                    got, elapsed = done.stdout.split()
                    http.append((mbps(int(got), float(elapsed)), cpu, int(got)))
                guest.poweroff(timeout=120)
            finally:
                guest.close()
        host = []
        for run in range(runs):
            senders = []

            def start(p=PORT + 50 + run):
                senders.append(subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SENDER,
                                                 "127.0.0.1", str(p)]))
            try:
                got, elapsed = _receive(ns, "127.0.0.1", PORT + 50 + run, start)
            finally:
                for s in senders:
                    s.kill()
                    s.wait()
            host.append(mbps(got, elapsed))
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    print(f"net: {MOVE_MB} MiB guest -> namespace over a tap (virtio-net on virtio-mmio, KVM; busybox nc "
          f"from /dev/zero), vs the namespace's loopback; median of {runs}")
    print(f"{'path':<30} {'MB/s':>8} {'launcher CPU s/MiB':>19} {'(vCPU':>7} {'devices)':>9}")
    for name, measured in ((f"guest nc -> namespace", rows), (f"guest httpd sendfile -> ns", http)):
        per_mib = [(c.total / (n / MIB), c.vcpu / (n / MIB), c.devices / (n / MIB)) for _, c, n in measured]
        total, vcpu, dev = (statistics.median(x[i] for x in per_mib) for i in range(3))
        print(f"{name:<30} {statistics.median(r for r, _, _ in measured):>8.3f} {total:>19.4f} "
              f"{vcpu:>7.4f} {dev:>9.4f}")
    print(f"{'host loopback':<30} {statistics.median(host):>8.1f} {'-':>19}")
    return 0
