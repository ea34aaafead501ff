#!/usr/bin/env python3
"""Where a step's end goes until the next step's start, from marker system calls (BENCHMARKS.md).

In a scratch build (never committed), put markers along the path from a step's reaping to the
next step's start, for example

    unsafe { libc::syscall(libc::SYS_getpriority, 100 + N, 0) };   // marker N

then trace one run and print, for every marker, the median time after the `wait4` that reaps
a step (until the next `clone3` that starts one):

    perf record -a -e raw_syscalls:sys_enter,raw_syscalls:sys_exit -o m.data -- \\
        sh -c 'echo $$ > pid; exec hive run dag_l8x125.json --max-concurrency 8 -q'
    perf script -i m.data -F pid,tid,time,event,trace > m.txt
    python3 xtask/scripts/step_path.py m.txt $(cat pid)

`openat`, `write` (the journal) and `pipe2` are reported too.
"""
import re
import statistics
import sys

LINE = re.compile(r"\s*(\d+)/(\d+)\s+(\d+\.\d+):\s+raw_syscalls:(sys_enter|sys_exit):\s+NR (\d+) (.*)")
NAMES = {61: "wait4", 257: "openat", 1: "write", 293: "pipe2"}


def events(path, pid):
    out = []
    for line in open(path):
        m = LINE.match(line)
        if not m or int(m.group(1)) != pid or m.group(4) != "sys_enter":
            continue
        t, nr, rest = float(m.group(3)), int(m.group(5)), m.group(6)
        if nr == 140:  # getpriority: a marker
            out.append((t, "M%d" % (int(rest.strip("( ").split(",")[0], 16) - 100)))
        elif nr == 435 and ", 40," in rest:  # clone3 of a command (a thread's is larger)
            out.append((t, "clone3"))
        elif nr in NAMES:
            out.append((t, NAMES[nr]))
    return sorted(out)


def main():
    ev = events(sys.argv[1], int(sys.argv[2]))
    cycles, i = [], 0
    while i < len(ev):
        if ev[i][1] != "wait4":
            i += 1
            continue
        t0, seen, j = ev[i][0], {}, i + 1
        while j < len(ev) and ev[j][1] not in ("clone3", "wait4"):
            seen.setdefault(ev[j][1], ev[j][0] - t0)
            j += 1
        if j < len(ev) and ev[j][1] == "clone3":
            seen["clone3"] = ev[j][0] - t0
            cycles.append(seen)
        i = j
    print("%d cycles (wait4 ... clone3)" % len(cycles))
    keys = sorted({k for c in cycles for k in c}, key=lambda k: statistics.median(
        c[k] for c in cycles if k in c))
    for k in keys:
        v = [c[k] * 1e6 for c in cycles if k in c]
        print("%-8s n=%5d  median %7.1f us  mean %7.1f us" % (k, len(v), statistics.median(v),
                                                            statistics.mean(v)))


if __name__ == "__main__":
    main()
