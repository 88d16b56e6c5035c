#!/usr/bin/env python3
"""The attacks of BENCHMARKS.md ("Bounded at every edge"), at full size,
against one registry binary: peak RSS of the registry in each, and whether
a normal publish, download and resolve succeed meanwhile.

    python3 tests/attacks.py REGISTRY_BINARY CLI_BINARY [attack ...]

Attacks: idle, diff, diff_small, unread, witness, webhook, watchers
(default: all).
Prints one JSON object per attack. Needs only the standard library.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timezone

REGISTRY, CLI = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
WANTED = sys.argv[3:] or ["idle", "diff", "diff_small", "unread", "witness", "webhook",
                          "watchers"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
    return 0


class Registry:
    def __init__(self, config=""):
        self.dir = tempfile.mkdtemp()
        self.run_cli("keygen", "--out", "k.pem")
        os.mkdir(f"{self.dir}/trusted")
        os.rename(f"{self.dir}/k.pub.pem", f"{self.dir}/trusted/k.pub.pem")
        self.grpc, self.http = free_port(), free_port()
        args = [REGISTRY, "--data-dir", f"{self.dir}/data",
                "--listen", f"127.0.0.1:{self.grpc}",
                "--http-listen", f"127.0.0.1:{self.http}",
                "--trusted-keys", f"{self.dir}/trusted"]
        if config:
            with open(f"{self.dir}/c.toml", "w") as f:
                f.write(config)
            args += ["--config", f"{self.dir}/c.toml"]
        self.log = open(f"{self.dir}/registry.log", "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.grpc), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.grpc}"

    def run_cli(self, *args, timeout=60):
        env = dict(os.environ, STACKPIN_SERVER=getattr(self, "url", "http://127.0.0.1:1"))
        return subprocess.run([CLI, "--state-dir", f"{self.dir}/state", *args],
                              cwd=self.dir, env=env, capture_output=True,
                              timeout=timeout)

    def publish(self, name, body):
        with open(f"{self.dir}/{name}.json", "w") as f:
            f.write(body)
        return self.ok("publish", f"{name}.json", "--release-id", name, "--key", "k.pem")

    def normal_work(self):
        """A publish, a download and a resolve, each within 20 s."""
        n = f"n{time.monotonic_ns()}"
        started = time.monotonic()
        steps = [("publish", lambda: self.publish(n, json.dumps({"normal": n}))),
                 ("pin", lambda: self.ok("pin", "--env", "prod", "--new-env", "--release-id", n)),
                 ("fetch", lambda: self.ok("fetch", "--release-id", n, "--out", f"{n}.out")),
                 ("resolve", lambda: self.ok("resolve", "--env", "prod", "--at",
                                             datetime.now(timezone.utc).isoformat()))]
        for step, run in steps:
            try:
                if not run():
                    return {"ok": False, "failed": step, "error": getattr(self, "last_error", "")}
            except subprocess.TimeoutExpired:
                return {"ok": False, "failed": f"{step} (timeout)"}
        return {"ok": True, "seconds": round(time.monotonic() - started, 2)}

    def ok(self, *args):
        r = self.run_cli(*args, timeout=20)
        if r.returncode != 0:
            self.last_error = r.stderr.decode()[-300:]
        return r.returncode == 0

    def reset_peak(self):
        with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5")

    def rss(self):
        return {"rss_mib": status(self.proc.pid, "VmRSS"),
                "peak_mib": status(self.proc.pid, "VmHWM")}

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def http_get(port, path, timeout=30):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, len(r.read())
    except urllib.error.HTTPError as e:
        return e.code, 0
    except Exception as e:  # noqa: BLE001 - a timeout is an outcome here
        return type(e).__name__, 0


def still_open(sockets):
    n = 0
    for s in sockets:
        s.setblocking(False)
        try:
            data = s.recv(1 << 16)
            while data:
                data = s.recv(1 << 16)
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


def big_document(name, mib):
    """A JSON document of about `mib` MiB, shaped like an ObjectOS artifact."""
    fields = [{"name": f"f{i}", "type": "text", "label": "x" * 40} for i in range(20)]
    objects, size, i = [], 0, 0
    while size < mib << 20:
        o = {"name": f"{name}{i}", "fields": fields}
        objects.append(o)
        size += len(json.dumps(o))
        i += 1
    return json.dumps({"objects": objects})


def attack_idle():
    r = Registry()
    out = {}
    for listener, port in [("http", r.http), ("grpc", r.grpc)]:
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(1030)]
        time.sleep(1)
        started = time.monotonic()
        code, _ = http_get(r.http, "/checkpoint", timeout=10)
        checkpoint = {"status": code, "seconds": round(time.monotonic() - started, 2)}
        work = r.normal_work()
        time.sleep(max(0, 20 - (time.monotonic() - started)))
        out[listener] = {"open_after_20s": still_open(socks), "checkpoint": checkpoint,
                         "normal": work, **r.rss()}
        for s in socks:
            s.close()
    r.stop()
    return out


def attack_diff(mib=15):
    r = Registry()
    for name in ["a", "b"]:
        assert r.publish(name, big_document(name, mib)), name
    out = {}
    for n in [1, 4, 8]:
        r.reset_peak()
        results = []
        threads = [threading.Thread(target=lambda: results.append(
            http_get(r.http, "/diff?from=a&to=b", timeout=300)[0])) for _ in range(n)]
        for t in threads:
            t.start()
        work = r.normal_work()
        for t in threads:
            t.join()
        out[f"{n} at once"] = {"statuses": sorted(map(str, results)), "normal": work, **r.rss()}
    r.stop()
    return out


def attack_diff_small():
    """Diffs the registry can do: two 1 MiB artifacts."""
    return attack_diff(1)


def attack_unread():
    r = Registry()
    assert r.publish("big", big_document("big", 15))
    r.reset_peak()
    socks = []
    for _ in range(32):
        s = socket.create_connection(("127.0.0.1", r.http))
        s.sendall(b"GET /artifact/big/json HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    time.sleep(5)
    at5 = r.rss()
    work = r.normal_work()
    time.sleep(70 - 5)
    out = {"at_5s": at5, "at_70s": {"open": still_open(socks), **r.rss()}, "normal": work}
    r.stop()
    return out


def fake_peer(answer):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)

    def serve():
        while True:
            c, _ = srv.accept()
            threading.Thread(target=answer, args=(c,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1]


def read_request(c):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            n = int(line.split(b":")[1])
            while len(body) < n:
                body += c.recv(65536)
    return head.split(b" ")[1].decode()


def attack_witness():
    wdir = tempfile.mkdtemp()
    witness_bin = os.path.join(os.path.dirname(REGISTRY), "stackpin-witness")
    if not os.path.exists(witness_bin):
        witness_bin = os.path.join(os.path.dirname(CLI), "stackpin-witness")
    vkey = subprocess.run([witness_bin, "key", "--name", "w.example/w", "--data-dir", wdir],
                          capture_output=True, text=True).stdout.strip()
    sent = {"bytes": 0}

    def answer(c):
        if read_request(c) is None:
            return
        c.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        chunk = b"x" * (1 << 20)
        try:
            for _ in range(1500):
                c.sendall(chunk)
                sent["bytes"] += len(chunk)
        except OSError:
            pass
        c.close()

    port = fake_peer(answer)
    r = Registry(f'[[witness]]\nvkey = "{vkey}"\nurl = "http://127.0.0.1:{port}"\n')
    work = r.normal_work()
    time.sleep(15)
    out = {"sent_mib": sent["bytes"] >> 20, "normal": work, **r.rss()}
    r.stop()
    return out


def attack_webhook():
    got = {"elsewhere": 0, "hook": 0}

    def elsewhere(c):
        if read_request(c) is not None:
            got["elsewhere"] += 1
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        c.close()

    other = fake_peer(elsewhere)

    def hook(c):
        if read_request(c) is not None:
            got["hook"] += 1
            c.sendall(f"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{other}/x\r\n"
                      "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
        c.close()

    port = fake_peer(hook)
    r = Registry(f'[[webhook]]\nname = "h"\nurl = "http://127.0.0.1:{port}/h"\n')
    time.sleep(6)
    work = r.normal_work()
    time.sleep(6)
    page = urllib.request.urlopen(f"http://127.0.0.1:{r.http}/log", timeout=10).read().decode()
    out = {"posted_to_hook": got["hook"], "posted_elsewhere": got["elsewhere"],
           "log_page_says_307": "HTTP 307" in page, "normal": work}
    r.stop()
    return out


def attack_watchers():
    r = Registry()
    assert r.publish("first", "{}")
    vkey = subprocess.run([REGISTRY, "key", "--data-dir", f"{r.dir}/data"],
                          capture_output=True, text=True).stdout.strip()
    env = dict(os.environ, STACKPIN_SERVER=r.url)
    watchers = [subprocess.Popen([CLI, "--state-dir", f"{r.dir}/w{i}", "watch",
                                  "--log-key", vkey], cwd=r.dir, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for i in range(85)]
    time.sleep(10)
    work = r.normal_work()
    out = {"watchers_running": sum(w.poll() is None for w in watchers), "normal": work, **r.rss()}
    for w in watchers:
        w.kill()
        w.wait()
    r.stop()
    return out


for name in WANTED:
    print(json.dumps({name: globals()[f"attack_{name}"]()}), flush=True)
