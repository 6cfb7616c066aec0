"""Per-kernel GPU time of one CLI call, from ncu's CSV (gpu__time_duration.sum), summed by kernel name:
    ncu --csv --metrics gpu__time_duration.sum <command> | python3 bench/kernel_times.py
The CLI's warm-up and timed repeats are all counted, so compare kernels within one run, not across."""
import collections
import csv
import re
import sys

lines = [line for line in sys.stdin if line.startswith('"')]
totals, counts = collections.defaultdict(float), collections.Counter()
for row in csv.DictReader(lines):
    if row.get("Metric Name") != "gpu__time_duration.sum":
        continue
    # Kernels in anonymous namespaces: ncu writes "(anonymous namespace)" or "<unnamed>".
    name = row["Kernel Name"].replace("(anonymous namespace)", "anon").replace("<unnamed>", "anon")
    name = re.sub(r"\(.*", "", name).replace("void ", "")
    name = re.sub(r"<.*", "", name).split("::")[-1]
    scale = {"ns": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3, "nsecond": 1e-3}[row["Metric Unit"]]
    totals[name] += float(row["Metric Value"].replace(",", "")) * scale
    counts[name] += 1
for name, total in sorted(totals.items(), key=lambda kv: -kv[1]):
    print(f"{name:40s} {counts[name]:4d} launches {total / counts[name]:10.1f} us each")
