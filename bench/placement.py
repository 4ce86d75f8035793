#!/usr/bin/env python3
"""Where pgbench and PostgreSQL ran relative to the proxy, sampled from /proc.

    bench/placement.py PROXY_PID SECONDS

After 0.3 s (pgbench has started beside it) it finds the threads of the
proxy, pgbench and every process named postgres; then every 50 ms it
reads each one's CPU time and the CPU it last ran on
(/proc/PID/task/TID/stat), and counts the CPU time each used in the
interval as spent on the proxy's CPU when it last ran where the proxy's
main thread (its event loop with `worker_threads = 1`, and PgBouncer's)
last ran.
Prints one line: how much of pgbench's and of PostgreSQL's CPU time was
on the proxy's CPU. Approximate (clock ticks, the CPU at the end of each
interval), but on a 2-core machine it tells the placements apart: with
PostgreSQL mostly on the other CPU a 10-client round runs about an
eighth faster than with everything mixed (BENCHMARKS, session 23).
"""
import os
import sys
import time


def followed(proxy):
    """[(kind, open stat file)] for every thread of the proxy, pgbench and
    PostgreSQL. Found once: walking all of /proc every interval cost a
    tenth of a CPU, more than a round should carry."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        if pid == proxy:
            # Its main thread only: the event loop (`worker_threads = 1`,
            # and PgBouncer's).
            kind, tids = "proxy", [pid]
        elif comm in ("pgbench", "postgres"):
            kind = comm
        else:
            continue
        for tid in tids:
            try:
                out.append((kind, os.open(f"/proc/{pid}/task/{tid}/stat", os.O_RDONLY)))
            except OSError:
                continue
    return out


def sample(threads):
    """{fd: (kind, cpu ticks, last cpu)}, for the threads still there."""
    out = {}
    for kind, fd in threads:
        try:
            stat = os.pread(fd, 4096, 0).decode()
        except OSError:
            continue
        # Fields after the command name, which may hold spaces.
        fields = stat[stat.rindex(")") + 2 :].split()
        out[fd] = (kind, int(fields[11]) + int(fields[12]), int(fields[36]))
    return out


def main():
    proxy, seconds = sys.argv[1], float(sys.argv[2])
    end = time.monotonic() + seconds
    # Started beside pgbench: let it start and log in first.
    time.sleep(min(0.3, seconds / 4))
    threads = followed(proxy)
    proxy_fds = [fd for kind, fd in threads if kind == "proxy"]
    total = {"pgbench": 0, "postgres": 0}
    shared = {"pgbench": 0, "postgres": 0}
    before = sample(threads)
    while time.monotonic() < end:
        time.sleep(0.05)
        now = sample(threads)
        proxy_cpu = now[proxy_fds[0]][2] if proxy_fds and proxy_fds[0] in now else None
        for fd, (kind, ticks, cpu) in now.items():
            if kind == "proxy" or fd not in before:
                continue
            used = ticks - before[fd][1]
            total[kind] += used
            if cpu == proxy_cpu:
                shared[kind] += used
        before = now

    def share(kind):
        return f"{shared[kind] / total[kind]:.2f}" if total[kind] else "n/a"

    print(f"on the proxy's CPU: pgbench {share('pgbench')} postgres {share('postgres')}")


if __name__ == "__main__":
    main()
