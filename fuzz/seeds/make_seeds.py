#!/usr/bin/env python3
"""Writes seed corpora for the fuzz targets into fuzz/corpus/<target>/ (run from fuzz/).

Hand-encoded postcard (varints, enum variant indexes, length-prefixed bytes) of a few
real messages, a real CSR made with openssl, a real join token and ELF files from this
machine. The fuzzer finds the rest; these only spare it the first steps."""
import base64, os, subprocess, tempfile

V = 4  # herd_proto::PROTOCOL_VERSION


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def zz(n):  # zigzag for signed varints
    return varint((n << 1) ^ (n >> 63))


def bs(b):
    return varint(len(b)) + b


def put(target, name, data):
    d = os.path.join("corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def csr_der():
    with tempfile.TemporaryDirectory() as t:
        key, csr = os.path.join(t, "k"), os.path.join(t, "c")
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key], check=True)
        subprocess.run(["openssl", "req", "-new", "-key", key, "-subj", "/CN=h1", "-outform", "DER", "-out", csr], check=True)
        return open(csr, "rb").read()


csr = csr_der()
enroll = varint(0) + bytes(range(8)) + bytes(range(24)) + bs(b"h1") + bs(csr)
ping = varint(1)
attr = varint(0) + varint(0o644) + varint(11) + varint(1000) * 3 + zz(1) * 3 + varint(42) + varint(0)
fs_reqs = {
    "stat": varint(0) + bs(b"/home/u/a.txt"),
    "list": varint(1) + bs(b"/home/u"),
    "read": varint(2) + bs(b"/home/u/a.txt") + varint(0) + varint(100),
    "readlink": varint(3) + bs(b"/home/u/rel_link"),
    "prefetch": varint(4) + bs(b"/home/u/bin/tool"),
    "validate": varint(5) + varint(2) + bs(b"/home/u") + b"\x00" + b"\x01" + bytes(32)
    + bs(b"/home/u/.ssh/id_secret") + b"\x01" + varint(1) + zz(1) + zz(1) + varint(1) + b"\x00",
}
base_unseen = varint(0)
chg_file = varint(1) + bs(b"/w/a") + varint(0o644) + zz(1600000000000000000) + varint(4) + base_unseen
chg_dir = varint(0) + bs(b"/w/b") + varint(0o755) + zz(0) + b"\x00"
chg_link = varint(2) + bs(b"/w/a/b") + bs(b"../../o") + base_unseen
chg_rm = varint(3) + bs(b"/o/a") + base_unseen

# frame: selector byte (see frame.rs) + payload.
put("frame", "peer-enroll", bytes([0, V]) + enroll)
put("frame", "peer-ping", bytes([0, V]) + ping)
put("frame", "peer-run", bytes([0, V]) + varint(2) + varint(7)
    + varint(1) + bs(b"/bin/true") + varint(1) + bs(b"PATH") + bs(b"/bin") + bs(b"/w") + varint(0o22)
    + varint(0) + b"\x00" + b"\x00" + varint(0) + b"\x00" + varint(0) + varint(0) + b"\x00"
    + varint(1000) + varint(1000) + varint(0) + varint(1) + bs(b"/home/u/.ssh"))
put("frame", "peer-fs", bytes([0, V]) + varint(4) + varint(7) + fs_reqs["validate"])
put("frame", "peer-pong", bytes([1, V]) + varint(1) + bs(b"h1"))
put("frame", "task-input", bytes([2, V]) + varint(0) + bs(b"stdin bytes"))
put("frame", "task-output-change", bytes([3, V]) + varint(4) + chg_file)
put("frame", "task-output-failed", bytes([3, V]) + varint(8) + bs(b"no such command") + zz(127))
put("frame", "local-nodes", bytes([4, V]) + varint(0))
put("frame", "run-event", bytes([5, V]) + varint(6) + varint(1) + bs(b"/w/a") + b"\x01" + bs(b"/w/a.herd-conflict-1"))
put("frame", "fs-call", bytes([6, V]) + varint(9) + fs_reqs["list"])
put("frame", "fs-reply", bytes([7, V]) + varint(9) + varint(1) + varint(1) + bs(b"a.txt") + attr)
put("frame", "commit-change", bytes([8, V]) + varint(0) + chg_dir)
put("frame", "commit-report", bytes([9, V]) + varint(1) + varint(0) + b"\x00" + varint(0) + varint(0))
frames = b"".join(len(p).to_bytes(4, "big") + p for p in [bytes([V]) + ping, bytes([V]) + enroll, b""])
put("frame", "codec", bytes([13, 3, 1, 7, 200]) + frames)
put("frame", "codec-huge", bytes([13, 0]) + (16 * 1024 * 1024).to_bytes(4, "big") + b"xx")

# token: selector 0 = string, 1 = base64 of the rest.
tok = bs(b"lab") + bytes(32) + bytes(range(8)) + bytes(24) + b"\x01" + varint(1900000000) \
    + varint(1) + varint(0) + bytes([10, 0, 0, 1]) + varint(7420)
put("token", "record", b"\x01" + tok)
put("token", "string", b"\x00  herd1-" + base64.urlsafe_b64encode(tok).rstrip(b"=") + b"\n")

# enroll: selector 0 = framed PeerRequest, 1 = raw CSR.
put("enroll", "framed", b"\x00" + bytes([V]) + enroll)
put("enroll", "csr", b"\x01" + csr)

# fs_question: selector 0 = one framed FsCall.
for k, r in fs_reqs.items():
    put("fs_question", k, b"\x00" + bytes([V]) + varint(1) + r)

# change_set: selector 1 = length-prefixed CommitFrames (lengths are arbitrary's
# int_in_range of one byte, so they are only approximate: the fuzzer fixes them).
put("change_set", "framed", b"\x01" + bytes(26)
    + bytes([len(varint(0) + chg_dir)]) + varint(0) + chg_dir
    + bytes([len(varint(0) + chg_file)]) + varint(0) + chg_file
    + bytes([6]) + varint(1) + bs(b"data"))

# elf: executable, library, ld.so.conf.
m = b"\0\0\xff\xfe"
for name, exe in [("true", "/bin/true"), ("sh", "/bin/sh")]:
    real = os.path.realpath(exe)
    lib = open("/lib/x86_64-linux-gnu/libBrokenLocale.so.1", "rb").read() if os.path.exists(
        "/lib/x86_64-linux-gnu/libBrokenLocale.so.1") else b""
    put("elf", name, open(real, "rb").read() + m + lib + m + b"include /etc/ld.so.conf.d/*.conf\n/opt/l\n")

# sandbox_spec: a mountinfo field.
put("sandbox_spec", "field", b"/home/u/with\\040space\\011tab\\134")

# sandbox_wire: selector byte (see sandbox_wire.rs) + payload.
# 0: a WireSpec as the spawner encodes it (postcard, fields in order).
import struct
wire = (bs(b"/var/lib/herd/view") + bs(b"/var/lib/herd/t1/upper") + bs(b"/var/lib/herd/t1/work")
        + varint(3) + bs(b"sh") + bs(b"-c") + bs(b"make \xff")               # argv
        + b"\x01" + bs(b"/bin/sh")                                           # exe
        + varint(1) + bs(b"PATH") + bs(b"/usr/bin:/bin")                     # env
        + bs(b"/home/u/src") + varint(1000) + varint(1000)                   # cwd, uid, gid
        + varint(2) + varint(27) + varint(100) + varint(0o22)                # groups, umask
        + varint(2) + zz(7) + varint(1024) + varint(4096) + zz(4) + varint(0) + varint(2**64 - 1)  # rlimits
        + varint(1) + bs(b"/home/u/.ssh")                                    # hidden
        + b"\x01" + bs(b"helper1")                                           # hostname
        + b"\x01" + b"\x00" + bs(b"herd-task-7") + b"\x01" + struct.pack("<d", 1.5) + b"\x01" + varint(1 << 30)
        + b"\x01" + b"\x00" + b"\x01" + varint(30) + varint(100)             # idle, tty, console
        + b"\x01" + varint(4096) + b"\x00")                                  # pids_max, parked
put("sandbox_wire", "spec", b"\x00" + wire)
put("sandbox_wire", "spec-struct", b"\x01" + bytes(range(64)))
# 2: status lines as the init writes them.
put("sandbox_wire", "status-ok", b"\x02cgroup /sys/fs/cgroup/herd-task-7\npid1 4242\nstarted\nexit code 3\nended\n")
put("sandbox_wire", "status-signal", b"\x02pid1 4242\nstarted\nwarn cleanup: busy\nexit signal 9\nended\n")
put("sandbox_wire", "status-error", b"\x02error mount overlay on /w: Operation not permitted (os error 1)\n")
put("sandbox_wire", "status-cwd", b"\x02pid1 4242\ncwd /home/u/gone\tNo such file or directory (os error 2)\n")
put("sandbox_wire", "written", b"\x03" + bytes(range(1, 64)))
put("sandbox_wire", "limits", b"\x04" + bytes(range(0, 128, 3)))
