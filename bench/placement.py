#!/usr/bin/env python3
"""Where pgbench and PostgreSQL ran relative to the proxy, sampled from /proc.

    bench/placement.py PROXY_PID SECONDS

Every 50 ms it reads each thread's CPU time and the CPU it last ran on
(/proc/PID/task/TID/stat) for the proxy, pgbench and every process
named postgres, and counts the CPU time each used in the interval as
spent on the proxy's CPU when it last ran where the proxy's main thread
(its event loop with `worker_threads = 1`, and PgBouncer's) last ran.
Prints one line: how much of pgbench's and of PostgreSQL's CPU time was
on the proxy's CPU. Approximate (clock ticks, the CPU at the end of each
interval), but on a 2-core machine it tells the placements apart: with
PostgreSQL mostly on the other CPU a 10-client round runs about an
eighth faster than with everything mixed (BENCHMARKS, session 23).
"""
import os
import sys
import time


def threads(proxy):
    """{tid: (kind, cpu ticks, last cpu)} for the threads we follow."""
    out = {}
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
            kind = "proxy"
        elif comm in ("pgbench", "postgres"):
            kind = comm
        else:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            # Fields after the command name, which may hold spaces.
            fields = stat[stat.rindex(")") + 2 :].split()
            out[tid] = (kind, int(fields[11]) + int(fields[12]), int(fields[36]))
    return out


def main():
    proxy, seconds = sys.argv[1], float(sys.argv[2])
    total = {"pgbench": 0, "postgres": 0}
    shared = {"pgbench": 0, "postgres": 0}
    before = threads(proxy)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
        now = threads(proxy)
        proxy_cpu = now.get(proxy, (None, 0, None))[2]
        for tid, (kind, ticks, cpu) in now.items():
            if kind == "proxy" or tid not in before:
                continue
            used = ticks - before[tid][1]
            total[kind] += used
            if cpu == proxy_cpu:
                shared[kind] += used
        before = now

    def share(kind):
        return f"{shared[kind] / total[kind]:.2f}" if total[kind] else "n/a"

    print(f"on the proxy's CPU: pgbench {share('pgbench')} postgres {share('postgres')}")


if __name__ == "__main__":
    main()
