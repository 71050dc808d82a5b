#!/usr/bin/env python3
"""doorman soak test: hostile traffic and faults at once, on loopback only,
bounded in time; prints good-client success, time to banner, peak RSS and
file descriptors, panics and lost messages. See bench/README.md.

  python3 bench/soak.py              # 5 minutes
  python3 bench/soak.py --seconds 90 # a short soak
"""
import argparse, os, random, signal, socket, subprocess, sys, tempfile, threading, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402

STOP = threading.Event()


def fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def hostile(port, kind, counters):
    """One hostile client kind, in a loop until STOP."""
    rnd = random.Random(kind)
    while not STOP.is_set():
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=bench.PROXY_SOURCE)
            ip = f"198.18.{rnd.randrange(256)}.{rnd.randrange(256)}"
            header = bench.proxy_v1(ip, rnd.randrange(1024, 65535))
            if kind == "slowloris":
                s.sendall(header)
                for _ in range(5):
                    if STOP.is_set(): break
                    s.sendall(b"X"); time.sleep(2)
            elif kind == "pregreet":
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
            s.close(); counters[kind] = counters.get(kind, 0) + 1
        except OSError:
            time.sleep(0.05)


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
            if not line.startswith(b"220 "): raise OSError(line)
            def cmd(c, expect):
                f.write(c); f.flush(); r = f.readline()
                while r[3:4] == b"-": r = f.readline()
                if not r.startswith(expect): raise OSError(r)
            cmd(b"EHLO good.test\r\n", b"250")
            cmd(b"MAIL FROM:<g@good.test>\r\n", b"250")
            cmd(b"RCPT TO:<r@doorman.test>\r\n", b"250")
            cmd(b"DATA\r\n", b"354")
            cmd(f"Message-ID: {msg_id}\r\nSubject: soak\r\n\r\nhello\r\n.\r\n".encode(), b"250")
            sent_ids.append(msg_id)
            try: cmd(b"QUIT\r\n", b"221")
            except OSError: pass
            s.close(); results.append((True, banner_ms))
        except OSError:
            results.append((False, (time.perf_counter() - t0) * 1000))
        time.sleep(0.05)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=300)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=bench.ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="doorman-soak-"); os.chmod(tmp, 0o755)
    procs = bench.Procs()
    try:
        # Two backends: one is killed and restarted at a time.
        sink_ports = [bench.free_port(), bench.free_port()]
        sink_log = open(os.path.join(tmp, "sink.log"), "w")
        def start_sink(i):
            return subprocess.Popen([bench.DOORMAN, "sink", "--listen", f"127.0.0.1:{sink_ports[i]}", "--proxy"], stderr=sink_log, stdout=subprocess.DEVNULL)
        sinks = [start_sink(0), start_sink(1)]
        for p in sink_ports: bench.wait_port(p)
        zones = os.path.join(bench.ROOT, "fixtures", "dnsbl"); dns = bench.free_port()
        rbl = procs.start(["rbldnsd", "-n", "-w", zones, "-b", f"127.0.0.1/{dns}", "bl.test:ip4set:bl.test"])
        d = tempfile.mkdtemp(dir=tmp); port = bench.free_port()
        open(os.path.join(d, "haproxy_hosts"), "w").write("127.0.0.10\n")
        config = os.path.join(d, "doorman.toml")
        open(config, "w").write(f"""hostname = "mx.soak.test"
shutdown_grace = "5s"
[proxy]
hosts_file = "haproxy_hosts"
timeout = "5s"
[[listener]]
address = "127.0.0.1:{port}"
[[backend]]
address = "127.0.0.1:{sink_ports[0]}"
connect_timeout = "2s"
[[backend]]
address = "127.0.0.1:{sink_ports[1]}"
connect_timeout = "2s"
[pool]
check_interval = "1s"
rise = 1
fall = 2
[greet]
wait = "1s"
[dnsbl]
sites = ["bl.test*2"]
threshold = 2
action = "drop"
timeout = "1s"
nameservers = ["127.0.0.1:{dns}"]
[engine]
command_time = "10s"
[limits]
client_connections = 2000
screening = 12000
total = 15000
[cache]
store = "memory"
""")
        log_path = os.path.join(tmp, "doorman.log")
        dm = subprocess.Popen([bench.DOORMAN, "run", "--config", config], stderr=open(log_path, "w"), stdout=subprocess.DEVNULL, env=dict(os.environ, DOORMAN_LOG="warn"))
        procs.procs.append(dm); bench.wait_port(port)
        front = bench.free_port(); bench.haproxy(tmp, procs, front, port, "soak")
        time.sleep(1)
        base_rss, base_fds = bench.rss_kib(dm.pid), fds(dm.pid)

        # A quiet run first: the baseline for good clients.
        quiet, quiet_ids = [], []
        STOP.clear()
        t = threading.Thread(target=good_client, args=(front, quiet, quiet_ids)); t.start()
        time.sleep(min(20, args.seconds // 6)); STOP.set(); t.join()

        STOP.clear()
        counters, results, sent_ids = {}, [], []
        threads = [threading.Thread(target=good_client, args=(front, results, sent_ids)) for _ in range(4)]
        kinds = ["slowloris"] * 300 + ["pregreet"] * 4 + ["bytewise"] * 4 + ["longline"] * 2 + ["garbage"] * 4
        threads += [threading.Thread(target=hostile, args=(port, k, counters), daemon=True) for k in kinds]
        for th in threads: th.start()
        peak_rss, peak_fds = base_rss, base_fds
        end = time.time() + args.seconds
        tick = 0
        while time.time() < end:
            time.sleep(1); tick += 1
            peak_rss = max(peak_rss, bench.rss_kib(dm.pid)); peak_fds = max(peak_fds, fds(dm.pid))
            if tick % 5 == 0: os.kill(dm.pid, signal.SIGHUP)
            if tick % 30 == 10:
                victim = (tick // 30) % 2
                sinks[victim].kill(); sinks[victim].wait(); time.sleep(2); sinks[victim] = start_sink(victim)
            if tick % 40 == 20:
                rbl.kill(); rbl.wait(); time.sleep(3)
                rbl = procs.start(["rbldnsd", "-n", "-w", zones, "-b", f"127.0.0.1/{dns}", "bl.test:ip4set:bl.test"])
        STOP.set()
        for th in threads[:4]: th.join()
        time.sleep(8)
        after_rss, after_fds = bench.rss_kib(dm.pid), fds(dm.pid)
        alive = dm.poll() is None
        for sink in sinks: sink.kill(); sink.wait()
        sink_log.close()
        delivered = open(os.path.join(tmp, "sink.log")).read()
        lost = [m for m in sent_ids if f"message-id={m}" not in delivered]
        log = open(log_path).read()
        panics = log.count("panicked")

        def p99(rows):
            xs = sorted(ms for ok, ms in rows if ok)
            return xs[max(int(len(xs) * 0.99) - 1, 0)] if xs else float("nan")
        ok = sum(1 for good, _ in results if good)
        print(f"soak: {args.seconds}s, hostile clients by kind: {counters}")
        print(f"{'measure':44} value")
        print(f"{'good clients ok / tried':44} {ok}/{len(results)} ({100.0*ok/max(len(results),1):.2f}%)")
        print(f"{'good p99 time to banner, quiet / under load':44} {p99(quiet):.1f} ms / {p99(results):.1f} ms")
        print(f"{'doorman RSS KiB: baseline / peak / after':44} {base_rss} / {peak_rss} / {after_rss}")
        print(f"{'doorman fds: baseline / peak / after':44} {base_fds} / {peak_fds} / {after_fds}")
        print(f"{'doorman still running':44} {alive}")
        print(f"{'panics':44} {panics}")
        print(f"{'lost messages (accepted, not at the sink)':44} {len(lost)}")
    finally:
        STOP.set(); procs.stop()


if __name__ == "__main__":
    main()
