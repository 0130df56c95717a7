#!/usr/bin/env python3
"""Runs every sherd benchmark beside its anchors and writes bench/RESULTS.md
and bench/step_chart.png.

    bench/run_all.sh            (builds Release first, then runs this)

Each sherd figure is printed with the anchor measured in the same run and the
ratio (../shared/BENCHMARKS.md). Nothing here is a pass/fail test.
"""
import datetime, json, os, re, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B = os.path.join(ROOT, "build", "bench")
ANCHORS = os.environ.get("SHERD_ANCHORS", os.path.join(ROOT, "..", "shared", "anchors"))
VENV_PY = os.path.join(ROOT, ".venv", "bin", "python")
PY = VENV_PY if os.path.exists(VENV_PY) else "/usr/bin/python3"
MI = 1 << 20


def sh(cmd, **kw):
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, **kw).stdout


def anchor(n, world):
    out = sh([PY, os.path.join(ANCHORS, "cpu_anchor.py"), str(n), str(world)],
             env=dict(os.environ, OMP_NUM_THREADS="2"))
    return json.loads(out[out.index("{"):])


def adamw_section(a32):
    out = sh([os.path.join(B, "adamw_bench"), f"--params={32 * MI}", "--pairs=9"])
    rows = {}
    for line in out.splitlines():
        m = re.match(r"(adamw_\S+|memcpy_28B)/T(\d)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)%", line)
        if m:
            rows[(m[1], int(m[2]))] = dict(median=float(m[4]), best=float(m[5]), gbps=float(m[6]), vs_copy=int(m[7]))
    pairs = {}
    for line in out.splitlines():
        m = re.match(r"(adamw_\w+)/T(\d)\s+(\d+)%", line)
        if m:
            pairs[(m[1], int(m[2]))] = int(m[3])
    best = rows.get(("adamw_avx512_fp32", 2)) or rows.get(("adamw_avx2_fp32", 2))
    t = best["median"]
    lines = ["## AdamW step, 32 Mi fp32 params, 2 threads (28 B/param)", "",
             "| what | ms (median) | anchor ms (same run) | anchor / sherd |", "|---|---|---|---|"]
    for key, label in [("adamw_foreach_ms", "torch AdamW foreach=True"),
                       ("adamw_fused_ms", "torch AdamW fused=True"),
                       ("adamw_forloop_ms", "torch AdamW foreach=False"),
                       ("deepspeed_cpuadam_ms", "DeepSpeedCPUAdam")]:
        if key in a32:
            lines.append(f"| sherd vs {label} | {t:.1f} | {a32[key]:.1f} | {a32[key] / t:.2f}x |")
        else:
            lines.append(f"| sherd vs {label} | {t:.1f} | unavailable | - |")
    lines += ["", "| path | threads | median ms | best GB/s | best vs memcpy (best) | back-to-back vs memcpy (median) |",
              "|---|---|---|---|---|---|"]
    for (name, th), r in sorted(rows.items()):
        p = pairs.get((name.replace("_fp32", "").replace("adamw_", "adamw_"), th))
        lines.append(f"| {name} | {th} | {r['median']:.1f} | {r['gbps']:.1f} | {r['vs_copy']}% | {str(p) + '%' if p else '-'} |")
    lines += ["", f"torch copy_ bandwidth in the anchor run: {a32.get('copy_GBps', 0):.1f} GB/s; "
              f"floor for 28 B x 32 Mi at that bandwidth: {28 * 32 * MI / a32.get('copy_GBps', 1) / 1e6:.1f} ms", ""]
    return lines


def dataplane_section():
    out = sh(["bash", "bench/run_dataplane.sh", "64"])
    d = json.loads(out.strip().splitlines()[-1])
    dp, tcp = d["dataplane"], d["iperf3_GBps"]
    return ["## Inline data plane, 64 MiB", "",
            "| path | GB/s | vs loopback TCP (iperf3, same run) |", "|---|---|---|",
            f"| inline Push (gRPC stream) | {dp['push_GBps']:.2f} | {100 * dp['push_GBps'] / tcp:.0f}% |",
            f"| inline Fetch (gRPC stream) | {dp['fetch_GBps']:.2f} | {100 * dp['fetch_GBps'] / tcp:.0f}% |",
            f"| loopback TCP, iperf3 | {tcp:.2f} | 100% |",
            f"| shared memory | 0 bytes copied between processes | - |",
            f"| memcpy (1 thread) | {dp['memcpy_GBps']:.2f} | - |", ""]


def step_section(a_by_n):
    lines = ["## End-to-end step (real servers, shared-memory data plane)", "",
             "| params | W | sherd ms | rs | norm | opt | ag | torch ZeRO-1 ms (same run) | ZeRO-1 / sherd | server private MiB | 16N/W MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    series = {}
    for n in (1 * MI, 4 * MI, 16 * MI, 64 * MI):
        for w in (1, 2, 4):
            s = json.loads(sh([os.path.join(B, "step_bench"), "--params", str(n), "--world", str(w),
                               "--steps", "5", "--json"]))
            z = a_by_n.get((n, w))
            series.setdefault(f"sherd W={w}", []).append((n, s["step_ms"]))
            if z:
                series.setdefault(f"torch ZeRO-1 W={w}", []).append((n, z))
            zs = f"{z:.1f}" if z else "-"
            ratio = f"{z / s['step_ms']:.2f}x" if z else "-"
            lines.append(f"| {n // MI} Mi | {w} | {s['step_ms']:.1f} | {s['reduce_scatter_ms']:.1f} | "
                         f"{s['norm_ms']:.1f} | {s['optimizer_ms']:.1f} | {s['all_gather_ms']:.1f} | {zs} | "
                         f"{ratio} | {s['server_rss_anon'] / MI:.0f} | {s['ideal_state_bytes'] / MI:.0f} |")
    lines.append("")
    return lines, series


def chart(series, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, pts in sorted(series.items()):
        xs, ys = zip(*pts)
        ax.plot([x / MI for x in xs], ys, marker="o", linestyle="--" if "torch" in name else "-", label=name)
    ax.set_xscale("log", base=2); ax.set_yscale("log")
    ax.set_xlabel("model size (Mi fp32 params)"); ax.set_ylabel("step time (ms)")
    ax.set_title("sherd step vs torch ZeRO-1 over gloo (same machine, same run)")
    ax.grid(True, which="both", alpha=0.3); ax.legend()
    fig.tight_layout(); fig.savefig(path, dpi=110)
    return True


# Sections other scripts append to RESULTS.md (each says how to rerun it),
# carried over when this script rewrites the file.
KEPT = ("## PyTorch training step",)


def kept_sections():
    path = os.path.join(ROOT, "bench", "RESULTS.md")
    if not os.path.exists(path):
        return []
    out, keep = [], False
    for line in open(path).read().splitlines():
        if line.startswith("## "):
            keep = line.startswith(KEPT)
        if keep:
            out.append(line)
    return out + ([""] if out else [])


def main():
    commit = sh(["git", "rev-parse", "--short", "HEAD"]).strip()
    cpu = re.search(r"Model name:\s*(.*)", sh(["lscpu"]))
    a32 = anchor(32 * MI, 2)
    a_by_n = {(32 * MI, 2): a32["zero1_gloo_step_ms"]}
    for n in (1 * MI, 4 * MI, 16 * MI, 64 * MI):
        a_by_n[(n, 2)] = anchor(n, 2)["zero1_gloo_step_ms"]
    step_lines, series = step_section(a_by_n)
    s32 = json.loads(sh([os.path.join(B, "step_bench"), "--params", str(32 * MI), "--world", "2",
                         "--steps", "10", "--json"]))
    z32 = a32["zero1_gloo_step_ms"]
    doc = [f"# Benchmark results", "",
           f"{datetime.date.today()} · {cpu[1] if cpu else 'unknown CPU'}, {os.cpu_count()} cores · commit {commit} · "
           f"anchors: torch {a32.get('torch')} ({PY})", "",
           "Regenerate: `bench/run_all.sh` (needs `scripts/setup.sh --bench` for the anchors).", "",
           "## Headline: 32 Mi params, W=2", "",
           f"sherd step {s32['step_ms']:.1f} ms (rs {s32['reduce_scatter_ms']:.1f}, norm {s32['norm_ms']:.1f}, "
           f"opt {s32['optimizer_ms']:.1f}, ag {s32['all_gather_ms']:.1f}) vs torch ZeRO-1 over gloo {z32:.1f} ms "
           f"in the same run: **{z32 / s32['step_ms']:.2f}x**. Server private memory "
           f"{s32['server_rss_anon'] / MI:.0f} MiB vs 16N/W = {s32['ideal_state_bytes'] / MI:.0f} MiB.", ""]
    doc += adamw_section(a32)
    doc += dataplane_section()
    doc += step_lines
    if chart(series, os.path.join(ROOT, "bench", "step_chart.png")):
        doc += ["![step time against model size](step_chart.png)", ""]
    doc += ["## Raw anchor output (32 Mi, W=2)", "", "```", json.dumps(a32, indent=1), "```", ""]
    doc += kept_sections()
    with open(os.path.join(ROOT, "bench", "RESULTS.md"), "w") as f:
        f.write("\n".join(doc))
    print("\n".join(doc))


if __name__ == "__main__":
    main()
