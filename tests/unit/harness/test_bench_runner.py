"""The benchmarks' CPU accounting: user and system seconds of a process, read from /proc."""
import os
import time

from harness.bench.runner import user_and_system_cpu


def test_user_time_grows_with_python_work_and_system_time_with_syscalls():
    user0, system0 = user_and_system_cpu(os.getpid())
    end = time.process_time() + 0.3
    while time.process_time() < end:
        sum(range(1000))
    user1, _ = user_and_system_cpu(os.getpid())
    assert user1 - user0 >= 0.2
    end = time.process_time() + 0.3
    while time.process_time() < end:
        os.stat("/")
    _, system2 = user_and_system_cpu(os.getpid())
    assert system2 > system0
