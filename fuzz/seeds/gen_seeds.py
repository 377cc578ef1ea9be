#!/usr/bin/env python3
"""Writes the hand-made seed inputs into fuzz/corpus/<target>/seed-*.

Seeds are meaningful inputs each target's format describes (see the
comment at the top of each fuzz_targets/*.rs): real virtio requests laid
out as fuzz/src/virtq.rs expects, real protocol frames, real tar layers
with whiteouts, real image configs and manifests. Run it once; `cargo fuzz
cmin` then keeps whatever of them (and what the fuzzer found) adds coverage.
"""

import gzip
import io
import json
import os
import struct
import sys
import tarfile

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# --- virtqueues (fuzz/src/virtq.rs) -----------------------------------------

F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4


def align(a, to):
    return (a + to - 1) // to * to


def rings(size, index):
    stride = align(align(16 * size + 6 + 2 * size, 4) + 6 + 8 * size, 16)
    desc = stride * index
    avail = desc + 16 * size
    used = align(avail + 6 + 2 * size, 4)
    return desc, avail, used


class Guest:
    def __init__(self, size_log2, declined=0):
        self.size = 1 << size_log2
        self.header = bytes([size_log2]) + struct.pack("<Q", declined)
        self.mem = bytearray()
        self.next = {}
        self.avail_idx = {}

    def put(self, addr, data):
        end = addr + len(data)
        if len(self.mem) < end:
            self.mem.extend(b"\0" * (end - len(self.mem)))
        self.mem[addr:end] = data

    def desc(self, q, i, addr, length, flags, nxt):
        d, _, _ = rings(self.size, q)
        self.put(d + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))

    def chain(self, q, descs):
        """descs: (addr, len, write); publishes a well-formed chain."""
        start = self.next.get(q, 0)
        for k, (addr, length, write) in enumerate(descs):
            i = (start + k) % self.size
            flags = (F_WRITE if write else 0) | (F_NEXT if k + 1 < len(descs) else 0)
            self.desc(q, i, addr, length, flags, (i + 1) % self.size)
        self.next[q] = (start + len(descs)) % self.size
        self.publish(q, start)
        return start

    def publish(self, q, head):
        _, a, _ = rings(self.size, q)
        idx = self.avail_idx.get(q, 0)
        self.put(a + 4 + 2 * (idx % self.size), struct.pack("<H", head))
        self.avail_idx[q] = idx + 1
        self.put(a, struct.pack("<HH", 0, idx + 1))

    def bytes(self, tail=b""):
        return self.header + bytes(self.mem) + tail


def block_seeds():
    T = "virtio_block_chain"
    HDR, DATA, STATUS = 0x400, 0x600, 0xA00

    def req(kind, sector, data_desc, tail=b"\0"):
        g = Guest(4)
        g.put(HDR, struct.pack("<IIQ", kind, 0, sector))
        g.put(DATA, bytes(range(256)) * 2)
        g.chain(0, [(HDR, 16, False)] + data_desc + [(STATUS, 1, True)])
        return g.bytes(tail)

    put(T, "read", req(0, 3, [(DATA, 512, True)]))
    put(T, "write", req(1, 10, [(DATA, 256, False), (DATA + 256, 256, False)]))
    put(T, "write-ro", req(1, 0, [(DATA, 512, False)], tail=b"\x01"))
    put(T, "flush", req(4, 0, []))
    put(T, "get-id", req(8, 0, [(DATA, 20, True)]))
    put(T, "past-end", req(0, 127, [(DATA, 1024, True)]))
    # One request framed in a single descriptor pair, header+data readable.
    g = Guest(3)
    g.put(HDR, struct.pack("<IIQ", 1, 0, 2) + b"w" * 512)
    g.chain(0, [(HDR, 16 + 512, False), (STATUS, 1, True)])
    put(T, "write-merged", g.bytes())
    # An indirect table holding the whole request.
    g = Guest(4)
    g.put(HDR, struct.pack("<IIQ", 0, 0, 1))
    table = 0x800
    g.put(table, struct.pack("<QIHH", HDR, 16, F_NEXT, 1)
          + struct.pack("<QIHH", DATA, 512, F_NEXT | F_WRITE, 2)
          + struct.pack("<QIHH", STATUS, 1, F_WRITE, 0))
    g.desc(0, 0, table, 48, F_INDIRECT, 0)
    g.publish(0, 0)
    put(T, "indirect", g.bytes())
    # Two requests, EVENT_IDX declined.
    g = Guest(4, declined=1 << 29)
    g.put(HDR, struct.pack("<IIQ", 0, 0, 0))
    g.chain(0, [(HDR, 16, False), (DATA, 512, True), (STATUS, 1, True)])
    g.chain(0, [(HDR, 16, False), (DATA + 512, 512, True), (STATUS + 1, 1, True)])
    put(T, "two-no-event-idx", g.bytes())


def vsock_hdr(src_port, dst_port, op, length=0, buf_alloc=65536, fwd_cnt=0, flags=0,
              src_cid=3, dst_cid=2, type_=1):
    return struct.pack("<QQIIIHHIII", src_cid, dst_cid, src_port, dst_port, length,
                       type_, op, flags, buf_alloc, fwd_cnt)


REQUEST, RESPONSE, RST, SHUTDOWN, RW, CREDIT_UPDATE, CREDIT_REQUEST = range(1, 8)


def vsock_seeds():
    T = "virtio_vsock_chain"
    g = Guest(3)
    base = 0x400
    pkts = [
        vsock_hdr(5000, 1024, REQUEST),
        vsock_hdr(5000, 1024, RW, 5) + b"hello",
        vsock_hdr(5000, 1024, CREDIT_REQUEST),
        vsock_hdr(5001, 99, REQUEST),
        vsock_hdr(5000, 1024, SHUTDOWN, flags=3),
    ]
    addr = base
    for p in pkts:
        g.put(addr, p)
        if len(p) > 44:
            g.chain(1, [(addr, 44, False), (addr + 44, len(p) - 44, False)])
        else:
            g.chain(1, [(addr, 44, False)])
        addr += 0x80
    for k in range(4):
        g.chain(0, [(0x1000 + 0x200 * k, 44, True), (0x1000 + 0x200 * k + 44, 0x100, True)])
    g.chain(2, [(0x2000, 4, True)])
    put(T, "connect-rw-shutdown", g.bytes())
    g = Guest(2)
    g.put(0x400, vsock_hdr(6000, 1024, REQUEST))
    g.chain(1, [(0x400, 44, False)])
    g.chain(0, [(0x800, 44 + 64, True)])
    put(T, "connect-one-rx", g.bytes())

    T = "vsock_packet_header"
    put(T, "connect-rw", vsock_hdr(5000, 1024, REQUEST) + vsock_hdr(5000, 1024, RW, 5)
        + b"hello" + vsock_hdr(5000, 1024, CREDIT_UPDATE, fwd_cnt=5)
        + vsock_hdr(5000, 1024, SHUTDOWN, flags=2) + vsock_hdr(5000, 1024, RST))
    put(T, "refused", vsock_hdr(7000, 80, REQUEST) + vsock_hdr(7000, 80, RW, 3) + b"abc")
    put(T, "bad-type", vsock_hdr(5000, 1024, REQUEST, type_=2)
        + vsock_hdr(5000, 1024, REQUEST, src_cid=4))


def net_seeds():
    T = "virtio_net_chain"
    frame = bytes(12) + b"\xff" * 6 + b"\x02\xb4\0\0\0\x01" + b"\x88\xb5" + b"x" * 46
    g = Guest(4)
    g.put(0x400, frame)
    g.chain(1, [(0x400, 12, False), (0x40C, len(frame) - 12, False)])
    g.chain(0, [(0x800, 1526, True)])
    g.chain(0, [(0xE00, 12, True), (0xE0C, 100, True)])
    put(T, "tx-rx", g.bytes(tail=struct.pack("<H", 60)))
    # MRG_RXBUF declined: every rx buffer must hold a whole frame.
    g = Guest(3, declined=1 << 15)
    g.chain(0, [(0x800, 64, True)])
    g.put(0x400, frame)
    g.chain(1, [(0x400, len(frame), False)])
    put(T, "no-mergeable", g.bytes(tail=struct.pack("<H", 200)))


def mmio_seeds():
    T = "virtio_mmio_registers"

    def rec(op, off, val):
        return struct.pack("<BHI", op, off, val)

    W, R, RUN = 4 | 2, 2, 8
    for dev, queues in [(0, 1), (1, 2), (2, 3)]:
        s = bytes([dev])
        s += rec(R, 0, 0) + rec(R, 4, 0) + rec(R, 8, 0)
        s += rec(W, 0x70, 1) + rec(W, 0x70, 3)
        for page in range(2):
            s += rec(W, 0x14, page) + rec(R, 0x10, 0) + rec(W, 0x24, page)
            s += rec(W, 0x20, 0xFFFFFFFF)
        s += rec(W, 0x70, 11) + rec(R, 0x70, 0)
        for q in range(queues):
            d, a, u = rings(16, q)
            s += rec(W, 0x30, q) + rec(R, 0x34, 0) + rec(W, 0x38, 16)
            s += rec(W, 0x80, d) + rec(W, 0x84, 0) + rec(W, 0x90, a) + rec(W, 0x94, 0)
            s += rec(W, 0xA0, u) + rec(W, 0xA4, 0) + rec(W, 0x44, 1)
        s += rec(W | RUN, 0x70, 15)
        s += rec(W | RUN, 0x50, 0) + rec(R, 0x60, 0) + rec(W, 0x64, 1)
        s += rec(0, 0x100, 0) + rec(1, 0x104, 0) + rec(3, 0x108, 0) + rec(W, 0x100, 7)
        s += rec(R, 0xFC, 0) + rec(W | RUN, 0x70, 0)
        put(T, f"activate-dev{dev}", s)


# --- protocol frames ----------------------------------------------------------

def frame(kind, payload):
    return struct.pack(">I", len(payload) + 1) + bytes([kind]) + payload


def jframe(obj):
    return frame(0, json.dumps(obj, separators=(",", ":")).encode())


SPEC = {
    "process": {
        "args": ["/bin/sh", "-c", "echo hi"],
        "env": ["PATH=/bin", "TERM=xterm"],
        "cwd": "/root",
        "user": {"type": "id", "uid": 1000, "gid": 1000, "additional_gids": [10]},
        "terminal": True,
        "console_size": {"rows": 24, "cols": 80},
        "capabilities": ["CAP_CHOWN", "NET_BIND_SERVICE"],
        "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096}],
        "no_new_privileges": True,
    },
    "hostname": "box",
    "resources": {"memory_limit": 268435456, "pids_limit": 100, "cpu_quota": 50000,
                  "cpu_period": 100000, "cpu_shares": 512, "blkio_weight": 100},
    "storage": {
        "lower": {"type": "block_device", "path": "/dev/vda", "fs_type": "ext4"},
        "scratch": {"type": "block_device", "path": "/dev/vdb"},
        "volumes": [
            {"source": {"type": "virtiofs", "tag": "vol0"}, "destination": "/data",
             "read_only": True, "subpath": "sub", "options": ["noexec"]},
            {"source": {"type": "tmpfs"}, "destination": "/tmp"},
            {"source": {"type": "directory", "path": "/mnt/x"}, "destination": "/x"},
        ],
        "read_only_root": True,
    },
    "masked_paths": ["/proc/kcore"],
    "readonly_paths": ["/proc/sys"],
    "sysctls": {"net.ipv4.ip_forward": "1"},
    "seccomp_bpf": [6, 0, 0, 0, 0, 0, 255, 127],
    "network": {
        "mac": [2, 180, 0, 0, 0, 2], "mtu": 1500,
        "addresses": [{"addr": "10.0.0.2", "prefix": 24}],
        "routes": [{"gateway": "10.0.0.1"},
                   {"destination": {"addr": "10.1.0.0", "prefix": 16}, "gateway": "10.0.0.1"}],
        "files": {"hosts": "127.0.0.1 localhost\n", "resolv_conf": "nameserver 10.0.0.1\n",
                  "hostname": "box"},
    },
}


def frame_seeds():
    T = "agent_frames_host"
    session = b"".join([
        jframe({"type": "hello", "version": 5}),
        jframe({"type": "refresh", "entropy": [1, 2, 3], "realtime_ns": 1700000000000000000,
                "hostname": "clone"}),
        jframe({"type": "create_container", "spec": SPEC}),
        jframe({"type": "start"}),
        frame(1, b"input\n\0\xff"),
        jframe({"type": "resize_tty", "rows": 50, "cols": 120}),
        jframe({"type": "signal", "signal": 15, "all": True}),
        jframe({"type": "close_stdin"}),
        jframe({"type": "wait"}),
        jframe({"type": "freeze", "frozen": True}),
        jframe({"type": "list_processes"}),
        jframe({"type": "shutdown"}),
    ])
    put(T, "session", b"\x07" + session)
    put(T, "exec", b"\x00" + jframe({"type": "hello", "version": 5})
        + jframe({"type": "exec", "process": {"args": ["ps"], "user": {"type": "name", "name": "nobody"}}}))
    put(T, "bad-frames", b"\x02" + frame(2, b"stdout is not host->agent") + frame(0, b"{nope")
        + struct.pack(">I", 0) + jframe({"type": "start"}) + struct.pack(">I", 0x7FFFFFFF))

    T = "agent_frames_agent"
    session = b"".join([
        jframe({"type": "hello", "version": 5}),
        jframe({"type": "refreshed"}),
        jframe({"type": "created"}),
        jframe({"type": "started", "pid": 42,
                "times": {"agent_start_ns": 1, "agent_ready_ns": 2, "started_ns": 3},
                "steps": [{"name": "mount:lower", "ns": 1000, "faults": 3}]}),
        frame(2, b"hello\n"),
        frame(3, b"oops\n"),
        jframe({"type": "processes", "pids": [1, 7]}),
        jframe({"type": "frozen", "frozen": False}),
        jframe({"type": "exit", "how": "exited", "code": 3, "oom_killed": False,
                "steps": [{"name": "exec", "ns": 5, "faults": 0}]}),
        jframe({"type": "exit", "how": "signaled", "signal": 9, "oom_killed": True}),
        jframe({"type": "error", "message": "no such file"}),
        jframe({"type": "shutting_down"}),
    ])
    put(T, "session", b"\x05" + session)
    put(T, "bad-frames", b"\x00" + frame(1, b"stdin is not agent->host") + frame(9, b"")
        + jframe({"type": "exit", "how": "exited"}))

    T = "container_spec_json"
    put(T, "spec", b"\x00" + json.dumps(SPEC).encode())
    put(T, "spec-minimal", b"\x00" + b'{"process":{"args":["/bin/true"]}}')
    oci = {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0, "additionalGids": [1]},
                    "args": ["sh"], "env": ["PATH=/bin"], "cwd": "/",
                    "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"]},
                    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                    "noNewPrivileges": True},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "oci",
        "linux": {"resources": {"memory": {"limit": 1048576}, "pids": {"limit": 10},
                                "cpu": {"quota": 1000, "period": 10000, "shares": 2},
                                "blockIO": {"weight": 10}},
                  "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/bus"],
                  "sysctl": {"kernel.shm_rmid_forced": "1"}},
    }
    put(T, "oci", b"\x01" + json.dumps(oci).encode())


# --- image layers and configs ------------------------------------------------

def tar_of(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, kind, extra in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            data = None
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "file":
                info.mode, data = extra.get("mode", 0o644), extra.get("data", b"")
                info.size = len(data)
                info.uid, info.gid = extra.get("uid", 0), extra.get("gid", 0)
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, extra
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, extra
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def pax_tar(name, data, pax):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.pax_headers = pax
        t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def layer_seeds():
    T = "image_layer_tar"
    lower = tar_of([
        ("etc/", "dir", None),
        ("etc/passwd", "file", {"data": b"root:x:0:0:root:/root:/bin/sh\n"}),
        ("etc/shadow", "file", {"data": b"root:*:1::::::\n", "mode": 0o600}),
        ("bin/", "dir", None),
        ("bin/busybox", "file", {"data": b"\x7fELF", "mode": 0o4755}),
        ("bin/sh", "sym", "busybox"),
        ("bin/ls", "hard", "bin/busybox"),
        ("dev/", "dir", None),
        ("dev/null", "chr", None),
        ("run/fifo", "fifo", None),
        ("var/lib/app/data", "file", {"data": b"x" * 100, "uid": 1000, "gid": 1000}),
    ])
    upper = tar_of([
        ("etc/.wh.shadow", "file", {}),
        ("var/lib/app/.wh..wh..opq", "file", {}),
        ("var/lib/app/new", "file", {"data": b"new"}),
        ("bin/sh", "file", {"data": b"replaced symlink"}),
        ("etc", "sym", "../sentinel"),
        ("etc/escape", "file", {"data": b"must land inside the root"}),
        ("up", "sym", "/"),
        ("up/abs", "file", {"data": b"absolute"}),
        ("../dotdot", "file", {"data": b"refused"}),
        (".wh.bin", "file", {}),
    ])

    def seed(flags, lo, up):
        return bytes([flags]) + struct.pack("<I", len(lo)) + lo + up

    put(T, "two-layers-plain", seed(0, lower, upper))
    put(T, "two-layers-gzip", seed(3, lower, upper))
    put(T, "gzip-blob", seed(0, gzip.compress(lower, mtime=0), b""))
    put(T, "pax-xattr", seed(0, pax_tar("f", b"data", {
        "SCHILY.xattr.user.test": "v", "SCHILY.xattr.security.capability": "\x01",
        "path": "long/" + "n" * 120})
        , b""))
    put(T, "hardlink-over-whiteout", seed(1, tar_of([("a", "file", {"data": b"a"})]),
                                          tar_of([(".wh.a", "file", {}), ("b", "hard", "a")])))


ARCH = "amd64"
CONFIG = {
    "architecture": ARCH, "os": "linux",
    "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                       "LANG=C.UTF-8"],
               "Entrypoint": ["/docker-entrypoint.sh"], "Cmd": ["nginx", "-g", "daemon off;"],
               "WorkingDir": "/srv", "User": "101:101",
               "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
               "Labels": {"maintainer": "someone"}, "StopSignal": "SIGQUIT"},
    "created": "2024-01-01T00:00:00Z",
    "rootfs": {"type": "layers", "diff_ids": [
        "sha256:" + "1" * 64, "sha256:" + "2" * 64]},
    "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file"}],
}


def config_seeds():
    T = "image_config"
    j = json.dumps(CONFIG).encode()
    put(T, "nginx", b"-\n-\n-\n-\n" + j)
    put(T, "overrides", b"/bin/sh\n-c\nFOO=bar\n/tmp\n" + j)
    put(T, "clear-entrypoint", b"\nls\nHOME\nrel\n" + json.dumps({"architecture": ARCH, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []}}).encode())
    stored = {"entrypoint": [], "cmd": ["sh"], "env": ["A=1", "=bad"], "working_dir": "/",
              "user": "root", "exposed_ports": ["80/tcp"]}
    put(T, "stored", b"-\n-\n-\n-\n" + json.dumps(stored).encode())


def manifest_seeds():
    T = "image_manifest"
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
             "digest": "sha256:" + "a" * 64, "size": 100}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": "@C@", "size": 1},
                "layers": [layer, dict(layer, digest="sha256:" + "b" * 64)]}
    m = json.dumps(manifest).replace('"size": 1}', '"size": @CS@}', 1)
    plat = {"architecture": ARCH, "os": "linux"}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                            "digest": "@M@", "size": 2, "platform": plat,
                            "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}
    i = json.dumps(index).replace('"size": 2', '"size": @MS@', 1)
    c = json.dumps(CONFIG)
    docs = lambda *d: b"\0".join(x.encode() for x in d)
    put(T, "oci-dir", b"\x00" + docs(i, m, c))
    put(T, "oci-archive", b"\x01" + docs(i, m, c))
    # An index pointing at a nested index (a multi-platform image).
    nested = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
              "manifests": [
                  {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                   "digest": "sha256:" + "c" * 64, "size": 10,
                   "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
                  {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                   "digest": "@M@", "size": 2, "platform": plat}]}
    n = json.dumps(nested).replace('"size": 2', '"size": @MS@', 1)
    top = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": "@N@", "size": 3}]}
    t = json.dumps(top).replace('"size": 3', '"size": @NS@', 1)
    put(T, "oci-nested-index", b"\x00" + docs(t, m, c, n))
    dm = [{"Config": "@CH@.json", "RepoTags": ["nginx:latest"],
           "Layers": ["l1/layer.tar", "blobs/sha256/" + "d" * 64]}]
    put(T, "docker-archive", b"\x02" + docs(json.dumps(dm), "", c))
    put(T, "docker-manifest-list", b"\x00" + docs(json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [{"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                       "digest": "@M@", "size": 2, "platform": plat}]}).replace('"size": 2', '"size": @MS@'),
        json.dumps(dict(manifest, mediaType="application/vnd.docker.distribution.manifest.v2+json")).replace('"size": 1}', '"size": @CS@}', 1), c))


def main():
    block_seeds()
    vsock_seeds()
    net_seeds()
    mmio_seeds()
    frame_seeds()
    layer_seeds()
    config_seeds()
    manifest_seeds()


if __name__ == "__main__":
    sys.exit(main())
