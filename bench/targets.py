"""Issue 11's targets, each measured by its own bench in one command, and the table of
them (`make bench`, `make bench-full`: `python -m bench.run --targets`).

Beside the end-to-end run of `bench.run`, each on a broker of its own, one after the
other (so no two share the two cores):

- `bench.queries`: the routes with 10 clients at once at 100 k requests (a `/health`
  probe in a process of its own meanwhile), and each process's peak RSS after it;
- `bench.replay`: a wiped projection rebuilt from `ledger.events` on RocksDB, a second
  API started beside it, the projector SIGKILLed and SIGTERMed and started again
  (`--full`: at ~1 M events, on the memory store too, for the memory figure);
- `bench.alerts`: six crossings under load, each one's time to the webhook.

A figure is checked against its target here, and every run checks its read model
against the pure fold of the log (a digest, or the metrics and the pipeline's total).
"""

from __future__ import annotations

from typing import Any

from bench import alerts, queries, replay

QUERY_REQUESTS = 100_000  # the size the query and memory targets are set at
FULL_REQUESTS = 320_000  # ~1 M events: the replay and cold-start targets' size
BY_ID, PAGE, HEALTH = 0.020, 0.200, 0.005  # p99 targets, seconds
REPLAY_S, SECOND_API_S, RESTART_S, RSS_MB = 60.0, 30.0, 5.0, 500.0


def measure(full: bool = False) -> dict[str, Any]:
    """Every bench but the end-to-end one; `full`: replays at ~1 M events, both stores."""
    out: dict[str, Any] = {"queries": queries.measure(QUERY_REQUESTS)}
    out["replay"] = replay.measure(QUERY_REQUESTS, "rocksdb")
    if full:
        out["replay_full"] = replay.measure(FULL_REQUESTS, "rocksdb")
        out["replay_full_memory"] = replay.measure(FULL_REQUESTS, "memory", projectors=2)
    out["alerts"] = alerts.measure()
    return out


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _pauses(by_generation: dict[str, dict[str, Any]]) -> str:
    """A process's collections: how many of each generation and the longest, or none."""
    ran = [(g.split()[-1], p) for g, p in by_generation.items() if p["collections"]]
    if not ran:
        return "none"
    return ", ".join(
        f"{p['collections']} of generation {g} (the longest {p['longest_ms']:,.0f} ms)"
        for g, p in ran
    )


def rows(e2e_n: int, e2e: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """The table's rows: target, this run's figure, met or not."""
    q, r, a = got["queries"], got["replay"], got["alerts"]
    routes = q["routes"]
    ours, quix, ceiling = e2e["ledger"], e2e["quix"], e2e["ceiling"]
    scaled = e2e.get("scaled")
    quix_s = quix["last"] - quix["first"]
    best = min(ours["seconds"], *([scaled["seconds"]] if scaled else []))
    out = [
        "| target | this run | |",
        "|---|---|---|",
        f"| 1. end to end ≥ 25 k events/s, ahead of a Quix Streams peer ({e2e_n:,} events; "
        f"the ceiling, a bare consumer: {e2e_n / ceiling:,.0f}/s) | "
        f"{e2e_n / ours['seconds']:,.0f}/s with one projector"
        + (f", {e2e_n / scaled['seconds']:,.0f}/s with {scaled['projectors']}" if scaled else "")
        + f"; the Quix peer {e2e_n / quix_s:,.0f}/s | {_met(e2e_n / best >= 25_000)} "
        f"(ahead of Quix: {quix_s / best:.2f}×) |",
    ]
    replays = [got[k] for k in ("replay", "replay_full", "replay_full_memory") if k in got]
    # a figure at ~300 k events is judged at 1 M: by `make bench-full`, or in its rows below
    at_1m = "judged at 1 M: the rows below" if len(replays) > 1 else "at 1 M: `make bench-full`"
    for run in replays:
        events = run["events"]
        cpu = " + ".join(f"{c:.1f}" for c in run["cpu_projectors"])
        at_size = events >= 900_000
        verdict = _met(run["replay_s"] < REPLAY_S) if at_size else at_1m
        out.append(
            f"| 2. replay of a wiped projection < 60 s at 1 M events ({events:,} events, "
            f"{run['store']}, {run['projectors']} projector process(es)) | {run['replay_s']:.1f} s "
            f"({events / run['replay_s']:,.0f}/s; CPU projector {cpu} s, API "
            f"{run['cpu_api']:.1f} s"
            + (f", broker {run['cpu_broker']:.1f} s" if "cpu_broker" in run else "")
            + f") | {verdict} |"
        )
    by_id = [p for p in routes if p.startswith(("/requests/", "/customers/")) and "abuse" not in p]
    worst = max(routes[p]["p99"] for p in by_id)
    out.append(
        f"| 3. `/requests/{{id}}`, `/customers/{{id}}` p99 < 20 ms ({q['requests']:,} "
        f"requests, {q['events']:,} events, 10 clients) | "
        + ", ".join(_ms(routes[p]["p99"]) for p in by_id)
        + f" | {_met(worst < BY_ID)} |"
    )
    pages = ["/pipeline?limit=100", "/overdue?limit=100", "/customers/abuse?limit=100"]
    out.append(
        "| 3. `/pipeline`, `/overdue`, `/customers/abuse` a page (`limit=100`) p99 < 200 ms | "
        + ", ".join(_ms(routes[p]["p99"]) for p in pages)
        + f" | {_met(max(routes[p]['p99'] for p in pages) < PAGE)} |"
    )
    m = routes["/metrics/decisions"]["p99"]
    out.append(f"| 3. `/metrics/decisions` p99 < 200 ms | {_ms(m)} | {_met(m < PAGE)} |")
    h = routes["/health"]
    probes = [(p, v) for p, v in routes.items() if p != "/health"]
    probed = [t for _, v in probes for t in v["health_times"]]
    under = queries.percentile(probed, 0.99)
    slowest_path, slowest = max(probes, key=lambda pv: pv[1]["health_max"])
    out.append(
        f"| 3. `/health` p99 < 5 ms (10 clients) | {_ms(h['p99'])}; probed every 0.1 s "
        f"while each other route is asked by 10 clients: p99 {_ms(under)} of {len(probed)} "
        f"probes, the slowest {_ms(slowest['health_max'])} (during `{slowest_path}`), "
        f"{sum(v['not_ok'] for _, v in probes)} not 200 | {_met(h['p99'] < HEALTH)} "
        f"(under that load: {'met' if under < HEALTH else 'not met'}) |"
    )
    whole = routes["/pipeline"]
    past = [p for p in routes if "as_of" in p]
    out.append(
        f"| 3. measured, no target: a whole `/pipeline` list (every open request), 10 at "
        f"once; `as_of` a month back | whole list p50 {_ms(whole['p50'])}, p99 "
        f"{_ms(whole['p99'])}; as of a month back: "
        + ", ".join(f"`{p.split('?')[0]}` p50 {_ms(routes[p]['p50'])}" for p in past)
        + " | reported |"
    )
    if q.get("gc"):
        out.append(
            f"| measured, no target: the collector's pauses over the {q['requests']:,}-request "
            "run (its fold, then the queries) | " + "; ".join(
                f"{name} {_pauses(pauses)}" for name, pauses in q["gc"].items()
            ) + " | reported |"
        )  # fmt: skip
    rss = [r["rss_projector"], r["rss_api"], r["rss_second_api"]]
    out.append(
        f"| 4. peak RSS < 500 MB each at 100 k requests ({r['requests']:,} in the replay, "
        f"{q['requests']:,} live) | RocksDB (the replay): projector "
        f"{rss[0]:,.0f} MB, API {rss[1]:,.0f} MB, a second API {rss[2]:,.0f} MB; memory "
        f"store, live, after the queries (ten whole lists at once among them): "
        + ", ".join(f"{k} {v:,.0f} MB" for k, v in q["rss"].items())
        + f" | {_met(max(rss) < RSS_MB)} on RocksDB; memory store "
        f"{'met' if max(q['rss'].values()) < RSS_MB else 'not met'} |"
    )
    for key in ("replay_full", "replay_full_memory"):
        if key in got:
            f = got[key]
            out.append(
                f"| 4. peak RSS at {f['events']:,} events ({f['store']}), reported | projector "
                f"{f['rss_projector']:,.0f} MB, API {f['rss_api']:,.0f} MB, a second API "
                f"{f['rss_second_api']:,.0f} MB | reported |"
            )
    for key in ("replay", "replay_full", "replay_full_memory"):
        if key not in got:
            continue
        f = got[key]
        at_size = f["events"] >= 900_000
        ok = f["second_api_s"] < SECOND_API_S
        out.append(
            f"| 5. a second API ready at 1 M events < 30 s; a worker restarted on RocksDB "
            f"processing within 5 s ({f['events']:,} events, {f['store']}) | second API "
            f"{f['second_api_s']:.1f} s; projector SIGKILLed {f['restart_kill_s']:.1f} s, "
            f"SIGTERMed {f['restart_term_s']:.1f} s"
            + (
                f" (one of {f['projectors']}: the other kept the stream, so not a restart's time)"
                if f.get("projectors", 1) > 1
                else ""
            )
            + " | second API: "
            + (_met(ok) if at_size else at_1m)
            + (
                f"; restart: {_met(max(f['restart_kill_s'], f['restart_term_s']) < RESTART_S)}"
                if f["store"] == "rocksdb"
                else ""
            )
            + " |"
        )
    latencies = a["latencies"]
    arrived = [x for x in latencies if x is not None]
    out.append(
        f"| 6. alert latency ≤ one interval + 1 s ({a['interval']:g} s + 1 s; "
        f"{a['load']:,} events of load) | {len(arrived)} of {len(latencies)} crossings "
        f"POSTed, {min(arrived, default=0):.2f}–{max(arrived, default=0):.2f} s after "
        f"| {_met(len(arrived) == len(latencies) and max(arrived) <= a['bound'])} |"
    )
    return out


def folds_ok(got: dict[str, Any]) -> bool:
    """Whether every run's read model equalled the pure fold of its log."""
    runs = [got["queries"], *(got[k] for k in got if k.startswith("replay"))]
    return all(run["fold_ok"] for run in runs)
