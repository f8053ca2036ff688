#!/usr/bin/env python3
"""Build container images for the test cluster without a registry or Docker.

Writes one docker-archive tar (the `docker save` format, which
`ctr images import` reads). By default it holds two images sharing one layer
made of Debian's static busybox:

  tally.local/busybox:1.35  - busybox with every applet linked under /bin
  tally.local/pause:1.0     - the pod sandbox image: a shell that sleeps
                              forever and exits 0 on SIGTERM/SIGINT

With --image, a third image is added: the busybox layer plus a layer of the
given host files (and, with --ldd, the shared libraries they link), e.g.

  mkimage.py out.tar --image tally.local/tally:dev \\
      --file target/debug/tally:/usr/local/bin/tally --ldd \\
      --cmd /usr/local/bin/tally --cmd serve

With --bare, that image has no busybox layer: only the files, their
libraries, /tmp and an /etc/passwd naming uid 65532 (as a distroless image).

Import into a node:  ctr -a $NODE_DIR/containerd.sock -n k8s.io images import out.tar
The output is deterministic (fixed mtimes, sorted entries).
"""
import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile

BUSYBOX_IMAGE = "tally.local/busybox:1.35"
PAUSE_IMAGE = "tally.local/pause:1.0"
MTIME = 1700000000
CREATED = "2023-11-14T22:13:20Z"

PAUSE_SCRIPT = (
    "trap 'exit 0' TERM INT; "
    "while :; do sleep 2147483647 & wait $!; done"
)


class Layer:
    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)
        self.dirs = set()

    def dir(self, name, mode=0o755):
        name = name.strip("/")
        if not name or name in self.dirs:
            return
        parent = os.path.dirname(name)
        if parent:
            self.dir(parent)
        self.dirs.add(name)
        ti = tarfile.TarInfo(name)
        ti.type = tarfile.DIRTYPE
        ti.mode = mode
        ti.mtime = MTIME
        self.tar.addfile(ti)

    def file(self, name, data: bytes, mode=0o644):
        name = name.strip("/")
        self.dir(os.path.dirname(name))
        ti = tarfile.TarInfo(name)
        ti.size = len(data)
        ti.mode = mode
        ti.mtime = MTIME
        self.tar.addfile(ti, io.BytesIO(data))

    def symlink(self, name, target):
        name = name.strip("/")
        self.dir(os.path.dirname(name))
        ti = tarfile.TarInfo(name)
        ti.type = tarfile.SYMTYPE
        ti.linkname = target
        ti.mode = 0o777
        ti.mtime = MTIME
        self.tar.addfile(ti)

    def bytes(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def busybox_layer(busybox: str) -> bytes:
    applets = subprocess.run(
        [busybox, "--list-full"], check=True, capture_output=True, text=True
    ).stdout.split()
    layer = Layer()
    for d in ["bin", "dev", "etc", "proc", "sys", "usr/bin", "usr/sbin",
              "sbin", "var", "root"]:
        layer.dir(d)
    layer.dir("tmp", 0o1777)
    with open(busybox, "rb") as f:
        layer.file("bin/busybox", f.read(), 0o755)
    layer.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
               b"nobody:x:65534:65534:nobody:/:/bin/false\n")
    layer.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    for a in sorted(set(a.strip("/") for a in applets)):
        if a != "bin/busybox" and "/" in a:
            layer.symlink(a, "/bin/busybox")
    return layer.bytes()


def shared_libs(path: str):
    """Host paths of the shared libraries `path` links (via ldd)."""
    out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


def files_layer(specs, with_libs: bool, bare: bool = False) -> bytes:
    layer = Layer()
    if bare:
        layer.dir("tmp", 0o1777)
        layer.file("etc/passwd", b"root:x:0:0:root:/root:/sbin/nologin\n"
                   b"nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")
        layer.file("etc/group", b"root:x:0:\nnonroot:x:65532:\n")
    entries = {}
    for spec in specs:
        src, _, dest = spec.partition(":")
        dest = dest or src
        entries[dest] = src
        if with_libs:
            for lib in shared_libs(src):
                entries.setdefault(lib, lib)
                real = os.path.realpath(lib)
                if real != lib:
                    entries.setdefault(real, real)
    for dest in sorted(entries):
        src = entries[dest]
        with open(src, "rb") as f:
            mode = os.stat(src).st_mode & 0o777
            layer.file(dest, f.read(), mode)
    return layer.bytes()


def config(diff_ids, cmd, entrypoint=None) -> bytes:
    cfg = {
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": cmd,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": CREATED, "created_by": "tests/cluster/mkimage.py"}
                    for _ in diff_ids],
    }
    if entrypoint:
        cfg["config"]["Entrypoint"] = entrypoint
    return json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("busybox_pos", nargs="?", help=argparse.SUPPRESS)
    ap.add_argument("--busybox", default="/bin/busybox",
                    help="static busybox binary (Debian busybox-static)")
    ap.add_argument("--image", help="reference of an extra image to add")
    ap.add_argument("--file", action="append", default=[],
                    help="HOST_PATH[:IMAGE_PATH] to put in the extra image")
    ap.add_argument("--ldd", action="store_true",
                    help="also add the shared libraries of every --file")
    ap.add_argument("--cmd", action="append", default=None,
                    help="Cmd of the extra image, one argument per --cmd")
    ap.add_argument("--bare", action="store_true",
                    help="the extra image holds only its files (and libraries), an empty "
                         "/tmp and /etc/passwd naming uid 65532: no busybox, no shell")
    args = ap.parse_args()
    busybox = args.busybox_pos or args.busybox

    layers = {}  # name -> bytes

    def add_layer(data: bytes) -> str:
        diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
        layers[diff_id.split(":")[1] + "/layer.tar"] = data
        return diff_id

    bb = add_layer(busybox_layer(busybox))
    images = [
        (BUSYBOX_IMAGE, [bb], config([bb], ["sh"])),
        (PAUSE_IMAGE, [bb], config([bb], None, ["/bin/sh", "-c", PAUSE_SCRIPT])),
    ]
    if args.image:
        extra = add_layer(files_layer(args.file, args.ldd, args.bare))
        base = [] if args.bare else [bb]
        images.append((args.image, base + [extra],
                       config(base + [extra], args.cmd or ["sh"])))

    manifest = []
    tmp = args.out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name, data):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = 0o644
            ti.mtime = MTIME
            tar.addfile(ti, io.BytesIO(data))

        for name in sorted(layers):
            add(name, layers[name])
        for ref, diff_ids, cfg in images:
            cname = hashlib.sha256(cfg).hexdigest() + ".json"
            add(cname, cfg)
            manifest.append({"Config": cname, "RepoTags": [ref],
                             "Layers": [d.split(":")[1] + "/layer.tar" for d in diff_ids]})
        add("manifest.json", json.dumps(manifest, indent=1).encode())
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: " + ", ".join(ref for ref, _, _ in images))


if __name__ == "__main__":
    main()
