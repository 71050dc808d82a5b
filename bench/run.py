#!/usr/bin/env python3
"""doorman benchmarks: doorman against a direct path and against Postfix's
postscreen, on loopback, each scenario run several times; prints one table
of medians with the ratios to the anchors. See bench/README.md.

Needs root (Postfix's postscreen instance), and Debian's haproxy, postfix
(smtp-sink, smtp-source, postscreen) and rbldnsd.
"""
import argparse, collections, os, resource, shutil, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOORMAN = os.path.join(ROOT, "target", "release", "doorman")
# The address the proxies (HAProxy, and this script when it plays one) use.
PROXY_SOURCE = ("127.0.0.10", 0)


# Ports below Linux's ephemeral range (32768-60999), handed out in turn:
# a port the kernel picked for ":0" and released can be taken at once by an
# outgoing connection's local port, and the daemon told to listen on it fails.
_next_port = [10000 + (os.getpid() * 7919) % 22768]


def free_port():
    while True:
        port = _next_port[0]; _next_port[0] = 10000 + (port - 10000 + 1) % 22768
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                s = socket.socket(socket.AF_INET, kind); s.bind(("127.0.0.1", port)); s.close()
            return port
        except OSError:
            continue


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close(); return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Procs:
    def __init__(self): self.procs = []; self.cleanups = []
    def start(self, args, **kw):
        kw.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, **kw); self.procs.append(p); return p
    def stop(self):
        for p in self.procs:
            try: p.kill(); p.wait(5)
            except Exception: pass
        for c in self.cleanups:
            try: c()
            except Exception: pass


def rss_kib(pid):
    total = 0
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"): total = int(line.split()[1])
    return total


def cpu_split(pid):
    """User and system CPU seconds of a process."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def tree_pids(pid):
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children = {}
    for line in out.split("\n"):
        if line.strip():
            a, b = map(int, line.split()); children.setdefault(b, []).append(a)
    seen, todo = [], [pid]
    while todo:
        p = todo.pop(); seen.append(p); todo.extend(children.get(p, []))
    return seen


def haproxy(tmp, procs, front, server_port, name, send_proxy=True, nolinger=False, accept_proxy=False):
    cfg = os.path.join(tmp, f"haproxy-{name}.cfg")
    # `accept_proxy`: the front reads a PROXY header first, as doorman does.
    reads_header = " accept-proxy" if accept_proxy else ""
    # HAProxy connects from 127.0.0.10, the address haproxy_hosts lists, so
    # that smtp-source's own 127.0.0.1 is a client, not a proxy.
    proxy = "source 127.0.0.10 send-proxy-v2" if send_proxy else ""
    # S7's fronts only: a reset, not a FIN, where HAProxy closes first (the
    # client leaves after the banner), or tens of thousands of connections
    # to one server use up the local ports in TIME_WAIT. Not on the paths
    # S1, S3 and S5 compare: a reset saves packets and TIME_WAIT entries
    # that doorman, closing normally, pays for.
    linger = "    option nolinger\n" if nolinger else ""
    open(cfg, "w").write(f"""global
    maxconn 9000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend f
    bind 127.0.0.1:{front}{reads_header}
    default_backend b
backend b
{linger}    server s1 127.0.0.1:{server_port} {proxy}
""")
    p = procs.start(["haproxy", "-f", cfg, "-db"]); wait_port(front)
    return p


# The [runtime] model every doorman of this run uses (--runtime).
RUNTIME = ["per-core"]


def doorman(tmp, procs, backend_port, sections, send_proxy="none", files=None, log=None, binary=None, model=None, cache="memory"):
    """A doorman handing off to `backend_port`. Only warnings are logged,
    unless `log` names a file: then the default lines go there, as an
    operator runs it. Its listener is set as the README advises behind
    HAProxy (every client comes from 127.0.0.10, the listed proxy:
    `proxy = "required"`, `defer_accept = true`), but for an older build
    (`binary`), which may not know those keys."""
    d = tempfile.mkdtemp(dir=tmp); port = free_port()
    listener = "" if binary else 'proxy = "required"\ndefer_accept = true\n'
    open(os.path.join(d, "haproxy_hosts"), "w").write("127.0.0.10\n")
    for name, text in (files or {}).items():
        open(os.path.join(d, name), "w").write(text)
    open(os.path.join(d, "doorman.toml"), "w").write(f"""hostname = "mx.bench.test"
[proxy]
hosts_file = "haproxy_hosts"
[[listener]]
address = "127.0.0.1:{port}"
{listener}[[backend]]
address = "127.0.0.1:{backend_port}"
send_proxy = "{send_proxy}"
[limits]
client_connections = 0
screening = 0
total = 0
[cache]
store = "{cache}"
[log]
format = "postscreen"
[runtime]
model = "{model or RUNTIME[0]}"
{sections}
""")
    env = dict(os.environ, DOORMAN_LOG="warn")
    output = {}
    if log:
        del env["DOORMAN_LOG"]; output["stderr"] = open(log, "ab")
    p = procs.start([binary or DOORMAN, "run", "--config", os.path.join(d, "doorman.toml")], env=env, **output)
    wait_port(port); return p, port


# The queues of the Postfix instances this run started.
QUEUES = []


def drain_queues(limit=300):
    """Waits until Postfix has delivered every queued message to smtp-sink,
    so its deliveries do not take CPU from the next measurement."""
    end = time.time() + limit
    while time.time() < end:
        queued = sum(len(files) for q in QUEUES for sub in ("maildrop", "incoming", "active")
                     for _, _, files in os.walk(os.path.join(q, sub)))
        if not queued: return
        time.sleep(0.5)


def postfix(tmp, procs, sink_port, extra, front="postscreen"):
    """A private Postfix relaying to smtp-sink; its port listens with
    `front`: "postscreen" (then smtpd by fd passing) or "smtpd" itself."""
    base = tempfile.mkdtemp(dir=tmp, prefix="pf"); os.chmod(base, 0o755)
    QUEUES.append(os.path.join(base, "queue"))
    for sub in ("etc", "queue", "data"): os.makedirs(os.path.join(base, sub))
    shutil.chown(os.path.join(base, "data"), user="postfix")
    port = free_port()
    open(os.path.join(base, "etc/main.cf"), "w").write(f"""compatibility_level = 3.6
queue_directory = {base}/queue
data_directory = {base}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postscreen.bench.test
mydestination =
local_recipient_maps =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
maillog_file = {base}/maillog
maillog_file_prefixes = {base}
relayhost = [127.0.0.1]:{sink_port}
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
postscreen_upstream_proxy_protocol = haproxy
postscreen_cache_map = btree:$data_directory/postscreen_cache
postscreen_client_connection_count_limit = 0
postscreen_pre_queue_limit = 20000
postscreen_post_queue_limit = 20000
default_process_limit = 20000
smtp_tls_security_level = none
smtpd_peername_lookup = no
{extra}
""")
    listener = "n - n - 1 postscreen" if front == "postscreen" else "n - n - - smtpd"
    open(os.path.join(base, "etc/master.cf"), "w").write(f"""127.0.0.1:{port} inet {listener}
smtpd pass - - n - - smtpd
tlsmgr unix - - n 1000? 1 tlsmgr
dnsblog unix - - n - 0 dnsblog
tlsproxy unix - - n - 0 tlsproxy
postlog unix-dgram n - n - 1 postlogd
proxymap unix - - n - - proxymap
anvil unix - - n - 1 anvil
rewrite unix - - n - - trivial-rewrite
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
smtp unix - - n - - smtp
relay unix - - n - - smtp
scache unix - - n - 1 scache
""")
    etc = os.path.join(base, "etc")
    subprocess.run(["timeout", "30", "postfix", "-c", etc, "start"], check=True, capture_output=True)
    procs.cleanups.append(lambda: subprocess.run(["timeout", "30", "postfix", "-c", etc, "stop"], capture_output=True))
    wait_port(port)
    master = int(open(os.path.join(base, "data", "master.pid")).read().split()[0]) if os.path.exists(os.path.join(base, "data", "master.pid")) else None
    if master is None:
        for line in open(os.path.join(base, "queue", "pid", "master.pid")): master = int(line.strip())
    return port, master


def tree_cpu(pid):
    """CPU seconds of a process tree: the live processes' own, and what
    their reaped children used."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in tree_pids(pid):
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15]) / tick
    return total


def pss_kib(pids):
    """Proportional set size of the processes, in KiB (shared pages split
    among their users, as a process tree's real cost)."""
    total = 0
    for p in pids:
        try:
            for line in open(f"/proc/{p}/smaps_rollup"):
                if line.startswith("Pss:"): total += int(line.split()[1])
        except OSError:
            pass
    return total


# The load generator's CPU seconds per 1000 TLS sessions, each run.
TLS_LOAD_CPU = []


def tls_sessions(port, count, proxy=True, nagle=False):
    """S8: new clients, each connect, banner, EHLO, STARTTLS, a full TLS
    handshake, EHLO, QUIT (bench/loadgen); completed sessions per second.
    `nagle`: the clients leave Nagle's algorithm on, as Postfix's smtp
    client does. Notes the load generator's own CPU in TLS_LOAD_CPU."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    args = [LOADGEN, "screen", "--target", f"127.0.0.1:{port}", "--count", str(count), "--tls",
            "--concurrency", "50", "--first-octet", str(next(FRESH_OCTETS))]
    if not proxy: args.append("--no-proxy")
    if nagle: args.append("--nagle")
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=600).stdout.split()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    TLS_LOAD_CPU.append((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / (count / 1000))
    if int(out[0]) < count * 0.99:
        raise RuntimeError(f"TLS sessions on {port}: only {out[0]} of {count} completed")
    return float(out[1])


def tls_messages(port, count, size, nagle=False):
    """S5 with TLS: new clients, 20 at a time, each a message of `size`
    bytes inside STARTTLS; messages accepted per second. `nagle`: the
    clients leave Nagle's algorithm on, as Postfix's smtp client does."""
    args = [LOADGEN, "screen", "--target", f"127.0.0.1:{port}", "--count", str(count), "--tls",
            "--message", str(size), "--concurrency", "20", "--first-octet", str(next(FRESH_OCTETS))]
    if nagle: args.append("--nagle")
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=600).stdout.split()
    if int(out[0]) < count * 0.99:
        raise RuntimeError(f"TLS messages on {port}: only {out[0]} of {count} accepted")
    return float(out[1])


def tls_memory(port, pids, count):
    """S8's memory: `count` clients idle inside TLS after their second EHLO;
    the PSS the server's processes grew by, per client."""
    before = pss_kib(pids())
    load = subprocess.Popen([LOADGEN, "screen", "--target", f"127.0.0.1:{port}", "--count", str(count),
                             "--concurrency", str(count), "--tls", "--hold", "30",
                             "--first-octet", str(next(FRESH_OCTETS))], stdout=subprocess.PIPE, text=True)
    time.sleep(20)
    after = pss_kib(pids())
    served = int(load.communicate(timeout=120)[0].split()[0])
    if served < count * 0.99:
        raise RuntimeError(f"TLS memory on {port}: only {served} of {count} held")
    return max(after - before, 0) * 1024 / count


def certificate(tmp):
    """An RSA-2048 certificate for mx.bench.test that Postfix can read."""
    pem, key = os.path.join(tmp, "mx.pem"), os.path.join(tmp, "mx.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=mx.bench.test", "-addext", "subjectAltName=DNS:mx.bench.test",
                    "-keyout", key, "-out", pem], check=True, capture_output=True)
    os.chmod(key, 0o644)
    return pem, key


def smtp_source(port, messages, sessions, size):
    start = time.time()
    subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(messages), "-c", "-l", str(size),
                    "-f", "a@x.test", "-t", "b@x.test", f"127.0.0.1:{port}"],
                   check=True, capture_output=True, timeout=600)
    return messages / (time.time() - start)


LOADGEN = os.path.join(ROOT, "target", "release", "doorman-loadgen")


def time_to_banner(port, count):
    """p50 and p99 ms from connect to the first byte, one connection after
    another (bench/loadgen)."""
    out = subprocess.run([LOADGEN, "banner", "--target", f"127.0.0.1:{port}", "--count", str(count)],
                         check=True, capture_output=True, text=True, timeout=600).stdout.split()
    return float(out[0]), float(out[1])


def proxy_v1(ip, port):
    return f"PROXY TCP4 {ip} 127.0.0.1 {port} 25\r\n".encode()


FRESH_OCTETS = iter(range(20, 127))


def screening_rate(port, count):
    """New clients (a fresh address each), PROXY header straight to the
    screener, 100 at a time, from addresses no earlier run used; clients that got a final 220 within 10 s, per
    second (bench/loadgen, so the load is light next to the screener)."""
    out = subprocess.run([LOADGEN, "screen", "--target", f"127.0.0.1:{port}", "--count", str(count),
                          "--first-octet", str(next(FRESH_OCTETS))],
                         check=True, capture_output=True, text=True, timeout=600).stdout.split()
    return float(out[1])


def waiting_memory(port, pids, count):
    before = sum(rss_kib(p) for p in pids() if os.path.exists(f"/proc/{p}"))
    socks = []
    for n in range(count):
        s = socket.create_connection(("127.0.0.1", port), source_address=PROXY_SOURCE)
        s.sendall(proxy_v1(f"11.0.{n >> 8 & 255}.{n & 255}", 2000 + n)); socks.append(s)
    time.sleep(3.0)
    after = sum(rss_kib(p) for p in pids() if os.path.exists(f"/proc/{p}"))
    for s in socks: s.close()
    return max(after - before, 0) * 1024 / count


# The load generator's CPU seconds per 1000 flood connections, each run.
FLOOD_CPU = []


def flood(port, count, expect, source="127.0.0.1"):
    """First reply lines per second through a front, 100 connections at a
    time from `source`; only lines starting with `expect` count. Notes the
    load generator's own CPU time in FLOOD_CPU."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([LOADGEN, "flood", "--target", f"127.0.0.1:{port}", "--count", str(count),
                          "--from", source, "--expect", expect],
                         check=True, capture_output=True, text=True, timeout=600).stdout.split()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    FLOOD_CPU.append((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / (count / 1000))
    if int(out[0]) < count * 0.99:
        raise RuntimeError(f"flood on {port}: only {out[0]} of {count} answered {expect}")
    return float(out[1])


def times(value, anchor):
    """`value` as a multiple of a positive `anchor` ("1.23x"), or "n/a" when the
    anchor is not above zero (an overhead the noise made nothing)."""
    return f"{value / anchor:.2f}x" if anchor > 0 else "n/a"


def context_switches(pid):
    """Voluntary and involuntary context switches of all a process's threads."""
    voluntary = involuntary = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            for line in open(f"/proc/{pid}/task/{task}/status"):
                if line.startswith("voluntary_ctxt_switches:"): voluntary += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"): involuntary += int(line.split()[1])
        except OSError:
            pass
    return voluntary, involuntary


def paced_flood(port, rate, seconds, expect, pid):
    """S7m: `rate` connections per second for `seconds` through a front
    (bench/loadgen flood --rate), each reading its first line and leaving;
    returns the server's CPU ms per connection, its voluntary and
    involuntary context switches per connection, and the rate answered."""
    count = rate * seconds
    cpu, switches = sum(cpu_split(pid)), context_switches(pid)
    out = subprocess.run([LOADGEN, "flood", "--target", f"127.0.0.1:{port}", "--count", str(count),
                          "--expect", expect, "--rate", str(rate), "--concurrency", "1000"],
                         check=True, capture_output=True, text=True, timeout=600).stdout.split()
    if int(out[0]) < count * 0.99:
        raise RuntimeError(f"paced flood on {port}: only {out[0]} of {count} answered {expect}")
    after = context_switches(pid)
    return ((sum(cpu_split(pid)) - cpu) * 1000 / count, (after[0] - switches[0]) / count,
            (after[1] - switches[1]) / count, float(out[1]))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small counts, one run: a smoke check under a minute")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--before", metavar="BINARY", help="another doorman build (an earlier commit's) measured on S1's path in the same rounds")
    ap.add_argument("--only", nargs="+", metavar="S", help="run only these scenarios (S1 ... S8, S1r, S1x, S1rm, S7m)")
    ap.add_argument("--runtime", choices=("per-core", "shared"), default="per-core",
                    help="every doorman's [runtime] model (the default is doorman's own)")
    args = ap.parse_args()
    RUNTIME[0] = args.runtime
    # S1, S3, S7 and S7m also measure a doorman with the other model.
    other = {"per-core": "shared", "shared": "per-core"}[args.runtime]
    want = lambda *names: not args.only or any(name in args.only for name in names)
    runs = 1 if args.quick else args.runs
    # 15,000 waiting clients need as many descriptors here and in doorman.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    msgs = 2000 if args.quick else 20000
    banners = 300 if args.quick else 2000
    waiting = 500 if args.quick else 10000
    tls_clients = 300 if args.quick else 3000
    tls_idle = 100 if args.quick else 1000
    tls_messages_count = 200 if args.quick else 1000
    new_clients = 300 if args.quick else 3000
    bulk = 5_000_000 if args.quick else 50_000_000
    floods = 3000 if args.quick else 10000
    moderate_rates = (2000, 5000)
    paced_seconds = 2 if args.quick else 5
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "doorman", "-p", "doorman-loadgen"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="doorman-bench-"); os.chmod(tmp, 0o755)
    procs = Procs(); results = {}
    try:
        sink = free_port()
        sink_proc = procs.start(["smtp-sink", "-u", "postfix", "-c", f"127.0.0.1:{sink}", "5000"]); wait_port(sink)
        zones = os.path.join(ROOT, "fixtures", "dnsbl"); dns = free_port()
        procs.start(["rbldnsd", "-n", "-w", zones, "-b", f"127.0.0.1/{dns}", "bl.test:ip4set:bl.test"]); time.sleep(0.5)
        # Paths through HAProxy: direct, doorman (cached client), postscreen (allowlisted).
        direct = free_port(); haproxy(tmp, procs, direct, sink, "direct", send_proxy=False)
        banners7 = free_port(); direct_front = haproxy(tmp, procs, banners7, sink, "banners-s7", send_proxy=False, nolinger=True)
        # The cost of any proxy in the middle: a second HAProxy between the
        # front and smtp-sink, where doorman would be.
        hop_inner = free_port(); hop = haproxy(tmp, procs, hop_inner, sink, "hop-inner", send_proxy=False)
        via_hop = free_port(); haproxy(tmp, procs, via_hop, hop_inner, "hop", send_proxy=False)
        # The same hop where doorman's own work starts: after a PROXY header,
        # which the front sends only once its connect completes.
        header_inner = free_port(); haproxy(tmp, procs, header_inner, sink, "hop-header-inner", send_proxy=False, accept_proxy=True)
        via_header_hop = free_port(); haproxy(tmp, procs, via_header_hop, header_inner, "hop-header")
        # What tokio itself costs there: the barest relay it makes.
        tokio_inner = free_port()
        tokio_relay = procs.start([LOADGEN, "relay", "--listen", f"127.0.0.1:{tokio_inner}", "--target", f"127.0.0.1:{sink}"])
        wait_port(tokio_inner)
        via_tokio = free_port(); haproxy(tmp, procs, via_tokio, tokio_inner, "tokio", send_proxy=False)
        dm, dm_port = doorman(tmp, procs, sink, '[greet]\nbanner = ""\n')
        via_doorman = free_port(); haproxy(tmp, procs, via_doorman, dm_port, "doorman")
        if args.before:
            dm_before, dm_before_port = doorman(tmp, procs, sink, '[greet]\nbanner = ""\n', binary=args.before)
            via_before = free_port(); haproxy(tmp, procs, via_before, dm_before_port, "doorman-before")
        dm_other, dm_other_port = doorman(tmp, procs, sink, '[greet]\nbanner = ""\n', model=other)
        via_other = free_port(); haproxy(tmp, procs, via_other, dm_other_port, "doorman-other")
        # S3 again with the embedded store (redb) answering the cache lookup.
        dme, dme_port = doorman(tmp, procs, sink, '[greet]\nbanner = ""\n', cache="embedded")
        via_embedded = free_port(); haproxy(tmp, procs, via_embedded, dme_port, "doorman-embedded")
        # S1r: the same clients, in a cluster balanced by recipient: each
        # goes through the engine up to its first RCPT, then the replay and
        # the gated relay (which copies the DATA body through).
        dmr, dmr_port = doorman(tmp, procs, sink, '[greet]\nbanner = ""\n[cluster.""]\nbalance = "recipient"\n')
        via_recipient = free_port(); haproxy(tmp, procs, via_recipient, dmr_port, "doorman-recipient")
        # The same with the embedded store (each routed RCPT writes a user
        # assignment into its redb file).
        dmre, dmre_port = doorman(tmp, procs, sink, '[greet]\nbanner = ""\n[cluster.""]\nbalance = "recipient"\n', cache="embedded")
        via_recipient_embedded = free_port(); haproxy(tmp, procs, via_recipient_embedded, dmre_port, "doorman-recipient-embedded")
        # S1x: the same clients to an XCLIENT backend, whose conversation
        # doorman reads command by command, against the same clients
        # copied to a backend without a header. Both go to one `doorman
        # sink --xclient` (smtp-sink answers XCLIENT with 250, not smtpd's
        # fresh 220, so it cannot serve as an XCLIENT backend).
        xsink = free_port()
        procs.start([DOORMAN, "sink", "--listen", f"127.0.0.1:{xsink}", "--xclient"])
        wait_port(xsink)
        dmx, dmx_port = doorman(tmp, procs, xsink, '[greet]\nbanner = ""\n', send_proxy="xclient")
        via_xclient = free_port(); haproxy(tmp, procs, via_xclient, dmx_port, "doorman-xclient")
        # S1rm: the same clients to a backend told nothing, in relay mode:
        # each meets the engine, and doorman writes a Received header into
        # every message it reads through.
        dmrm, dmrm_port = doorman(tmp, procs, sink, '[greet]\nbanner = ""\n', send_proxy="received")
        via_relaymode = free_port(); haproxy(tmp, procs, via_relaymode, dmrm_port, "doorman-relay-mode")
        dmc, dmc_port = doorman(tmp, procs, xsink, '[greet]\nbanner = ""\n')
        via_copied = free_port(); haproxy(tmp, procs, via_copied, dmc_port, "doorman-copied")
        ps_port, ps_master = postfix(tmp, procs, sink, "postscreen_access_list = permit_mynetworks\n")
        via_postscreen = free_port(); haproxy(tmp, procs, via_postscreen, ps_port, "postscreen")
        # Screeners for new clients, no teaser. postscreen's dnsblog can only
        # ask the system resolver, which is not rbldnsd here, so the anchor
        # runs without a DNSBL, and doorman is measured both ways.
        dm2, dm2_port = doorman(tmp, procs, sink, '[greet]\nbanner = ""\n')
        dm2b, dm2b_port = doorman(tmp, procs, sink, f'[greet]\nbanner = ""\n[dnsbl]\nsites = ["bl.test"]\nnameservers = ["127.0.0.1:{dns}"]\n')
        ps2_port, ps2_master = postfix(tmp, procs, sink, "postscreen_access_list =\npostscreen_greet_banner =\n")
        # The flood refusal path (S7): denylisted by the access list with
        # drop; DNSBL-listed (127.0.0.2, cached after the first) with drop.
        dm7, dm7_port = doorman(tmp, procs, sink, '[access]\nfile = "access"\naction = "drop"\n',
                                files={"access": "127.0.0.1/32 reject\n"})
        via_dm7 = free_port(); dm7_front = haproxy(tmp, procs, via_dm7, dm7_port, "doorman-s7", nolinger=True)
        # S7m's second doorman logs its lines to a file, as an operator runs it.
        dm7m_log = os.path.join(tmp, "doorman-s7m.log")
        dm7m, dm7m_port = doorman(tmp, procs, sink, '[access]\nfile = "access"\naction = "drop"\n',
                                  files={"access": "127.0.0.1/32 reject\n"}, log=dm7m_log)
        via_dm7m = free_port(); haproxy(tmp, procs, via_dm7m, dm7m_port, "doorman-s7m", nolinger=True)
        dm7o_log = os.path.join(tmp, "doorman-s7-other.log")
        dm7o, dm7o_port = doorman(tmp, procs, sink, '[access]\nfile = "access"\naction = "drop"\n',
                                  files={"access": "127.0.0.1/32 reject\n"}, log=dm7o_log, model=other)
        via_dm7o = free_port(); haproxy(tmp, procs, via_dm7o, dm7o_port, "doorman-s7-other", nolinger=True)
        dm7b, dm7b_port = doorman(tmp, procs, sink, f'[greet]\nbanner = ""\n[dnsbl]\nsites = ["bl.test"]\n'
                                  f'nameservers = ["127.0.0.1:{dns}"]\naction = "drop"\n')
        via_dm7b = free_port(); haproxy(tmp, procs, via_dm7b, dm7b_port, "doorman-s7b", nolinger=True)
        cidr = os.path.join(tmp, "postscreen_access.cidr"); open(cidr, "w").write("127.0.0.1/32 reject\n")
        ps7_port, ps7_master = postfix(tmp, procs, sink, f"postscreen_access_list = cidr:{cidr}\npostscreen_denylist_action = drop\n")
        via_ps7 = free_port(); haproxy(tmp, procs, via_ps7, ps7_port, "postscreen-s7", nolinger=True)
        # Waiting clients: the teaser and a long wait.
        # One fresh doorman per scale: memory an earlier measurement freed
        # would hide the later one's growth.
        scales = [500] if args.quick else [1000, 10000, 15000]
        # The wait outlasts the measurement: connecting 15,000 clients takes
        # up to 35 s here, and a client whose wait ended would be handed to
        # smtp-sink, a relayed session, no longer a waiting one.
        dm3s = {held: doorman(tmp, procs, sink, '[greet]\nwait = "120s"\n') for held in scales}
        ps3_port, ps3_master = postfix(tmp, procs, sink, "postscreen_access_list =\npostscreen_greet_wait = 120s\n")
        # S8, TLS greetings, all with one RSA-2048 certificate: doorman's
        # engine (the pipelining test due, so it talks to every client),
        # postscreen with tlsproxy (its deep tests on, so its engine talks),
        # and smtpd's own STARTTLS.
        pem, key = certificate(tmp)
        dm8, dm8_port = doorman(tmp, procs, sink, '[greet]\nbanner = ""\n[deep_tests]\npipelining = { enable = true }\n'
                                f'[tls]\n[[tls.certificate]]\nchain = "{pem}"\nkey = "{key}"\n')
        tls_keys = f"smtpd_tls_cert_file = {pem}\nsmtpd_tls_key_file = {key}\nsmtpd_tls_security_level = may\n"
        ps8_port, ps8_master = postfix(tmp, procs, sink, "postscreen_access_list =\npostscreen_greet_banner =\n"
                                       "postscreen_tls_security_level = may\ntlsproxy_tls_security_level = may\n"
                                       "postscreen_pipelining_enable = yes\npostscreen_non_smtp_command_enable = yes\n"
                                       "postscreen_bare_newline_enable = yes\n" + tls_keys)
        sd8_port, sd8_master = postfix(tmp, procs, sink, "smtpd_upstream_proxy_protocol = haproxy\n"
                                       "relay_domains = x.test\nsmtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n"
                                       + tls_keys, front="smtpd")
        # S5 with TLS on both legs: doorman's engine in front of that smtpd,
        # replaying each client into it over STARTTLS.
        dm5, dm5_port = doorman(tmp, procs, sd8_port, '[greet]\nbanner = ""\n[deep_tests]\npipelining = { enable = true }\n'
                                f'[tls]\n[[tls.certificate]]\nchain = "{pem}"\nkey = "{key}"\n', send_proxy="v2")

        def interleaved(name, paths, measure, pids=(), labels=None):
            """Runs `measure` on every path once per round, the paths back to
            back (the machine's noise then hits them alike), in an order
            that rotates from round to round; stores each
            path's median (per label, when `measure` returns one value per
            label), and returns the user/system CPU seconds `pids` used."""
            samples = {path: [] for path in paths}
            cpu = {pid: cpu_split(pid) for pid in pids}
            order = list(paths.items())
            for round_ in range(runs):
                # Each round starts one path later, so that no path always
                # follows the same one (postscreen leaves work behind).
                shift = round_ % len(order)
                for path, target in order[shift:] + order[:shift]:
                    samples[path].append(measure(target)); drain_queues()
            for path, values in samples.items():
                if labels is None:
                    results[f"{name} {path}"] = statistics.median(values)
                else:
                    for i, label in enumerate(labels):
                        results[f"{name} {path} {label}"] = statistics.median(v[i] for v in values)
            return {pid: tuple(b - a for a, b in zip(cpu[pid], cpu_split(pid))) for pid in pids}

        # S7 and S2 first: S1 leaves many TIME_WAIT sockets behind, and
        # S7's anchors then run out of local ports.
        if want("S7"):
          paths = {"smtp-sink banners/s": (banners7, "220", "127.0.0.1"),
                   "doorman refusals/s": (via_dm7, "521", "127.0.0.1"),
                   "doorman DNSBL refusals/s": (via_dm7b, "521", "127.0.0.2"),
                   "doorman logging refusals/s": (via_dm7m, "521", "127.0.0.1"),
                   "doorman logging, other runtime refusals/s": (via_dm7o, "521", "127.0.0.1"),
                   "postscreen refusals/s": (via_ps7, "521", "127.0.0.1")}
          cpu = interleaved("S7", paths, lambda path: flood(path[0], floods, path[1], path[2]),
                            pids=[dm7.pid, dm7b.pid, dm7m.pid, dm7o.pid, sink_proc.pid, direct_front.pid, dm7_front.pid])
          per_1000 = lambda pid: sum(cpu[pid]) / (runs * floods / 1000)
          results["S7 doorman CPU s per 1000 refusals"] = per_1000(dm7.pid)
          results["S7 doorman CPU s per 1000 DNSBL refusals"] = per_1000(dm7b.pid)
          results["S7 doorman logging CPU s per 1000 refusals"] = per_1000(dm7m.pid)
          results["S7 doorman logging, other runtime CPU s per 1000 refusals"] = per_1000(dm7o.pid)
          results["S7 smtp-sink CPU s per 1000 banners"] = per_1000(sink_proc.pid)
          results["S7 HAProxy CPU s per 1000 forwarded"] = per_1000(direct_front.pid)
          results["S7 load generator CPU s per 1000"] = statistics.median(FLOOD_CPU)
          # What the machine's cores allow with a refusal costing nothing:
          # HAProxy and the load generator share the cores with the screener.
          results["S7 refusals/s ceiling, screener free"] = os.cpu_count() * 1000 / (
              results["S7 HAProxy CPU s per 1000 forwarded"] + results["S7 load generator CPU s per 1000"])
        # S7m: the same refusals and banners at a moderate, fixed rate, where
        # real floods run: CPU and context switches per connection.
        if want("S7m"):
            for rate in moderate_rates:
                interleaved(f"S7m {rate}/s", {"smtp-sink": (banners7, "220", sink_proc.pid),
                                             "doorman": (via_dm7, "521", dm7.pid),
                                             "doorman logging": (via_dm7m, "521", dm7m.pid),
                                             "doorman logging, other runtime": (via_dm7o, "521", dm7o.pid)},
                            lambda path: paced_flood(path[0], rate, paced_seconds, path[1], path[2]),
                            labels=("CPU ms per connection", "voluntary switches", "involuntary switches", "rate"))
            lines = sum(1 for _ in open(dm7m_log))
            refusals = runs * paced_seconds * sum(moderate_rates) + (runs * floods if want("S7") else 0)
            results["S7m log lines per refusal"] = lines / refusals
        # S8: TLS greetings for new clients.
        if want("S8"):
            before = {"doorman": tree_cpu(dm8.pid), "postscreen+tlsproxy": tree_cpu(ps8_master),
                      "smtpd": tree_cpu(sd8_master)}
            interleaved("S8", {"doorman TLS sessions/s": dm8_port, "postscreen+tlsproxy TLS sessions/s": ps8_port,
                               "smtpd TLS sessions/s": sd8_port},
                        lambda port: tls_sessions(port, tls_clients))
            results["S8 doorman CPU s per 1000 TLS sessions"] = (tree_cpu(dm8.pid) - before["doorman"]) / (runs * tls_clients / 1000)
            results["S8 postscreen+tlsproxy CPU s per 1000 TLS sessions"] = (tree_cpu(ps8_master) - before["postscreen+tlsproxy"]) / (runs * tls_clients / 1000)
            results["S8 smtpd CPU s per 1000 TLS sessions"] = (tree_cpu(sd8_master) - before["smtpd"]) / (runs * tls_clients / 1000)
            results["S8 load generator CPU s per 1000 TLS sessions"] = statistics.median(TLS_LOAD_CPU)
            # What the cores allow: the load generator's handshakes share
            # them with the server's.
            results["S8 doorman TLS sessions/s ceiling"] = os.cpu_count() * 1000 / (
                results["S8 load generator CPU s per 1000 TLS sessions"] + results["S8 doorman CPU s per 1000 TLS sessions"])
            # The same with clients that leave Nagle's algorithm on, as
            # Postfix's smtp client does.
            interleaved("S8 Nagle", {"doorman TLS sessions/s": dm8_port,
                                     "postscreen+tlsproxy TLS sessions/s": ps8_port,
                                     "smtpd TLS sessions/s": sd8_port},
                        lambda port: tls_sessions(port, tls_clients, nagle=True))
            results["S8 doorman bytes/idle TLS client"] = tls_memory(dm8_port, lambda: [dm8.pid], tls_idle)
            results["S8 postscreen+tlsproxy bytes/idle TLS client"] = tls_memory(ps8_port, lambda: tree_pids(ps8_master), tls_idle)
        # S2 next.
        if want("S2", "S6"):
            cpu = interleaved("S2", {"doorman new clients/s": dm2_port, "postscreen new clients/s": ps2_port,
                                     "doorman new clients/s, DNSBL": dm2b_port},
                              lambda port: screening_rate(port, new_clients), pids=[dm2.pid])
            user, system = cpu[dm2.pid]
            results["S6 doorman CPU s per 1000 conn (S2)"] = (user + system) / (runs * new_clients / 1000)
            results["S6 doorman kernel share (S2)"] = system / max(user + system, 1e-9)
        if want("S1", "S6", "S1r", "S1x", "S1rm"):
            cpu = interleaved("S1", {"direct msg/s": direct, "extra HAProxy hop msg/s": via_hop,
                                     "bare tokio relay msg/s": via_tokio,
                                     "doorman msg/s": via_doorman, "postscreen msg/s": via_postscreen,
                                     "doorman by recipient msg/s": via_recipient,
                                     "doorman by recipient, embedded store msg/s": via_recipient_embedded,
                                     "doorman xclient msg/s": via_xclient,
                                     "doorman relay mode msg/s": via_relaymode,
                                     "doorman copied to doorman sink msg/s": via_copied,
                                     **({"doorman before msg/s": via_before} if args.before else {}),
                                     "doorman, other runtime msg/s": via_other},
                              lambda port: smtp_source(port, msgs, 50, 1024), pids=[dm.pid, hop.pid, tokio_relay.pid, dmrm.pid])
            user, system = cpu[dm.pid]
            results["S6 doorman CPU s per 1000 conn (S1)"] = (user + system) / (runs * msgs / 1000)
            results["S6 doorman kernel share (S1)"] = system / max(user + system, 1e-9)
            results["S6 extra HAProxy hop CPU s per 1000 conn (S1)"] = sum(cpu[hop.pid]) / (runs * msgs / 1000)
            results["S6 bare tokio relay CPU s per 1000 conn (S1)"] = sum(cpu[tokio_relay.pid]) / (runs * msgs / 1000)
            results["S1rm doorman CPU s per 1000 msg"] = sum(cpu[dmrm.pid]) / (runs * msgs / 1000)
        if want("S3"):
            interleaved("S3", {"direct": direct, "extra HAProxy hop": via_hop,
                               "extra HAProxy hop reading a PROXY header": via_header_hop, "bare tokio relay": via_tokio,
                               "doorman": via_doorman, "doorman, other runtime": via_other,
                               "doorman, embedded store": via_embedded},
                        lambda port: time_to_banner(port, banners), labels=("p50 ms", "p99 ms"))
        if want("S4"):
            for held, (dm3, dm3_port) in dm3s.items():
                results[f"S4 doorman bytes/waiting client, {held}"] = waiting_memory(dm3_port, lambda: [dm3.pid], held)
            results["S4 postscreen bytes/waiting client"] = waiting_memory(ps3_port, lambda: tree_pids(ps3_master), waiting)
        if want("S5"):
            interleaved("S5", {"direct MB/s": direct, "doorman MB/s": via_doorman},
                        lambda port: smtp_source(port, 2, 1, bulk) * bulk / 1e6)
        if want("S5"):
            before = (tree_cpu(dm5.pid), tree_cpu(sd8_master), resource.getrusage(resource.RUSAGE_CHILDREN))
            interleaved("S5 TLS", {"direct msg/s": sd8_port, "doorman msg/s": dm5_port},
                        lambda port: tls_messages(port, tls_messages_count, 10240))
            load = resource.getrusage(resource.RUSAGE_CHILDREN)
            per_1000 = 2 * runs * tls_messages_count / 1000
            results["S5 TLS doorman CPU s per 1000 msg"] = (tree_cpu(dm5.pid) - before[0]) / (per_1000 / 2)
            results["S5 TLS Postfix CPU s per 1000 msg, both paths"] = (tree_cpu(sd8_master) - before[1]) / per_1000
            results["S5 TLS load generator CPU s per 1000 msg, both paths"] = (
                load.ru_utime + load.ru_stime - before[2].ru_utime - before[2].ru_stime) / per_1000
            # The same with clients that leave Nagle's algorithm on, as
            # Postfix's smtp client does (after the CPU counts above).
            interleaved("S5 TLS Nagle", {"direct msg/s": sd8_port, "doorman msg/s": dm5_port},
                        lambda port: tls_messages(port, tls_messages_count, 10240, nagle=True))
    finally:
        procs.stop(); shutil.rmtree(tmp, ignore_errors=True)

    # A scenario --only left out reads as NaN, and its rows are not shown.
    r = collections.defaultdict(lambda: float("nan"), results)
    rows = [
        ("S1 msg/s, cached clients", r["S1 doorman msg/s"], f"{r['S1 doorman msg/s']/r['S1 direct msg/s']:.2f}x direct, {r['S1 doorman msg/s']/r['S1 postscreen msg/s']:.1f}x postscreen", ">= 0.85x direct, >= 5x postscreen"),
        ("S1r msg/s, cached clients, balanced by recipient", r["S1 doorman by recipient msg/s"], f"{r['S1 doorman by recipient msg/s']/r['S1 doorman msg/s']:.2f}x doorman's S1, {r['S1 doorman by recipient msg/s']/r['S1 postscreen msg/s']:.1f}x postscreen", ">= 0.85x S1"),
        ("S1r same, embedded store", r["S1 doorman by recipient, embedded store msg/s"], f"{r['S1 doorman by recipient, embedded store msg/s']/r['S1 doorman by recipient msg/s']:.2f}x S1r with the memory store", ">= 0.9x S1r (memory)"),
        ("S1x msg/s, cached clients, XCLIENT backend (every command read)", r["S1 doorman xclient msg/s"], f"{r['S1 doorman xclient msg/s']/r['S1 doorman copied to doorman sink msg/s']:.2f}x the same copied to the same sink; {r['S1 doorman xclient msg/s']/r['S1 doorman msg/s']:.2f}x doorman's S1", ">= 0.85x S1"),
        ("S1rm msg/s, cached clients, relay mode (Received header)", r["S1 doorman relay mode msg/s"], f"{r['S1 doorman relay mode msg/s']/r['S1 doorman msg/s']:.2f}x doorman's S1 (PROXY v2); doorman CPU {r['S1rm doorman CPU s per 1000 msg']:.3f} s/1000 msg against {r['S6 doorman CPU s per 1000 conn (S1)']:.3f} in S1", ">= 0.7x S1"),
        ("S1 same, the --before build", r["S1 doorman before msg/s"], f"this build {r['S1 doorman msg/s']/r['S1 doorman before msg/s']:.2f}x it", "within 5%"),
        ("S1 same, an extra HAProxy hop", r["S1 extra HAProxy hop msg/s"], f"{r['S1 extra HAProxy hop msg/s']/r['S1 direct msg/s']:.2f}x direct; doorman {r['S1 doorman msg/s']/r['S1 extra HAProxy hop msg/s']:.2f}x this", "doorman >= 0.95x this"),
        (f"S1 same, doorman {other}", r["S1 doorman, other runtime msg/s"], f"{r['S1 doorman, other runtime msg/s']/r['S1 extra HAProxy hop msg/s']:.2f}x the extra HAProxy hop", f"(the other [runtime] model)"),
        ("S1 same, a bare tokio relay", r["S1 bare tokio relay msg/s"], f"{r['S1 bare tokio relay msg/s']/r['S1 direct msg/s']:.2f}x direct; doorman {r['S1 doorman msg/s']/r['S1 bare tokio relay msg/s']:.2f}x this", "(anchor: tokio's own cost)"),
        ("S2 new clients/s", r["S2 doorman new clients/s"], f"{r['S2 doorman new clients/s']/max(r['S2 postscreen new clients/s'],1e-9):.1f}x postscreen", ">= 3x postscreen"),
        ("S2b new clients/s with a DNSBL", r["S2 doorman new clients/s, DNSBL"], f"{r['S2 doorman new clients/s, DNSBL']/r['S2 doorman new clients/s']:.2f}x S2, {r['S2 doorman new clients/s, DNSBL']/max(r['S2 postscreen new clients/s'],1e-9):.1f}x postscreen (no DNSBL)", ">= 0.95x S2"),
        ("S3 banner p50 ms", r["S3 doorman p50 ms"], f"+{r['S3 doorman p50 ms']-r['S3 direct p50 ms']:.3f} ms over direct", "<= +0.1 ms"),
        ("S3 banner p99 ms", r["S3 doorman p99 ms"], f"+{r['S3 doorman p99 ms']-r['S3 direct p99 ms']:.3f} ms over direct", "<= +1 ms"),
        ("S3 p50 ms, an extra HAProxy hop", r["S3 extra HAProxy hop p50 ms"], f"+{r['S3 extra HAProxy hop p50 ms']-r['S3 direct p50 ms']:.3f} ms over direct", "doorman's overhead <= 1.2x this + 0.02 ms"),
        ("S3 p50 ms, hop reading PROXY", r["S3 extra HAProxy hop reading a PROXY header p50 ms"], f"+{r['S3 extra HAProxy hop reading a PROXY header p50 ms']-r['S3 direct p50 ms']:.3f} ms over direct; doorman's overhead {times(r['S3 doorman p50 ms']-r['S3 direct p50 ms'], r['S3 extra HAProxy hop reading a PROXY header p50 ms']-r['S3 direct p50 ms'])} this", "(anchor)"),
        (f"S3 p50 ms, doorman {other}", r["S3 doorman, other runtime p50 ms"], f"+{r['S3 doorman, other runtime p50 ms']-r['S3 direct p50 ms']:.3f} ms over direct", "(the other [runtime] model)"),
        ("S3 p50 ms, embedded store", r["S3 doorman, embedded store p50 ms"], f"+{r['S3 doorman, embedded store p50 ms']-r['S3 direct p50 ms']:.3f} ms over direct; {r['S3 doorman, embedded store p50 ms']-r['S3 doorman p50 ms']:+.3f} ms against the memory store", "(reported)"),
        ("S3 p50 ms, a bare tokio relay", r["S3 bare tokio relay p50 ms"], f"+{r['S3 bare tokio relay p50 ms']-r['S3 direct p50 ms']:.3f} ms over direct", "(anchor)"),
        *[(f"S4 bytes/waiting client, {held}", v, f"{v/max(r['S4 postscreen bytes/waiting client'],1):.2f}x postscreen", "<= 1024")
          for held, v in ((k.rsplit(", ", 1)[1], v) for k, v in r.items() if k.startswith("S4 doorman"))],
        ("S5 bulk MB/s", r["S5 doorman MB/s"], f"{r['S5 doorman MB/s']/r['S5 direct MB/s']:.2f}x direct", ">= 0.8x direct"),
        ("S5 TLS msg/s, both legs", r["S5 TLS doorman msg/s"], f"{r['S5 TLS doorman msg/s']/r['S5 TLS direct msg/s']:.2f}x TLS straight to Postfix", ">= 0.8x direct"),
        ("S5 TLS same, Nagle-on clients", r["S5 TLS Nagle doorman msg/s"], f"{r['S5 TLS Nagle doorman msg/s']/r['S5 TLS Nagle direct msg/s']:.2f}x TLS straight to Postfix", ">= 0.8x direct"),
        ("S5 TLS CPU s / 1000 msg", r["S5 TLS doorman CPU s per 1000 msg"], f"{r['S5 TLS doorman CPU s per 1000 msg']/r['S5 TLS Postfix CPU s per 1000 msg, both paths']:.2f}x Postfix's (smtpd, cleanup, qmgr, smtp)", "(reported)"),
        ("S6 CPU s / 1000 conn, S1", r["S6 doorman CPU s per 1000 conn (S1)"], f"{r['S6 doorman CPU s per 1000 conn (S1)']/max(r['S6 extra HAProxy hop CPU s per 1000 conn (S1)'],1e-9):.2f}x the extra HAProxy, {r['S6 doorman CPU s per 1000 conn (S1)']/max(r['S6 bare tokio relay CPU s per 1000 conn (S1)'],1e-9):.2f}x tokio; {100*r['S6 doorman kernel share (S1)']:.0f}% kernel", ""),
        ("S6 CPU s / 1000 conn, S2", r["S6 doorman CPU s per 1000 conn (S2)"], f"{100*r['S6 doorman kernel share (S2)']:.0f}% kernel", ""),
        ("S7 refusals/s, access drop", r["S7 doorman refusals/s"], f"{r['S7 doorman refusals/s']/r['S7 postscreen refusals/s']:.1f}x postscreen, {r['S7 doorman refusals/s']/r['S7 smtp-sink banners/s']:.2f}x direct banners", ">= 3x postscreen, >= 0.9x direct"),
        ("S7 ceiling, screener free", r["S7 refusals/s ceiling, screener free"], f"{r['S7 refusals/s ceiling, screener free']/r['S7 postscreen refusals/s']:.1f}x postscreen: {os.cpu_count()} cores / (HAProxy + load generator)", "(anchor)"),
        ("S7 refusals/s, DNSBL drop", r["S7 doorman DNSBL refusals/s"], f"{r['S7 doorman DNSBL refusals/s']/r['S7 smtp-sink banners/s']:.2f}x direct banners", ">= 0.9x direct"),
        ("S7 CPU s / 1000 refusals", r["S7 doorman CPU s per 1000 refusals"], f"{r['S7 doorman CPU s per 1000 refusals']/max(r['S7 smtp-sink CPU s per 1000 banners'],1e-9):.2f}x smtp-sink per banner", "<= 0.6x smtp-sink"),
        *[(f"S7m CPU ms / refusal, {rate}/s", r[f"S7m {rate}/s doorman CPU ms per connection"],
           f"{r[f'S7m {rate}/s doorman CPU ms per connection']/max(r[f'S7m {rate}/s smtp-sink CPU ms per connection'],1e-9):.2f}x smtp-sink per banner; "
           f"switches {r[f'S7m {rate}/s doorman voluntary switches']:.2f}+{r[f'S7m {rate}/s doorman involuntary switches']:.2f} vs "
           f"{r[f'S7m {rate}/s smtp-sink voluntary switches']:.2f}+{r[f'S7m {rate}/s smtp-sink involuntary switches']:.2f}",
           "<= 1.0x smtp-sink") for rate in (2000, 5000)],
        *[(f"S7m same, logging, {rate}/s", r[f"S7m {rate}/s doorman logging CPU ms per connection"],
           f"{r[f'S7m {rate}/s doorman logging CPU ms per connection']/max(r[f'S7m {rate}/s smtp-sink CPU ms per connection'],1e-9):.2f}x smtp-sink per banner; "
           f"{r['S7m log lines per refusal']:.2f} lines per refusal to a file", "<= 1.0x smtp-sink") for rate in (2000, 5000)],
        *[(f"S7m same, logging, {other}, {rate}/s", r[f"S7m {rate}/s doorman logging, other runtime CPU ms per connection"],
           f"{r[f'S7m {rate}/s doorman logging, other runtime CPU ms per connection']/max(r[f'S7m {rate}/s smtp-sink CPU ms per connection'],1e-9):.2f}x smtp-sink per banner",
           "(the other [runtime] model)") for rate in (2000, 5000)],
        ("S8 TLS sessions/s, new clients", r["S8 doorman TLS sessions/s"], f"{r['S8 doorman TLS sessions/s']/r['S8 postscreen+tlsproxy TLS sessions/s']:.2f}x postscreen+tlsproxy, {r['S8 doorman TLS sessions/s']/r['S8 smtpd TLS sessions/s']:.2f}x smtpd", ">= 2x postscreen+tlsproxy"),
        ("S8 same, Nagle-on clients", r["S8 Nagle doorman TLS sessions/s"], f"{r['S8 Nagle doorman TLS sessions/s']/r['S8 Nagle postscreen+tlsproxy TLS sessions/s']:.2f}x postscreen+tlsproxy, {r['S8 Nagle doorman TLS sessions/s']/r['S8 Nagle smtpd TLS sessions/s']:.2f}x smtpd", ">= 2x postscreen+tlsproxy"),
        ("S8 ceiling, cores / CPU", r["S8 doorman TLS sessions/s ceiling"], f"{r['S8 doorman TLS sessions/s ceiling']/r['S8 postscreen+tlsproxy TLS sessions/s']:.2f}x postscreen+tlsproxy: {os.cpu_count()} cores / (doorman + load generator, {r['S8 load generator CPU s per 1000 TLS sessions']:.2f} s)", "(anchor)"),
        ("S8 CPU s / 1000 TLS sessions", r["S8 doorman CPU s per 1000 TLS sessions"], f"{r['S8 doorman CPU s per 1000 TLS sessions']/max(r['S8 postscreen+tlsproxy CPU s per 1000 TLS sessions'],1e-9):.2f}x postscreen+tlsproxy, {r['S8 doorman CPU s per 1000 TLS sessions']/max(r['S8 smtpd CPU s per 1000 TLS sessions'],1e-9):.2f}x smtpd", "<= 0.5x postscreen+tlsproxy"),
        ("S8 bytes/idle TLS client", r["S8 doorman bytes/idle TLS client"], f"{r['S8 doorman bytes/idle TLS client']/max(r['S8 postscreen+tlsproxy bytes/idle TLS client'],1):.2f}x postscreen+tlsproxy", "<= 0.5x postscreen+tlsproxy"),
        ("S7 same, logging", r["S7 doorman logging CPU s per 1000 refusals"], f"{r['S7 doorman logging CPU s per 1000 refusals']/max(r['S7 smtp-sink CPU s per 1000 banners'],1e-9):.2f}x smtp-sink per banner; {r['S7 doorman logging refusals/s']/r['S7 smtp-sink banners/s']:.2f}x direct banners", "<= 0.6x smtp-sink"),
        (f"S7 same, logging, {other}", r["S7 doorman logging, other runtime CPU s per 1000 refusals"], f"{r['S7 doorman logging, other runtime CPU s per 1000 refusals']/max(r['S7 smtp-sink CPU s per 1000 banners'],1e-9):.2f}x smtp-sink per banner; {r['S7 doorman logging, other runtime refusals/s']/r['S7 smtp-sink banners/s']:.2f}x direct banners", "(the other [runtime] model)"),
        ("S7 same, DNSBL drop", r["S7 doorman CPU s per 1000 DNSBL refusals"], f"{r['S7 doorman CPU s per 1000 DNSBL refusals']/max(r['S7 smtp-sink CPU s per 1000 banners'],1e-9):.2f}x smtp-sink per banner", "<= 1.0x smtp-sink"),
    ]
    rows = [row for row in rows if row[1] == row[1]]
    print(f"[runtime] model {args.runtime}; the rows that say {other} use the other")
    print(f"runs: {runs} (median), messages {msgs}, banners {banners}, waiting {waiting}, new clients {new_clients}, bulk {bulk} bytes")
    print(f"{'scenario':32} {'doorman':>12}  {'ratio':40} target")
    for name, value, ratio, target in rows:
        print(f"{name:32} {value:12.3f}  {ratio:40} {target}")
    print("anchors: " + ", ".join(f"{k} {v:.3f}" for k, v in results.items() if "doorman" not in k))


if __name__ == "__main__":
    main()
