"""virtio-rng on virtio-mmio in the recipe guest: selected as /dev/hwrng's source, and it yields data."""
import pytest

from tests.integration.virtio_guest import BACKENDS, shared_guest

pytestmark = [pytest.mark.kvm, pytest.mark.slow]


@pytest.fixture(scope="module", params=BACKENDS)
def vg(request, tmp_path_factory):
    return shared_guest(request, tmp_path_factory, request.param)


def test_virtio_rng_is_the_current_hwrng(vg):
    assert vg.check("cat /sys/class/misc/hw_random/rng_current").strip().startswith("virtio_rng")


def test_dev_hwrng_yields_random_bytes(vg):
    out = vg.check("head -c 1024 /dev/hwrng > /tmp/rng && od -An -v -tx1 /tmp/rng")
    data = bytes.fromhex("".join(out.split()))
    assert len(data) == 1024
    assert len(set(data)) > 128         # 1 KiB from a real source covers most byte values
    again = vg.check("head -c 64 /dev/hwrng > /tmp/rng && od -An -v -tx1 /tmp/rng")
    assert bytes.fromhex("".join(again.split())) != data[:64]
