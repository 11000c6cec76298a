"""lguest-harness launcher: guest memory -> virtqueue -> device -> transport -> hypervisor."""
