#!/usr/bin/env python3
"""A GPU co-tenant for measuring in-place release against stop/start, on a real GPU.

    gpu-cotenant.py prepare --dir W --gib 8          write W/shard-*.pt (fp16 weights)
    gpu-cotenant.py serve --dir W --port 8188        load W onto the GPU and serve HTTP
    gpu-cotenant.py measure --dir W --reps 5 --json OUT.json
    gpu-cotenant.py gate --dir W --bin vidi-operator --reps 5 --json OUT.json

The server holds the weights on the GPU, as ComfyUI or vLLM hold a model, and speaks their
release hooks:
  POST /free               ComfyUI: {"unload_models": true, "free_memory": true} drops the
                           weights (del + torch.cuda.empty_cache); the next /wake_up (or
                           /load) reads them from disk again
  POST /sleep?level=1      vLLM: weights offloaded to (pinned) host memory, GPU memory freed
  POST /wake_up            vLLM: back on the GPU (from host memory after /sleep, from disk
                           after /free)
  GET  /health             200 once serving: a matrix product on every shard ran
A co-tenant that can only be stopped is the same server killed (SIGTERM) and started afresh.

`measure` times, with NVML device memory readings (pynvml) every 5 ms:
  release → memory seen free, resume → serving again, for /free (+ reload from disk) and
  /sleep (+ wake from host memory); SIGTERM → memory seen free, fresh start → serving.
Memory counts as free when the device's used memory fell back within 1 GiB of what it was
before the server loaded its weights (the CUDA context of a live process stays).

`gate` checks the operator's own confirmation on the real GPU: `vidi-operator gpu gate` waits
for (free memory while the weights are held + 4 GiB); the release (`POST /free`) must let it
pass; a server started with `--ignore-free` (answers 200, frees nothing) must time it out (exit
4, naming the holder), and stopping that server (the operator's fallback) must let it pass.
"""
import argparse
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SHARD_GIB = 1


def prepare(args):
    import torch

    os.makedirs(args.dir, exist_ok=True)
    n = int(args.gib // SHARD_GIB)
    elems = SHARD_GIB * (1 << 30) // 2  # fp16
    side = int(elems**0.5)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        t = torch.randn(side, side, generator=g, dtype=torch.float32).to(torch.float16)
        torch.save({"w": t}, os.path.join(args.dir, f"shard-{i:03d}.pt"))
    os.sync()
    total = sum(os.path.getsize(os.path.join(args.dir, f)) for f in os.listdir(args.dir))
    print(f"wrote {n} shards, {total / (1 << 30):.2f} GiB, to {args.dir}", flush=True)


class Model:
    def __init__(self, wdir):
        import torch

        self.torch = torch
        self.wdir = wdir
        self.gpu = []
        self.host = []
        self.lock = threading.Lock()

    def shards(self):
        return sorted(os.path.join(self.wdir, f) for f in os.listdir(self.wdir) if f.endswith(".pt"))

    def load_from_disk(self):
        torch = self.torch
        self.gpu = [torch.load(p, map_location="cuda", weights_only=True)["w"] for p in self.shards()]
        self.host = []
        torch.cuda.synchronize()

    def free(self):
        self.gpu = []
        self.host = []
        gc.collect()
        self.torch.cuda.empty_cache()

    def sleep(self):
        torch = self.torch
        self.host = [t.to("cpu", non_blocking=False).pin_memory() for t in self.gpu]
        self.gpu = []
        gc.collect()
        torch.cuda.empty_cache()

    def wake(self):
        torch = self.torch
        if self.gpu:
            return
        if self.host:
            self.gpu = [t.to("cuda", non_blocking=True) for t in self.host]
            torch.cuda.synchronize()
            self.host = []
        else:
            self.load_from_disk()

    def serving(self):
        torch = self.torch
        if not self.gpu:
            return False
        for t in self.gpu:
            x = t[:256, :256]
            (x @ x).sum().item()
        torch.cuda.synchronize()
        return True


def serve(args):
    import torch

    torch.cuda.init()
    model = Model(args.dir)
    model.load_from_disk()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def reply(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                with model.lock:
                    ok = model.serving()
                return self.reply(200 if ok else 503, {"serving": ok})
            self.reply(404, {})

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            path = self.path.split("?")[0]
            with model.lock:
                if path == "/free" and args.ignore_free:
                    pass
                elif path == "/free":
                    model.free()
                elif path == "/sleep":
                    model.sleep()
                elif path in ("/wake_up", "/load"):
                    model.wake()
                else:
                    return self.reply(404, {})
            self.reply(200, {"ok": True})

    srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print(f"serving on {args.port}", flush=True)
    srv.serve_forever()


# ---------------------------------------------------------------- measuring


def nvml():
    import pynvml

    pynvml.nvmlInit()
    return pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)


def used(p, h):
    return p.nvmlDeviceGetMemoryInfo(h).used


def wait_until(pred, timeout, step=0.005):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic()
        time.sleep(step)
    raise TimeoutError("condition not met in time")


def http(method, url, body=None, timeout=120):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def drop_caches():
    """Evict the weights from the page cache, so a reload reads the disk. True if it worked."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def measure(args):
    p, h = nvml()
    base = used(p, h)
    port = args.port
    url = f"http://127.0.0.1:{port}"
    slack = 1 << 30

    def start():
        proc = subprocess.Popen([sys.executable, __file__, "serve", "--dir", args.dir, "--port", str(port)])
        wait_until(lambda: http("GET", url + "/health", timeout=2) == 200, 300, step=0.02)
        return proc

    def is_free():
        return used(p, h) <= base + slack

    def serving():
        return http("GET", url + "/health", timeout=5) == 200

    results = {"free_to_memory_free": [], "load_to_serving_disk": [], "sleep_to_memory_free": [],
               "wake_to_serving_host": [], "stop_to_memory_free": [], "start_to_serving_disk": [],
               "cold_cache": []}
    cold = drop_caches()
    proc = start()
    loaded = used(p, h)
    print(f"base used {base / 2**30:.2f} GiB; loaded {loaded / 2**30:.2f} GiB", flush=True)
    for rep in range(args.reps):
        # ComfyUI-style: /free drops the weights; resume reloads them from disk.
        t0 = time.monotonic()
        assert http("POST", url + "/free", {"unload_models": True, "free_memory": True}) == 200
        t1 = wait_until(is_free, 60)
        results["free_to_memory_free"].append(t1 - t0)
        cold = drop_caches()
        results["cold_cache"].append(cold)
        t0 = time.monotonic()
        assert http("POST", url + "/wake_up") == 200
        t1 = wait_until(serving, 120, step=0.02)
        results["load_to_serving_disk"].append(t1 - t0)
        # vLLM-style: /sleep?level=1 offloads to host memory; /wake_up brings it back.
        t0 = time.monotonic()
        assert http("POST", url + "/sleep?level=1") == 200
        t1 = wait_until(is_free, 60)
        results["sleep_to_memory_free"].append(t1 - t0)
        t0 = time.monotonic()
        assert http("POST", url + "/wake_up") == 200
        t1 = wait_until(serving, 120, step=0.02)
        results["wake_to_serving_host"].append(t1 - t0)
        # Stop only: SIGTERM, then a fresh process that loads from disk.
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        t1 = wait_until(is_free, 60)
        proc.wait(30)
        results["stop_to_memory_free"].append(t1 - t0)
        drop_caches()
        t0 = time.monotonic()
        proc = start()
        results["start_to_serving_disk"].append(time.monotonic() - t0)
        print(f"rep {rep}: " + ", ".join(f"{k}={v[-1]:.3f}" for k, v in results.items() if k != "cold_cache"),
              flush=True)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    summary = {}
    for k, v in results.items():
        if k == "cold_cache":
            continue
        summary[k] = {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "n": len(v)}
    out = {
        "gpu": p.nvmlDeviceGetName(h),
        "driver": p.nvmlSystemGetDriverVersion(),
        "weights_gib": round(sum(os.path.getsize(os.path.join(args.dir, f)) for f in os.listdir(args.dir)) / 2**30, 2),
        "held_gib": round((loaded - base) / 2**30, 2),
        "page_cache_dropped": all(results["cold_cache"]),
        "summary": summary,
        "raw": results,
    }
    print(json.dumps(out, indent=1), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


def gate(args):
    """Release (or stop) while `vidi-operator gpu gate` waits; how long until it passes."""
    p, h = nvml()
    port = args.port
    url = f"http://127.0.0.1:{port}"

    def start(*extra):
        proc = subprocess.Popen([sys.executable, __file__, "serve", "--dir", args.dir, "--port", str(port), *extra])
        wait_until(lambda: http("GET", url + "/health", timeout=2) == 200, 300, step=0.02)
        return proc

    def gate_proc(need, timeout):
        return subprocess.Popen(
            [args.bin, "gpu", "gate", "--min-free", str(need), "--timeout", timeout, "--interval", "50ms"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def free_bytes():
        return p.nvmlDeviceGetMemoryInfo(h).free

    out = {"gpu": p.nvmlDeviceGetName(h), "driver": p.nvmlSystemGetDriverVersion(),
           "release_to_gate_pass": [], "stop_to_gate_pass": []}
    proc = start()
    for rep in range(args.reps):
        need = free_bytes() + (4 << 30)
        g = gate_proc(need, "60s")
        time.sleep(1.0)
        assert g.poll() is None, "the gate passed before the release"
        t0 = time.monotonic()
        assert http("POST", url + "/free", {"unload_models": True, "free_memory": True}) == 200
        g.wait(60)
        t1 = time.monotonic()
        assert g.returncode == 0, g.stderr.read()
        out["release_to_gate_pass"].append(t1 - t0)
        print(f"rep {rep}: release -> gate passed in {t1 - t0:.3f}s; {g.stdout.read().strip()[:200]}", flush=True)
        assert http("POST", url + "/wake_up") == 200
        wait_until(lambda: http("GET", url + "/health", timeout=5) == 200, 120, step=0.02)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    # A release that answers 200 but frees nothing: the gate must time out, naming the holder.
    liar = start("--ignore-free")
    need = free_bytes() + (4 << 30)
    assert http("POST", url + "/free", {"unload_models": True, "free_memory": True}) == 200
    g = gate_proc(need, "5s")
    g.wait(60)
    err = g.stderr.read()
    out["ignored_release_gate_exit"] = g.returncode
    out["ignored_release_gate_message"] = err.strip().splitlines()[-1] if err.strip() else ""
    print(f"ignored release: gate exit {g.returncode}: {out['ignored_release_gate_message']}", flush=True)
    # The fallback: stop it; the gate passes once the process is gone.
    g = gate_proc(need, "60s")
    time.sleep(1.0)
    t0 = time.monotonic()
    liar.send_signal(signal.SIGTERM)
    g.wait(60)
    t1 = time.monotonic()
    liar.wait(30)
    out["stop_to_gate_pass"].append(t1 - t0)
    out["stop_gate_exit"] = g.returncode
    print(f"fallback stop -> gate exit {g.returncode} in {t1 - t0:.3f}s", flush=True)
    r = out["release_to_gate_pass"]
    out["summary"] = {"release_to_gate_pass_median_s": statistics.median(r), "min_s": min(r), "max_s": max(r), "n": len(r)}
    print(json.dumps(out, indent=1), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("--dir", required=True)
    a.add_argument("--gib", type=float, default=8)
    a = sub.add_parser("serve")
    a.add_argument("--dir", required=True)
    a.add_argument("--port", type=int, default=8188)
    a.add_argument("--ignore-free", action="store_true", help="answer /free with 200 but free nothing")
    a = sub.add_parser("measure")
    a.add_argument("--dir", required=True)
    a.add_argument("--port", type=int, default=8188)
    a.add_argument("--reps", type=int, default=5)
    a.add_argument("--json")
    a = sub.add_parser("gate")
    a.add_argument("--dir", required=True)
    a.add_argument("--port", type=int, default=8188)
    a.add_argument("--bin", required=True, help="the vidi-operator binary")
    a.add_argument("--reps", type=int, default=5)
    a.add_argument("--json")
    args = ap.parse_args()
    {"prepare": prepare, "serve": serve, "measure": measure, "gate": gate}[args.cmd](args)


if __name__ == "__main__":
    main()
