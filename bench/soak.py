#!/usr/bin/env python3
"""doorman soak test: hostile traffic and faults at once, on loopback only,
bounded in time; prints good-client success, time to banner, peak RSS and
file descriptors, panics and lost messages. See bench/README.md.

  python3 bench/soak.py                     # 5 minutes, 10,000 slowloris
  python3 bench/soak.py --seconds 60 --check  # what .ci/run runs

--check exits 1 unless every target holds: every good client served (a
clean 4xx, say at a backend kill, counts as served, a bare close never),
no panic, no lost message, doorman alive, and its RSS and file descriptors
back to baseline after the run.
"""
import argparse, errno, heapq, os, random, resource, selectors, signal, socket, subprocess, sys, tempfile, threading, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402

STOP = threading.Event()
START = time.time()
# The address the slowloris pool and the limit filler connect from: a
# second listed proxy, so their 10,000 sockets do not use up the ports of
# the first (HAProxy's and the other hostile kinds').
POOL_SOURCE = "127.0.0.11"
# The per-client limit the soak runs with, and the address that fills it.
CLIENT_LIMIT = 50
# The screening limit: below the slowloris clients that get past their
# header, so the flood fills it; cached good clients never need a place.
SCREENING_LIMIT = 1000
FILLER_IP = "198.51.100.7"
# RSS "back to baseline": what the flood added beyond the baseline must be
# given back but for this share of it, or this much, whichever is more: the
# pass and DNS caches keep what they learned of the flood's addresses, and
# so do the connection-rate tables (a network and its wider network each,
# and the networks at their limit) and the DNS failure cache. Measured
# after 10,000 slowloris: 5.3 to 8.0 MiB kept.
RSS_KEPT_SHARE = 0.10
RSS_KEPT_KIB = 12288


def fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def anon_kib(pid):
    """Anonymous RSS: the memory doorman allocated (its code pages, which
    grow as more of it runs, are not counted)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("RssAnon:"): return int(line.split()[1])
    return 0


def count(counters, key, n=1):
    with counters.setdefault("_lock", threading.Lock()):
        counters[key] = counters.get(key, 0) + n


def hostile(port, kind, counters):
    """One hostile client kind, in a loop until STOP."""
    rnd = random.Random(kind)
    while not STOP.is_set():
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=bench.PROXY_SOURCE)
            ip = f"198.18.{rnd.randrange(256)}.{rnd.randrange(256)}"
            header = bench.proxy_v1(ip, rnd.randrange(1024, 65535))
            if kind == "pregreet":
                s.sendall(header + b"EHLO zombie\r\n" * 20)
            elif kind == "bytewise":
                for b in header:
                    s.sendall(bytes([b])); time.sleep(0.01)
            elif kind == "longline":
                s.sendall(header + b"HELO " + b"x" * (1 << 20) + b"\r\n")
            elif kind == "garbage":
                s.sendall(os.urandom(rnd.randrange(1, 600)))
            s.settimeout(3)
            try:
                while s.recv(65536): pass
            except OSError:
                pass
            s.close(); count(counters, kind)
        except OSError:
            time.sleep(0.05)


class SlowPool:
    """Holds `size` slowloris connections to doorman at once, each sending
    one byte every `interval` seconds: half send their PROXY header that
    way (doorman's PROXY timeout ends them), half send it whole and then
    their SMTP commands that way. A closed one is reopened at once. One
    thread, one epoll."""

    def __init__(self, port, size, interval, counters):
        self.port, self.size, self.interval, self.counters = port, size, interval, counters
        self.sel = selectors.DefaultSelector(); self.timers = []; self.conns = {}
        self.rnd = random.Random(7); self.seq = 0; self.opened = 0

    def open_one(self):
        s = socket.socket(); s.setblocking(False)
        try:
            s.bind((POOL_SOURCE, 0))
            err = s.connect_ex(("127.0.0.1", self.port))
        except OSError:
            s.close(); return False
        if err not in (0, errno.EINPROGRESS):
            s.close(); return False
        ip = f"198.19.{self.rnd.randrange(256)}.{self.rnd.randrange(256)}"
        header = bench.proxy_v1(ip, self.rnd.randrange(1024, 65535))
        slow_header = self.seq % 2 == 0
        payload = header if slow_header else b"EHLO slowloris.test\r\n" + b"NOOP\r\n" * 1000
        conn = {"sock": s, "payload": payload, "pos": 0, "first": b"", "pending": b"" if slow_header else header}
        self.seq += 1; self.opened += 1
        self.conns[s.fileno()] = conn
        self.sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
        heapq.heappush(self.timers, (time.monotonic() + self.rnd.uniform(0.5, self.interval), self.seq, s.fileno()))
        return True

    def close(self, conn, reason):
        s = conn["sock"]
        try: self.sel.unregister(s)
        except (KeyError, ValueError): pass
        self.conns.pop(s.fileno(), None); s.close()
        code = conn["first"][:23].decode("ascii", "replace").strip() or reason
        count(self.counters, f"slowloris closed: {code}")

    def run(self):
        while not STOP.is_set():
            budget = 200  # new connections per turn, so the pool ramps up
            while len(self.conns) < self.size and budget and self.open_one(): budget -= 1
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, fd = heapq.heappop(self.timers)
                conn = self.conns.get(fd)
                if conn is None or conn["pending"]: continue
                try:
                    conn["sock"].send(conn["payload"][conn["pos"]:conn["pos"] + 1]); conn["pos"] += 1
                    if conn["pos"] < len(conn["payload"]):
                        heapq.heappush(self.timers, (now + self.interval, self.seq, fd)); self.seq += 1
                except BlockingIOError:
                    heapq.heappush(self.timers, (now + self.interval, self.seq, fd)); self.seq += 1
                except OSError:
                    self.close(conn, "send error")
            for key, events in self.sel.select(timeout=0.05):
                conn = key.data
                if conn["sock"].fileno() not in self.conns: continue
                if events & selectors.EVENT_WRITE:
                    if conn["pending"]:
                        try: conn["pending"] = conn["pending"][conn["sock"].send(conn["pending"]):]
                        except BlockingIOError: pass
                        except OSError: self.close(conn, "connect error"); continue
                    if not conn["pending"]:
                        self.sel.modify(conn["sock"], selectors.EVENT_READ, conn)
                        count(self.counters, "slowloris connected")
                if events & selectors.EVENT_READ:
                    try:
                        data = conn["sock"].recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        self.close(conn, "closed"); continue
                    if len(conn["first"]) < 64: conn["first"] += data
            self.counters["slowloris held"] = max(self.counters.get("slowloris held", 0), len(self.conns))
        for conn in list(self.conns.values()):
            conn["sock"].close()
        self.conns.clear()


def fill_client_limit(port, counters):
    """Every 10 s, opens CLIENT_LIMIT + 10 connections from one client and
    holds them for 5 s; counts the 421 too-many-connections refusals."""
    while not STOP.wait(3):
        socks = []
        for _ in range(CLIENT_LIMIT + 10):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(POOL_SOURCE, 0))
                s.sendall(bench.proxy_v1(FILLER_IP, 4000 + len(socks))); socks.append(s)
            except OSError:
                count(counters, "limit filler connect error")
        STOP.wait(1)
        for s in socks:
            s.settimeout(0.2)
            try:
                if s.recv(512).startswith(b"421 4.7.0 Error: too many connections"):
                    count(counters, "limit filler refused (421 too many connections)")
            except OSError:
                pass
        STOP.wait(4)
        for s in socks: s.close()
        STOP.wait(3)


class CleanRefusal(OSError):
    """doorman's own clean 4xx (a backend killed under the client): the
    client was answered, as a real MTA would be, and retries later."""


def good_client(port, results, sent_ids):
    n = 0
    while not STOP.is_set():
        n += 1
        msg_id = f"<soak-{os.getpid()}-{threading.get_ident()}-{n}@good.test>"
        t0 = time.perf_counter()
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=15)
            f = s.makefile("rwb")
            line = f.readline()
            while line[:4] == b"220-": line = f.readline()
            banner_ms = (time.perf_counter() - t0) * 1000
            if line.startswith(b"4") and line[3:4] == b" ": raise CleanRefusal(f"banner {line[:60]!r}")
            if not line.startswith(b"220 "): raise OSError(f"banner {line[:60]!r}")
            def cmd(c, expect):
                f.write(c); f.flush(); r = f.readline()
                while r[3:4] == b"-": r = f.readline()
                if r.startswith(b"4") and r[3:4] == b" ": raise CleanRefusal(f"{c[:10]!r} got {r[:60]!r}")
                if not r.startswith(expect): raise OSError(f"{c[:10]!r} got {r[:60]!r}")
            cmd(b"EHLO good.test\r\n", b"250")
            cmd(b"MAIL FROM:<g@good.test>\r\n", b"250")
            cmd(b"RCPT TO:<r@doorman.test>\r\n", b"250")
            cmd(b"DATA\r\n", b"354")
            cmd(f"Message-ID: {msg_id}\r\nSubject: soak\r\n\r\nhello\r\n.\r\n".encode(), b"250")
            sent_ids.append(msg_id)
            try: cmd(b"QUIT\r\n", b"221")
            except OSError: pass
            s.close(); results.append((True, banner_ms))
        except CleanRefusal as e:
            results.append((True, (time.perf_counter() - t0) * 1000, f"clean 4xx: {e}"[:160]))
        except OSError as e:
            results.append((False, (time.perf_counter() - t0) * 1000, f"at {time.time() - START:.1f}s: {e!r}"[:160]))
        time.sleep(0.05)


def config_text(port, sink_ports, dns, redis_port):
    backends = "".join(f'[[backend]]\naddress = "127.0.0.1:{p}"\nconnect_timeout = "2s"\n' for p in sink_ports)
    return f"""hostname = "mx.soak.test"
shutdown_grace = "5s"
[proxy]
hosts_file = "haproxy_hosts"
timeout = "30s"
[[listener]]
address = "127.0.0.1:{port}"
{backends}[pool]
check_interval = "1s"
rise = 1
fall = 2
[greet]
wait = "1s"
action = "enforce"
[dnsbl]
sites = ["bl.test*2"]
threshold = 2
action = "drop"
timeout = "1s"
nameservers = ["127.0.0.1:{dns}"]
[engine]
command_time = "60s"
[limits]
client_connections = {CLIENT_LIMIT}
screening = {SCREENING_LIMIT}
total = 15000
[cache]
store = "redis"
redis_url = "redis://127.0.0.1:{redis_port}"
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=300, help="length of the loaded run")
    ap.add_argument("--slowloris", type=int, default=10000, help="slowloris connections held at once")
    ap.add_argument("--check", action="store_true", help="exit 1 unless every target holds")
    ap.add_argument("--debug", action="store_true", help="soak the debug build (what `cargo test` built) instead of a release build")
    args = ap.parse_args()
    profile = "debug" if args.debug else "release"
    # Where cargo puts its build: CARGO_TARGET_DIR when set, as for cargo.
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(bench.ROOT, "target")
    doorman_bin = os.path.join(bench.ROOT, target, profile, "doorman")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.slowloris + 2000
    if hard != resource.RLIM_INFINITY and hard < want:
        try:  # root may raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want)); soft = hard = want
        except (ValueError, OSError):
            sys.exit(f"soak: needs {want} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    subprocess.run(["cargo", "build", "--quiet"] + ([] if args.debug else ["--release"]), cwd=bench.ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="doorman-soak-"); os.chmod(tmp, 0o755)
    procs = bench.Procs()
    try:
        # Two backends: one is killed and restarted at a time.
        sink_ports = [bench.free_port(), bench.free_port()]
        sink_log = open(os.path.join(tmp, "sink.log"), "w")
        def start_sink(i):
            return subprocess.Popen([doorman_bin, "sink", "--listen", f"127.0.0.1:{sink_ports[i]}", "--proxy"], stderr=sink_log, stdout=subprocess.DEVNULL)
        sinks = [start_sink(0), start_sink(1)]
        for p in sink_ports: bench.wait_port(p)
        zones = os.path.join(bench.ROOT, "fixtures", "dnsbl"); dns = bench.free_port()
        rbldnsd = ["rbldnsd", "-n", "-w", zones, "-b", f"127.0.0.1/{dns}", "bl.test:ip4set:bl.test"]
        rbl = procs.start(rbldnsd)
        redis_port = bench.free_port()
        redis_cmd = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        redis = procs.start(redis_cmd); bench.wait_port(redis_port)
        d = tempfile.mkdtemp(dir=tmp); port = bench.free_port()
        open(os.path.join(d, "haproxy_hosts"), "w").write(f"127.0.0.10\n{POOL_SOURCE}\n")
        config = os.path.join(d, "doorman.toml")
        open(config, "w").write(config_text(port, sink_ports, dns, redis_port))
        log_path = os.path.join(tmp, "doorman.log")
        dm = subprocess.Popen([doorman_bin, "run", "--config", config], stderr=open(log_path, "w"), stdout=subprocess.DEVNULL, env=dict(os.environ, DOORMAN_LOG="warn"))
        procs.procs.append(dm); bench.wait_port(port)
        front = bench.free_port(); bench.haproxy(tmp, procs, front, port, "soak")
        time.sleep(1)

        # A quiet run first: the baseline for good clients, and for RSS.
        quiet, quiet_ids = [], []
        STOP.clear()
        t = threading.Thread(target=good_client, args=(front, quiet, quiet_ids)); t.start()
        time.sleep(min(20, max(5, args.seconds // 6))); STOP.set(); t.join()
        time.sleep(2)
        base_rss, base_fds = anon_kib(dm.pid), min(fds(dm.pid) for _ in range(5) if not time.sleep(0.2))

        STOP.clear()
        counters, results, sent_ids = {}, [], []
        threads = [threading.Thread(target=good_client, args=(front, results, sent_ids)) for _ in range(4)]
        kinds = ["pregreet"] * 4 + ["bytewise"] * 4 + ["longline"] * 2 + ["garbage"] * 4
        threads += [threading.Thread(target=hostile, args=(port, k, counters), daemon=True) for k in kinds]
        pool = SlowPool(port, args.slowloris, 3.0, counters)
        threads += [threading.Thread(target=pool.run, daemon=True), threading.Thread(target=fill_client_limit, args=(port, counters), daemon=True)]
        for th in threads: th.start()
        peak_rss, peak_fds = base_rss, base_fds
        end = time.time() + args.seconds
        tick, faults = 0, {}
        def fault(name):
            faults[name] = faults.get(name, 0) + 1
            if name != "SIGHUP": print(f"  {time.time() - START:.1f}s: {name}", flush=True)
        while time.time() < end:
            time.sleep(1); tick += 1
            peak_rss = max(peak_rss, anon_kib(dm.pid)); peak_fds = max(peak_fds, fds(dm.pid))
            if tick % 5 == 0:
                os.kill(dm.pid, signal.SIGHUP); fault("SIGHUP")
            if tick % 45 == 20:
                victim = (tick // 45) % 2
                fault("backend killed")
                sinks[victim].kill(); sinks[victim].wait(); time.sleep(2); sinks[victim] = start_sink(victim)
            if tick % 40 == 20:
                fault("rbldnsd killed")
                rbl.kill(); rbl.wait(); time.sleep(3); rbl = procs.start(rbldnsd)
            if tick % 40 == 30:
                fault("redis killed")
                redis.kill(); redis.wait(); time.sleep(5); redis = procs.start(redis_cmd)
        STOP.set()
        for th in threads[:4]: th.join()
        time.sleep(15)
        # The fewest of a few samples: a backend health check may hold a
        # socket for a millisecond at any moment.
        after_rss, after_fds = anon_kib(dm.pid), min(fds(dm.pid) for _ in range(5) if not time.sleep(0.2))
        alive = dm.poll() is None
        for sink in sinks: sink.kill(); sink.wait()
        sink_log.close()
        delivered = open(os.path.join(tmp, "sink.log")).read()
        lost = [m for m in sent_ids if f"message-id={m}" not in delivered]
        log = open(log_path).read()
        panics = log.count("panicked")

        def p99(rows):
            xs = sorted(r[1] for r in rows if r[0] and len(r) == 2)
            return xs[max(int(len(xs) * 0.99) - 1, 0)] if xs else float("nan")
        ok = sum(1 for r in results if r[0])
        rate = 100.0 * ok / max(len(results), 1)
        counters.pop("_lock", None)
        print(f"soak: {args.seconds}s, {profile} build; faults: {faults}")
        for key in sorted(counters): print(f"  {key}: {counters[key]}")
        for r in results:
            if not r[0]: print(f"  good client failed after {r[1]:.0f} ms: {r[2]}")
        print(f"{'measure':46} value")
        clean = sum(1 for r in results if r[0] and len(r) > 2)
        print(f"{'good clients answered / tried':46} {ok}/{len(results)} ({rate:.2f}%), {clean} of them with a clean 4xx")
        print(f"{'good p99 time to banner, quiet / under load':46} {p99(quiet):.1f} ms / {p99(results):.1f} ms")
        print(f"{'slowloris connections held at once (peak)':46} {counters.get('slowloris held', 0)}")
        print(f"{'doorman anonymous RSS KiB: base / peak / after':46} {base_rss} / {peak_rss} / {after_rss}")
        print(f"{'doorman fds: baseline / peak / after':46} {base_fds} / {peak_fds} / {after_fds}")
        print(f"{'doorman still running':46} {alive}")
        print(f"{'panics':46} {panics}")
        print(f"{'lost messages (accepted, not at the sink)':46} {len(lost)}")
        failed = []
        if ok < len(results): failed.append(f"{len(results) - ok} good clients not answered (the target is 100%)")
        if panics: failed.append("panics")
        if lost: failed.append("lost messages")
        if not alive: failed.append("doorman died")
        if after_fds > base_fds: failed.append("file descriptors above baseline")
        kept = (after_rss - base_rss) / max(peak_rss - base_rss, 1)
        allowed = max(RSS_KEPT_SHARE * (peak_rss - base_rss), RSS_KEPT_KIB)
        print(f"{'flood RSS kept after the run':46} {after_rss - base_rss} KiB = {100 * kept:.1f}% "
              f"(at most {100 * RSS_KEPT_SHARE:.0f}% or {RSS_KEPT_KIB} KiB)")
        if after_rss - base_rss > allowed: failed.append("RSS not back to baseline")
        if not counters.get("limit filler refused (421 too many connections)"): failed.append("the client limit never refused")
        if not counters.get("slowloris closed: 421 4.3.2 All screening"): failed.append("the screening limit never refused")
        print("result: " + ("PASS" if not failed else "FAIL: " + "; ".join(failed)))
        if args.check and failed: sys.exit(1)
    finally:
        STOP.set(); procs.stop()


if __name__ == "__main__":
    main()
