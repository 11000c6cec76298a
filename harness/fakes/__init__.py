"""Fakes: the guest side of virtqueues, a fake hypervisor and in-memory device backends."""
