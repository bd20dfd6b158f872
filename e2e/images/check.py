#!/usr/bin/env python3
"""Checks that the images `.ci/images` made are what the Dockerfiles describe.

    e2e/images/check.py OUT

For each of sipmba, sipmba-operator and sipmba-edge, it reads the Dockerfile's final stage and the
OCI archive OUT/<name>.tar, and fails (exit 1, saying what differs) unless:

- the stage starts FROM gcr.io/distroless/cc-debian12:nonroot, the base the local one stands for,
  and the image's configuration has that base's user-facing settings (working directory and
  environment, as distroless publishes them);
- USER, EXPOSE, ENTRYPOINT and CMD are the image's User, ExposedPorts, Entrypoint and Cmd;
- the binary the stage copies is in the image at the path it names, executable, and it is the
  entrypoint;
- the base holds what distroless cc holds and our binaries need: the dynamic loader and glibc,
  libgcc_s, the CA bundle, the user and group nonroot (65532) with its home, and /tmp (1777).

Hosted runners build the same Dockerfiles with Docker on the real distroless base; this is what
makes the two paths give the same entrypoint, user and paths.
"""

import gzip
import io
import json
import re
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {
    "sipmba": ROOT / "services/sipmba/Dockerfile",
    "sipmba-operator": ROOT / "operator/Dockerfile",
    "sipmba-edge": ROOT / "edge/Dockerfile",
}
BASE = "gcr.io/distroless/cc-debian12:nonroot"
# What gcr.io/distroless/cc-debian12:nonroot's own configuration says (its user is overridden by
# each Dockerfile's USER).
BASE_CONFIG = {
    "WorkingDir": "/home/nonroot",
    "Env": [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
    ],
}
BASE_FILES = [
    "lib64/ld-linux-x86-64.so.2",
    "lib/x86_64-linux-gnu/libc.so.6",
    "lib/x86_64-linux-gnu/libgcc_s.so.1",
    "etc/ssl/certs/ca-certificates.crt",
]


def final_stage(dockerfile):
    """The instructions of the last stage, as (INSTRUCTION, argument) pairs."""
    stage = []
    for line in dockerfile.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stage = []
        stage.append((word.upper(), rest.strip()))
    return stage


def expected(dockerfile):
    stage = dict(final_stage(dockerfile))
    copy = re.fullmatch(r"--from=\S+\s+(\S+)\s+(\S+)", stage["COPY"])
    if not copy:
        raise SystemExit(f"{dockerfile}: cannot read COPY {stage['COPY']!r}")
    return {
        "FROM": stage["FROM"],
        "User": stage["USER"],
        "ExposedPorts": sorted(f"{p}/tcp" if "/" not in p else p for p in stage["EXPOSE"].split()),
        "Entrypoint": json.loads(stage["ENTRYPOINT"]),
        "Cmd": json.loads(stage["CMD"]),
        "binary": copy.group(2),
    }


def image(archive):
    """The image's configuration and its files (path -> TarInfo), later layers winning."""
    with tarfile.open(archive) as oci:
        blob = lambda digest: oci.extractfile("blobs/" + digest.replace(":", "/")).read()
        index = json.loads(oci.extractfile("index.json").read())
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        files = {}
        for layer in manifest["layers"]:
            data = blob(layer["digest"])
            if layer["mediaType"].endswith("+gzip"):
                data = gzip.decompress(data)
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for member in tar.getmembers():
                    small = member.isfile() and member.name.endswith(("passwd", "group"))
                    text = tar.extractfile(member).read() if small else None
                    files[member.name.lstrip("./").rstrip("/")] = (member, text)
    return config["config"], files


def check(name, dockerfile, archive):
    want = expected(dockerfile)
    config, files = image(archive)
    problems = []

    def same(what, have, should, source="the Dockerfile"):
        if have != should:
            problems.append(f"{what}: the image has {have!r}, {source} {should!r}")

    same("FROM", want["FROM"], BASE, "the local base stands for")
    same("User", config.get("User"), want["User"])
    same("ExposedPorts", sorted(config.get("ExposedPorts", {})), want["ExposedPorts"])
    same("Entrypoint", config.get("Entrypoint"), want["Entrypoint"])
    same("Cmd", config.get("Cmd"), want["Cmd"])
    same("the entrypoint is the copied binary", want["Entrypoint"][0], want["binary"])
    for key, value in BASE_CONFIG.items():
        same(key, config.get(key), value, "distroless")
    binary = files.get(want["binary"].lstrip("/"))
    if binary is None or not binary[0].isfile() or not binary[0].mode & 0o111:
        problems.append(f"{want['binary']} is not an executable file in the image")
    for path in BASE_FILES:
        if path not in files:
            problems.append(f"/{path} is missing from the base")
    passwd = (files.get("etc/passwd") or (None, b""))[1] or b""
    group = (files.get("etc/group") or (None, b""))[1] or b""
    if b"nonroot:x:65532:65532:" not in passwd:
        problems.append("/etc/passwd has no nonroot user 65532")
    if b"nonroot:x:65532:" not in group:
        problems.append("/etc/group has no nonroot group 65532")
    home = files.get("home/nonroot")
    if home is None or (home[0].uid, home[0].gid) != (65532, 65532):
        problems.append("/home/nonroot is not nonroot's")
    tmp = files.get("tmp")
    if tmp is None or tmp[0].mode & 0o7777 != 0o1777:
        problems.append("/tmp is not mode 1777")
    for problem in problems:
        print(f"{name}: {problem}", file=sys.stderr)
    if not problems:
        print(
            f"{name}: as its Dockerfile says (user {config['User']}, ports {want['ExposedPorts']}, "
            f"entrypoint {config['Entrypoint']}, cmd {config['Cmd']}, working directory "
            f"{config['WorkingDir']}); base files present"
        )
    return not problems


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: e2e/images/check.py OUT")
    out = Path(sys.argv[1])
    ok = all([check(name, dockerfile, out / f"{name}.tar") for name, dockerfile in IMAGES.items()])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
