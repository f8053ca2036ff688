"""DuckDB's side of `tally-bench peers`: the same questions over Tally's exported Parquet.

Run by the benchmark with the venv's python (tests/requirements.txt pins duckdb):
    python duckdb_queries.py '{"parquet": "...", "out": "...", "cost_sql": "...", "repeat": 2}'
    python duckdb_queries.py '{"parquet": "...", "out": "...", "queries": {"name": "SQL over {source}"}, "repeat": 2}'
Writes a JSON file with each query's wall times (seconds), the answers, DuckDB's version and
this process's peak RSS (VmHWM), and prints nothing else.
"""

import json
import sys
import time

import duckdb


def peak_rss_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    args = json.loads(sys.argv[1])
    source = "read_parquet('%s')" % args["parquet"].replace("'", "''")
    con = duckdb.connect()
    if "queries" in args:
        # Another table's questions (the network flows): name -> SQL over {source}.
        queries = {name: sql.replace("{source}", source) for name, sql in args["queries"].items()}
    else:
        queries = {
            # Exact percentile, interpolated between samples like PromQL's quantile_over_time.
            "percentiles": (
                "SELECT namespace, pod, container, quantile_cont(cpu_cores, 0.95), "
                "max(memory_working_set_bytes), count(*) FROM %s GROUP BY namespace, pod, container"
                % source
            ),
            "cost": args["cost_sql"].replace("{source}", source),
        }
    out = {"version": duckdb.__version__, "threads": con.execute(
        "SELECT current_setting('threads')").fetchone()[0]}
    for name, sql in queries.items():
        times = []
        rows = None
        for _ in range(args["repeat"]):
            started = time.perf_counter()
            rows = con.execute(sql).fetchall()
            times.append(time.perf_counter() - started)
        out[name] = {"seconds": times, "rows": [list(r) for r in rows]}
    out["peak_rss_bytes"] = peak_rss_bytes()
    with open(args["out"], "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
