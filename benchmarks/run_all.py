"""Every benchmark of issue 5 in one run: prints the figures and their targets, writes results JSON and a plot.

W1: 40 photo-like 1920×1080 JPEGs, blur; run: the whole `pixmill run` command over 200 of them;
W2: the dev corpus, mixed operations; W3: one 512×512 image (latency); W4: one 8000×8000 image,
bilateral (run once); cluster: tiny images on both store backends and on 1 and 2 dispatcher nodes
(bench_cluster.py).  Ratios are measured in this one run, baseline and variants interleaved, best
of the rounds.
Usage: python benchmarks/run_all.py [--out benchmarks/results] [--rounds 5] [--skip thumbor,w4,...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_cluster  # noqa: E402
import bench_memory  # noqa: E402
import bench_run  # noqa: E402
import bench_service  # noqa: E402
import bench_thumbor  # noqa: E402
from common import machine, running_server, write_photos  # noqa: E402

PARTS = ("w1", "run", "overhead", "w2", "latency", "perjob", "thumbor", "idle", "memory", "upload", "w4", "cluster")


def targets(r: dict, cores: int) -> list[tuple[str, str, bool | None]]:
    """(figure, value against target, met) for every target of the issue that was measured."""
    out = []

    def add(name: str, value: str, met: bool) -> None:
        out.append((name, value, met))
    if "w1" in r:
        e = r["w1"]["workers"][cores]["efficiency_vs_1thread_loop"]
        add(f"W1 parallel efficiency at W={cores}", f"{e:.2f} (>= 0.90)", e >= 0.9)
    if "run" in r:
        w = r["run"]
        add(f"`pixmill run` whole command, {w['images']} images, vs {w['workers']} one-thread loops at once",
            f"{w['ratio']:.2f} (>= 0.90)", w["ratio"] >= 0.9)
    if "overhead" in r:
        o = r["overhead"]
        add("service overhead vs `pixmill run` (whole command)", f"{o['ratio_vs_cli']:.2f} (<= 1.10)",
            o["ratio_vs_cli"] <= 1.10)
        add("service overhead vs `pixmill run` on a started pool", f"{o['ratio_vs_started_pool']:.2f} (<= 1.10)",
            o["ratio_vs_started_pool"] <= 1.10)
    if "latency" in r:
        for kind in ("back_to_back", "after_idle"):
            lat = r["latency"][kind]
            add(f"warm latency p50, {kind.replace('_', ' ')}", f"{lat['p50_ms']:.1f} ms (<= 25)", lat["p50_ms"] <= 25)
            add(f"warm latency p99, {kind.replace('_', ' ')}", f"{lat['p99_ms']:.1f} ms (<= 100)",
                lat["p99_ms"] <= 100)
    if "thumbor" in r and "ratio" in r["thumbor"]:
        t = r["thumbor"]
        add("pixmill vs thumbor images/s", f"{t['ratio']:.2f}x (>= 1.5)", t["ratio"] >= 1.5)
    if "memory" in r:
        g = r["memory"]["growth"]
        add("web RSS after 2,000 small jobs vs after 100", f"{100 * g:+.1f}% (within 10%)", abs(g) <= 0.10)
    if "upload" in r:
        u = r["upload"]["rise_mb"]
        add("web RSS rise on a 200 MB upload", f"{u:.1f} MB (< 30)", u < 30)
    if "w4" in r:
        w = r["w4"]["ratio"]
        add("worker peak RSS on W4 vs the decoded image", f"{w:.2f}x (<= 3)", w <= 3)
    if "idle" in r:
        c = r["idle"]["percent_of_one_core"]
        add("idle CPU of the whole service over 10 s", f"{c:.1f}% of one core (< 5)", c < 5)
    return out


def plot(w1: dict, path: Path) -> None:
    """Throughput against workers, with the ideal line (W × the one-core loop)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = sorted(int(w) for w in w1["workers"])
    rows = [w1["workers"][w] for w in ws]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot([0] + ws, [0] + [w * w1["loop1_images_per_s"] for w in ws], "k--", label="ideal: W × 1-core loop")
    ax.plot(ws, [r["images_per_s"] for r in rows], "o-", label="pixmill run, started pool")
    if len(ws) > 1:
        ax.plot(ws[1:], [w1["workers"][w]["concurrent_loops_images_per_s"] for w in ws[1:]], "^",
                color="grey", label="W one-thread loops at once (machine ceiling)")
    if "cli_images_per_s" in rows[0]:
        ax.plot(ws, [r["cli_images_per_s"] for r in rows], "s:", label="pixmill run, whole command")
    ax.axhline(w1["loop_images_per_s"], color="grey", lw=0.8,
               label=f"loop, OpenCV default {w1['opencv_default_threads']} threads")
    ax.set_xlabel("workers (W)")
    ax.set_ylabel("images/s (1920×1080 JPEG, blur)")
    ax.set_xticks(ws)
    ax.set_xlim(0, ws[-1] + 0.5)
    ax.set_ylim(0, None)
    ax.legend(fontsize=8)
    ax.set_title(f"W1 throughput vs workers ({os.cpu_count()} cores)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def cpu_per_image(t: dict) -> str:
    """Where the thumbor comparison's CPU went, per image, and what the 1.5x target leaves pixmill."""
    cpu = t["cpu_ms_per_image"]

    def side(key: str) -> str:
        return ", ".join(f"{k} {v:.1f}" for k, v in cpu[key].items()) + f" = {sum(cpu[key].values()):.1f}"
    return (f"thumbor, CPU ms per image: thumbor {side('thumbor')}; pixmill `thumbnail` {side('thumbnail')} "
            f"(its process() alone in one process {t['image_work_ms']:.1f}); pixmill `resize` "
            f"{sum(cpu['resize'].values()):.1f}, batched {sum(cpu['batched'].values()):.1f}; at 1.5x thumbor's "
            f"images/s, pixmill could spend {sum(cpu['thumbor'].values()) / 1.5:.1f} in all")


def lines(r: dict) -> list[str]:
    """The figures, one per line."""
    out = []
    if "w1" in r:
        out += bench_run.report(r["w1"])
    if "run" in r:
        w = r["run"]
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in w["cpu_ms_per_image"].items())
        out.append(f"`pixmill run` over {w['images']} 1080p JPEGs (blur), {w['workers']} MPI workers, the whole "
                   f"command: {w['command_seconds']:.2f} s; {w['workers']} one-thread loops at once, each over its "
                   f"share: {w['ceiling_seconds']:.2f} s; ratio {w['ratio']:.2f}; CPU ms per image: {cpu}")
    if "overhead" in r:
        o = r["overhead"]
        out.append(f"service: {o['images']} images, {o['workers']} workers, POST until all recorded "
                   f"{o['service_seconds']:.2f} s ({o['service_images_per_s']:.1f} images/s); `pixmill run` whole "
                   f"command {o['cli_seconds']:.2f} s, on a started pool {o['pool_seconds']:.2f} s; ratios "
                   f"{o['ratio_vs_cli']:.2f} and {o['ratio_vs_started_pool']:.2f}")
        cpu = o["cpu_ms_per_image"]
        out.append("service, CPU ms per image: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu["service"].items())
                   + "; on the started pool: its own process " + f"{cpu['pool']['client']:.1f}, workers "
                   f"{cpu['pool']['workers']:.1f} (over the workers, the service spends "
                   f"{sum(cpu['service'].values()) - cpu['service']['workers']:.1f} and the pool "
                   f"{cpu['pool']['client']:.1f})")
    if "w2" in r:
        w = r["w2"]
        out.append(f"W2 corpus ({w['images']} files, mixed operations; {len(w['refused'])} refused by design "
                   f"left out): loop of process() "
                   f"{w['loop_images_per_s']:.1f} images/s, service {w['service_images_per_s']:.1f} images/s "
                   f"({w['speedup']:.2f}x)")
    if "latency" in r:
        for kind, lat in r["latency"].items():
            if kind == "work_alone":
                out.append(f"W3's process() alone in one process, p50: {lat['back_to_back_p50_ms']:.1f} ms back to "
                           f"back, {lat['after_idle_p50_ms']:.1f} ms each {lat['idle_seconds']:g} s after the last "
                           f"({lat['penalty_ms']:+.1f} ms: what the pause costs the same work on this machine)")
                continue
            extra = f" after {lat['idle_seconds']:g} s idle" if "idle_seconds" in lat else ""
            out.append(f"W3 latency {kind}{extra}: p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, "
                       f"max {lat['max_ms']:.1f} ms (n={lat['n']})")
    if "perjob" in r:
        p = r["perjob"]
        base = r.get("latency", {}).get("back_to_back")
        ratio = f"; {p['p50_ms'] / base['p50_ms']:.0f}x pixmill's p50" if base else ""
        out.append(f"W3 latency with mpiexec per job (original design): p50 {p['p50_ms']:.0f} ms, "
                   f"p99 {p['p99_ms']:.0f} ms (n={p['n']}){ratio}")
    if "thumbor" in r:
        t = r["thumbor"]
        if "error" in t:
            out.append(f"thumbor: not measured: {t['error']}")
        else:
            out.append(f"thumbor {t['thumbor_version']} ({t['thumbor_processes']} processes): "
                       f"{t['thumbor_images_per_s']:.1f} images/s; pixmill `{t['pipeline']}` "
                       f"{t['pixmill_images_per_s']:.1f} images/s, pixmill/thumbor {t['ratio']:.2f}; exact "
                       f"`{t['exact_pipeline']}` {t['pixmill_exact_images_per_s']:.1f} images/s, "
                       f"{t['exact_ratio']:.2f} ({t['clients']} clients, {t['images']} images)")
            out.append(f"thumbor, apart from the target: each of the {t['clients']} clients sends its "
                       f"{t['batched_job_images']} images as one pixmill job: {t['pixmill_batched_images_per_s']:.1f} "
                       f"images/s, pixmill/thumbor {t['batched_ratio']:.2f}")
            out.append(cpu_per_image(t))
    if "memory" in r:
        m = r["memory"]
        out.append(f"web RSS after {m['first']} small jobs {m['rss_after_first_mb']:.1f} MB, after {m['jobs']} "
                   f"{m['rss_after_all_mb']:.1f} MB ({100 * m['growth']:+.1f}%)")
    if "upload" in r:
        u = r["upload"]
        out.append(f"upload of {u['upload_mb']:.0f} MB in {u['files']} files: web RSS {u['rss_before_mb']:.1f} MB "
                   f"-> peak {u['rss_peak_mb']:.1f} MB (+{u['rise_mb']:.1f} MB)")
    if "w4" in r:
        w = r["w4"]
        out.append(f"W4 {w['side']}x{w['side']} bilateral: worker peak RSS {w['worker_peak_mb']:.0f} MB, decoded "
                   f"image {w['decoded_mb']:.0f} MB ({w['ratio']:.2f}x); whole run {w['seconds']:.1f} s")
    if "cluster" in r:
        c = r["cluster"]
        for key, title in (("sqlite", "SQLite + folder"), ("postgres", "PostgreSQL + S3"),
                           ("nodes1", "PostgreSQL + S3, 1 replica + 1 node"),
                           ("nodes2", "PostgreSQL + S3, 1 replica + 2 nodes")):
            f = c[key]
            cpu = ", ".join(f"{k} {v:.2f}" for k, v in f["cpu_ms_per_task"].items() if v)
            out.append(f"tiny images (1,000 64x64 PNGs, flip), {title}: {f['tasks_per_s']:.0f} tasks/s = "
                       f"{f['ratio']:.3f} of process() alone x {c['cores']} cores ({c['ceiling_per_s']:.0f}/s); "
                       f"CPU ms per task: {cpu}")
        out.append(f"tiny images, 2 dispatcher nodes vs 1 on this machine: {c['nodes_2_vs_1']:.2f}x")
    if "idle" in r:
        i = r["idle"]
        out.append(f"idle service ({i['processes']} processes): {i['cpu_seconds']:.3f} CPU s in {i['seconds']:.1f} s "
                   f"= {i['percent_of_one_core']:.1f}% of one core")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--skip", default="", help=f"comma-separated parts to leave out: {','.join(PARTS)}")
    parser.add_argument("--only", default="", help="comma-separated parts to run (default all)")
    args = parser.parse_args()
    parts = [p for p in PARTS if p not in args.skip.split(",") and (not args.only or p in args.only.split(","))]
    cores = os.cpu_count() or 1
    started = time.perf_counter()
    r: dict = {"machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "errors": {}}
    print("machine: " + ", ".join(f"{k} {v}" for k, v in r["machine"].items()), flush=True)

    def part(name: str, fn) -> None:
        if name not in parts:
            return
        t0 = time.perf_counter()
        try:
            r[name] = fn()
        except Exception as exc:  # one broken part must not lose the others' figures
            traceback.print_exc()
            r["errors"][name] = f"{type(exc).__name__}: {exc}"
            if name == "thumbor":
                r[name] = {"error": r["errors"][name]}
        print(f"[{name}: {time.perf_counter() - t0:.0f} s]", flush=True)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        paths = write_photos(tmp / "w1", args.images)
        part("w1", lambda: bench_run.measure(paths, tmp / "w1out", list(range(1, cores + 1)), rounds=args.rounds))
        if "run" in parts:
            many = write_photos(tmp / "run200", 200)
            part("run", lambda: bench_run.whole_command(many, tmp / "runout", cores))
        image = bench_service.w3_image()
        if {"overhead", "w2", "latency", "thumbor"} & set(parts):
            with running_server(tmp / "serve-a", workers=cores) as server:
                part("overhead", lambda: bench_service.overhead(server, paths, tmp / "ovh", cores))
                part("w2", lambda: bench_service.corpus_w2(server))
                part("latency", lambda: bench_service.warm_latency(server, image))
                part("thumbor", lambda: bench_thumbor.compare(server, paths, tmp / "thumbor"))
        part("perjob", lambda: bench_service.per_job_mpiexec(image, cores))
        if {"idle", "memory", "upload"} & set(parts):
            with running_server(tmp / "serve-b", workers=cores) as server:
                part("idle", lambda: bench_service.idle_cpu(server))
                part("memory", lambda: bench_memory.rss_over_jobs(server))
                part("upload", lambda: bench_memory.upload_rise(server))
        part("w4", lambda: bench_memory.w4_worker_peak(tmp))
        part("cluster", lambda: bench_cluster.run(1000, cores))
    r["seconds"] = time.perf_counter() - started
    r["machine"]["load_avg_at_end"] = os.getloadavg()  # the machine may be shared: other work shows here
    r["targets"] = [{"figure": f, "value": v, "met": m} for f, v, m in targets(r, cores)]
    print("\n== figures")
    print("\n".join(lines(r)))
    print("\n== targets")
    for f, v, m in targets(r, cores):
        print(f"{'MET ' if m else 'MISS'}  {f}: {v}")
    for name, err in r["errors"].items():
        print(f"ERROR {name}: {err}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(r, indent=2, default=str))
    print(f"\nwrote {args.out / 'results.json'}")
    if "w1" in r:
        plot(r["w1"], args.out / "throughput.png")
        print(f"wrote {args.out / 'throughput.png'}")
    print(f"load average at the end: {r['machine']['load_avg_at_end']}; benchmark took {r['seconds']:.0f} s")
    if r["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
