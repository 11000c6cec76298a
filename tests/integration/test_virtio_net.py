"""virtio-net on virtio-mmio in the recipe guest, over a tap inside a network namespace the
test creates (the launcher runs inside it): the guest's address, ping both ways, and 1 MiB
with nc in each direction arriving intact.  No packet leaves the namespace."""
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tests.integration.virtio_guest import BACKENDS, GUEST_IP, HOST_IP, netns_run, shared_guest

pytestmark = [pytest.mark.kvm, pytest.mark.slow]

MIB = 1 << 20


@pytest.fixture(scope="module", params=BACKENDS)
def vg(request, tmp_path_factory):
    return shared_guest(request, tmp_path_factory, request.param)


def test_guest_has_its_address(vg):
    out = vg.check("ip -4 addr show dev eth0")
    assert f"inet {GUEST_IP}/24" in out


def test_guest_pings_the_namespace(vg):
    out = vg.check(f"ping -c 3 -W 10 {HOST_IP}", timeout=60)
    assert " 0% packet loss" in out


def test_namespace_pings_the_guest(vg):
    done = netns_run(vg.netns, "busybox", "ping", "-c", "3", "-W", "10", GUEST_IP,
                     capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and " 0% packet loss" in done.stdout, done.stdout + done.stderr


RECEIVER = textwrap.dedent(f"""
    import hashlib, socket, sys
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("{HOST_IP}", int(sys.argv[1]))); srv.listen(1); srv.settimeout(120)
    print("listening", flush=True)
    conn, _ = srv.accept(); conn.settimeout(120)
    data = bytearray()
    while len(data) < {MIB}:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    conn.close()
    print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
""")

SENDER = textwrap.dedent(f"""
    import os, hashlib, socket, sys, time
    data = os.urandom({MIB})
    deadline = time.monotonic() + 120
    while True:
        try:
            conn = socket.create_connection(("{GUEST_IP}", int(sys.argv[1])), timeout=10)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    conn.settimeout(120)
    conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)
    conn.close()
    print(hashlib.sha256(data).hexdigest(), flush=True)
""")


def test_one_mib_from_guest_to_namespace_with_nc(vg):
    guest_sha = vg.check(f"head -c {MIB} /dev/urandom > /tmp/n && sha256sum /tmp/n").split()[0]
    receiver = subprocess.Popen(["ip", "netns", "exec", vg.netns, sys.executable, "-c", RECEIVER, "5001"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout.readline().strip() == "listening"
        vg.check(f"nc {HOST_IP} 5001 < /tmp/n", timeout=300)
        length, host_sha = receiver.stdout.readline().split()
        assert int(length) == MIB and host_sha == guest_sha
    finally:
        receiver.kill()
        receiver.wait()


def test_one_mib_from_namespace_to_guest_with_nc(vg):
    vg.check("rm -f /tmp/from_host; (nc -l -p 5002 </dev/null >/tmp/from_host &)")
    sender = subprocess.run(["ip", "netns", "exec", vg.netns, sys.executable, "-c", SENDER, "5002"],
                            capture_output=True, text=True, timeout=300)
    assert sender.returncode == 0, sender.stderr
    deadline = time.monotonic() + 120
    while f" {MIB} " not in vg.check("ls -l /tmp/from_host") and time.monotonic() < deadline:
        time.sleep(1)
    out = vg.check("sha256sum /tmp/from_host")
    assert out.split()[0] == sender.stdout.strip()
