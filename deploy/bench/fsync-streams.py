#!/usr/bin/env python3
"""The disk alone, as a Strata cluster uses it: FILES files, each appended
64 KiB at a time at RATE writes/s with an fdatasync after every write (a
partition replica's group commit), for DURATION seconds. Prints the
fdatasync latency per 10 s window. Strata is not involved.

    deploy/bench/fsync-streams.py FILES RATE DURATION DIR

Three nodes with 8 partitions each on one disk are 24 streams; compare 24
streams at 16/s with 3 at 128/s (the same bytes and the same number of
fdatasyncs). DIR is created and its files are left for the caller to delete
(deleting gigabytes on a filesystem mounted with online `discard` stalls
the next run's fsyncs).
"""
import os
import sys
import threading
import time

if len(sys.argv) != 5:
    sys.exit(__doc__)
files, rate, duration, directory = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
duration = min(duration, 600.0)  # bounded, whatever the arguments say
os.makedirs(directory, exist_ok=True)
block = os.urandom(64 * 1024)
latencies = []  # (seconds since start, fdatasync ms)
lock = threading.Lock()
start = time.time()


def stream(i):
    fd = os.open(os.path.join(directory, f"stream{i}"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    n = 0
    while True:
        due = start + n / rate
        now = time.time()
        if now - start >= duration:
            break
        if due > now:
            time.sleep(due - now)
        os.write(fd, block)
        before = time.time()
        os.fdatasync(fd)
        after = time.time()
        with lock:
            latencies.append((after - start, (after - before) * 1000))
        n += 1
    os.close(fd)


threads = [threading.Thread(target=stream, args=(i,)) for i in range(files)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(f"{files} files x {rate:g} writes/s of 64 KiB + fdatasync, {duration:g} s, in {directory}")
for w in range(int(duration // 10)):
    window = sorted(ms for (at, ms) in latencies if w * 10 <= at < (w + 1) * 10)
    if not window:
        continue
    pick = lambda q: window[min(len(window) - 1, int(q * len(window)))]
    print(f"{w * 10:4d}-{w * 10 + 10}s: {len(window)} fdatasyncs, p50 {pick(.5):.2f} ms, p99 {pick(.99):.2f} ms, "
          f"p99.9 {pick(.999):.2f} ms, max {window[-1]:.2f} ms")
