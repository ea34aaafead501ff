#!/usr/bin/env python3
"""Where the time of a process DAG goes, from scheduler tracepoints (see BENCHMARKS.md).

Runs a command N times under
    perf record -e sched:sched_process_exec,sched:sched_process_exit,sched:sched_process_fork -a
and prints, as medians over the runs: the time from the command's exec to the first fork of
a `sleep` step, the mean time from a step's exit to the next step's fork (slot turnaround),
the time from the last step's exit to the command's own exit, the command's wall time, and
a step's mean time from fork to exec and from fork to exit.
The tracepoints cost almost nothing, unlike strace.

    python3 xtask/scripts/proc_gaps.py 7 make -s -j8 -f dag_l8x125.mk
    python3 xtask/scripts/proc_gaps.py 7 hive run dag_l8x125.json --max-concurrency 8 -q
"""
import bisect
import re
import statistics
import subprocess
import sys
import tempfile

EVENTS = "sched:sched_process_exec,sched:sched_process_exit,sched:sched_process_fork"
LINE = re.compile(r"\s(\d+\.\d+): sched:(\w+): (.*)")


def one(cmd):
    with tempfile.NamedTemporaryFile(suffix=".data") as data:
        subprocess.run(["perf", "record", "-q", "-e", EVENTS, "-a", "-o", data.name, "--"] + cmd,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        text = subprocess.run(["perf", "script", "-i", data.name], capture_output=True,
                              text=True, check=False).stdout
    fork, exe, end = {}, {}, {}
    first = main = main_exit = None
    for line in text.splitlines():
        m = LINE.search(line)
        if not m:
            continue
        t, kind, rest = float(m.group(1)), m.group(2), m.group(3)
        pid = re.search(r" pid=(\d+)", rest)
        if first is None:
            first, main = t, int(pid.group(1)) if pid else None
        if kind == "sched_process_fork":
            fork[int(re.search(r"child_pid=(\d+)", rest).group(1))] = t
        elif kind == "sched_process_exec" and "sleep" in rest:
            exe[int(pid.group(1))] = t
        elif kind == "sched_process_exit" and pid:
            p = int(pid.group(1))
            if p in exe:
                end[p] = t
            if p == main:
                main_exit = t
    starts = sorted(fork[p] for p in exe if p in fork)
    exits = sorted(end.values())
    gaps = []
    for e in exits:
        i = bisect.bisect_right(starts, e)
        if i < len(starts):
            gaps.append(starts[i] - e)
    steps = [p for p in exe if p in fork and p in end]
    to_exec = statistics.mean(exe[p] - fork[p] for p in steps) * 1e6
    life = statistics.mean(end[p] - fork[p] for p in steps) * 1e3
    return (statistics.mean(gaps) * 1e6, (starts[0] - first) * 1e3,
            (main_exit - exits[-1]) * 1e3, (main_exit - first) * 1e3, to_exec, life)


def main():
    n, cmd = int(sys.argv[1]), sys.argv[2:]
    runs = [one(cmd) for _ in range(n)]
    med = [statistics.median(r[i] for r in runs) for i in range(6)]
    print("%s: turnaround %.0f us; first step forked at %.2f ms; last step's exit to the end "
          "%.2f ms; wall %.1f ms; a step's fork to exec %.0f us, fork to exit %.3f ms "
          "(medians of %d)" % (cmd[0], med[0], med[1], med[2], med[3], med[4], med[5], n))


if __name__ == "__main__":
    main()
