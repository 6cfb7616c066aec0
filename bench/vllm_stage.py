#!/usr/bin/env python3
"""Stage vllm==0.26.0 for the GPU machine (no internet there, at most 64 MiB per device call).

  python3 bench/vllm_stage.py pack [--vllm-wheel PATH] [--cache DIR] [--part-mib 58]
      Downloads (if absent) the pinned vLLM wheel and the cp312 wheels of bench/vllm_requirements.txt
      into .stage/vllm-cache/ (git-ignored), builds the trimmed vLLM tree (no FA2, MoE, FlashMLA,
      qutlass, DeepGEMM, vllm-rs; see TRIM), packs tree + wheels into one tar.xz stream split into
      .stage/vllm/part1, part2, ... (each <= --part-mib MiB) plus .stage/vllm/manifest.txt (name,
      size, sha256 of each part and of the whole stream), and prints the device calls to make.

  python3 bench/vllm_stage.py check-local [--site /work/vllm-local-site]
      The same set for cp311 (this machine: Python 3.11, no GPU), installed into a scratch dir (never
      site-packages), plus cp311 copies of what the GPU machine already has but this machine lacks
      (LOCAL_BASE, into SITE-base), then bench/vllm_smoke.py --no-cuda --base-packages: every
      module of the offline engine path must import, with all distributions that the GPU machine
      lacks hidden; only native kernels that need CUDA may fail.

On the device, bench/vllm_stage.sh receives the parts (one device call each; files outside the repo
survive only while the machine stays warm, ~30 s between calls) and installs into /tmp/vllm-site.
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO / "bench" / "vllm_requirements.txt"
DEVICE_PACKAGES = REPO / "bench" / "vllm_device_packages.txt"
VLLM_PIN = "vllm==0.26.0"
VLLM_WHEEL = "vllm-0.26.0-cp38-abi3-manylinux_2_28_x86_64.whl"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_26_x86_64",
             "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux_2_5_x86_64", "manylinux1_x86_64", "manylinux_2_31_x86_64"]

# Paths of the vLLM wheel left out of the staged tree (prefix match). A bf16 dense Llama on an H200
# uses FA3 (_vllm_fa3_C) and the _C_stable_libtorch kernels; vLLM imports the rest inside
# try/except or only for other models/GPUs: FA2 (pre-Hopper), the MoE kernels, FlashMLA (MLA
# models), qutlass (FP4), DeepGEMM (FP8 GEMMs; without the package has_deep_gemm() is False),
# the sm100 FMHA's CUTLASS headers (Blackwell; its .py stay), the other Pythons' builds, and the
# Rust frontend binary.
TRIM = [
    "vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so",
    "vllm/_moe_C_stable_libtorch.abi3.so",
    "vllm/_flashmla_C.abi3.so",
    "vllm/_flashmla_extension_C.abi3.so",
    "vllm/_qutlass_C.abi3.so",
    "vllm/vllm-rs",
    "vllm/third_party/deep_gemm/",
    "vllm/third_party/fmha_sm100/cutlass/",
]
NATIVE_REQUIRED = ["vllm/_C_stable_libtorch.abi3.so", "vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so"]

# check-local only: what the GPU machine has (bench/vllm_device_packages.txt) but this machine
# lacks, and the offline path imports. Versions from the same resolution; where KINDS.md gives the
# GPU machine's version, that one.
LOCAL_BASE = ["aiohappyeyeballs==2.7.1", "aiohttp==3.14.5", "aiosignal==1.4.0", "einops==0.8.2",
              "frozenlist==1.8.0", "multidict==7.2.1", "propcache==0.5.4", "yarl==1.25.1",
              "pillow==13.0.0", "prometheus-client==0.26.0", "protobuf==7.36.2",
              "py-cpuinfo==9.0.0", "sentencepiece==0.2.2", "tiktoken==0.14.0", "uvloop==0.23.0",
              "numba==0.65.0", "llvmlite==0.47.0", "grpcio==1.85.3"]


def log(*a):
    print(*a, flush=True)


def sh(cmd, **kw):
    log("+", " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def read_pins():
    pins = []
    for line in REQUIREMENTS.read_text().splitlines():
        spec = line.split("#")[0].strip()
        if spec and not spec.startswith("vllm=="):
            if "==" not in spec:
                sys.exit(f"{REQUIREMENTS}: '{spec}' is not pinned (expected name==version)")
            pins.append(spec)
    return pins


def pip_download(specs, dest, pyver):
    """Download exactly these pinned wheels (no dependency resolution) unless already there."""
    dest.mkdir(parents=True, exist_ok=True)
    have = {p.name.split("-")[0].lower().replace("_", "-") + "==" + p.name.split("-")[1]
            for p in dest.glob("*.whl")}
    todo = [s for s in specs if s.lower().replace("_", "-") not in have]
    if not todo:
        log(f"{dest}: all {len(specs)} wheels present")
        return
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", pyver, "--implementation", "cp", "-d", dest]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    sh(cmd + todo)
    wheels = sorted(dest.glob("*.whl"))
    names = {w.name.split("-")[0].lower() for w in wheels}
    if len(names) != len(wheels):
        sys.exit(f"{dest}: two versions of one package; empty it and run again")


def vllm_wheel(args):
    if args.vllm_wheel:
        path = Path(args.vllm_wheel)
        if not path.is_file():
            sys.exit(f"--vllm-wheel: {path} does not exist")
        return path
    dest = Path(args.cache)
    path = dest / VLLM_WHEEL
    if not path.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", "--platform",
               "manylinux_2_28_x86_64", "-d", dest, VLLM_PIN]
        sh(cmd)
    return path


def trimmed(name):
    return any(name == t or (t.endswith("/") and name.startswith(t)) for t in TRIM)


def build_tree(wheel, dest):
    """Extract the wheel minus TRIM into dest (vllm/ and the dist-info); idempotent."""
    stamp = dest / ".trim-stamp"
    key = f"{wheel.name} {wheel.stat().st_size} {TRIM}"
    if stamp.is_file() and stamp.read_text() == key:
        return
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    kept = dropped = 0
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if trimmed(info.filename):
                dropped += info.file_size
                continue
            z.extract(info, dest)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(dest / info.filename, mode)
            kept += info.file_size
    for so in NATIVE_REQUIRED:
        if not (dest / so).is_file():
            sys.exit(f"{wheel}: {so} missing from the wheel")
    stamp.write_text(key)
    log(f"trimmed vLLM tree: kept {kept / 2**20:.0f} MiB, dropped {dropped / 2**20:.0f} MiB -> {dest}")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pack(args):
    cache = Path(args.cache)
    pins = read_pins()
    wheel = vllm_wheel(args)
    pip_download(pins, cache / "cp312", "3.12")
    tree = cache / "vllm-tree"
    build_tree(wheel, tree)

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    stream = cache / "payload.tar.xz"
    log("packing (xz -6, two threads; a few minutes on this machine)")
    tar_cmd = ["tar", "-C", cache, "-cf", "-", "--sort=name", "--owner=0", "--group=0",
               "--mtime=2026-01-01", "--exclude=.trim-stamp", "vllm-tree", "cp312"]
    with open(stream, "wb") as f:
        tar = subprocess.Popen([str(c) for c in tar_cmd], stdout=subprocess.PIPE)
        subprocess.run(["xz", "-6", "-T2", "-c"], stdin=tar.stdout, stdout=f, check=True)
        if tar.wait() != 0:
            sys.exit("tar failed")
    part_bytes = int(args.part_mib * 2**20)
    lines, n = [], 0
    with open(stream, "rb") as f:
        while True:
            chunk = f.read(part_bytes)
            if not chunk:
                break
            n += 1
            part = out / f"part{n}"
            part.write_bytes(chunk)
            lines.append(f"part{n} {len(chunk)} {hashlib.sha256(chunk).hexdigest()}")
    total = stream.stat().st_size
    manifest = out / "manifest.txt"
    manifest.write_text(f"parts {n}\n" + "\n".join(lines) +
                        f"\npayload {total} {sha256(stream)}\n")
    stream.unlink()
    log(f"\n{n} parts in {out} ({total / 2**20:.1f} MiB in all):")
    for line in lines:
        name, size, _ = line.split()
        log(f"  {name}: {int(size) / 2**20:.1f} MiB")
    rel = os.path.relpath(out, REPO)
    log("\nDevice calls (from the repo root the device tool sends; each within the 64 MiB limit):")
    for i in range(1, n + 1):
        cmd = f"bash bench/vllm_stage.sh receive {i}"
        if i == n:
            cmd += " && bash bench/vllm_stage.sh install && export PYTHONPATH=/tmp/vllm-site && <your tests>"
        log(f"  run(carry=[\"{rel}/part{i}\", \"{rel}/manifest.txt\"], command=\"{cmd}\")")
    log("Calls must follow each other within ~30 s (the machine stays warm that long); a call that"
        "\nfinds a fresh machine says which parts are missing: send those again.")


def device_sim(dest):
    """A folder of links to the distributions of this Python that the GPU machine also has.

    check-local runs the smoke test under `python3 -S` (no site-packages) with this folder on the
    path, so that a package this machine happens to have cannot hide one the GPU machine lacks."""
    import importlib.metadata
    import re

    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    allowed = {norm(line.split("#")[0].strip()) for line in DEVICE_PACKAGES.read_text().splitlines()
               if line.split("#")[0].strip()}
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    linked = 0
    for dist in importlib.metadata.distributions():
        root = Path(dist.locate_file(""))
        if "site-packages" not in str(root) or norm(dist.metadata["Name"]) not in allowed:
            continue
        tops = {Path(str(f)).parts[0] for f in (dist.files or []) if not str(f).startswith("..")}
        for top in tops:
            src, link = root / top, dest / top
            if src.exists() and not link.exists() and top not in ("bin", "__pycache__"):
                link.symlink_to(src)
        linked += 1
    log(f"device-sim: {linked} distributions of this Python linked into {dest}")


def check_local(args):
    cache = Path(args.cache)
    pins = read_pins()
    wheel = vllm_wheel(args)
    pip_download(pins, cache / "cp311", "3.11")
    pip_download(LOCAL_BASE, cache / "cp311-base", "3.11")
    tree = cache / "vllm-tree"
    build_tree(wheel, tree)
    site, base = Path(args.site), Path(args.site + "-base")
    for d in (site, base, Path(args.site + "-devsim")):
        if d.exists():
            shutil.rmtree(d)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--disable-pip-version-check", "--target"]
    sh(pip + [site] + sorted((cache / "cp311").glob("*.whl")))
    sh(pip + [base] + sorted((cache / "cp311-base").glob("*.whl")))
    shutil.copytree(tree, site, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".trim-stamp"))
    sim = Path(args.site + "-devsim")
    device_sim(sim)
    env = dict(os.environ, PYTHONPATH=f"{site}:{base}:{sim}")
    cmd = [sys.executable, "-S", REPO / "bench" / "vllm_smoke.py", "--no-cuda", "--site", site,
           "--base-packages", DEVICE_PACKAGES]
    log("+ PYTHONPATH=" + env["PYTHONPATH"], " ".join(str(c) for c in cmd))
    rc = subprocess.run([str(c) for c in cmd], env=env, cwd="/tmp").returncode
    log(f"check-local: smoke test exit status {rc}")
    return rc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["pack", "check-local"])
    ap.add_argument("--cache", default=str(REPO / ".stage" / "vllm-cache"),
                    help="download/build cache (git-ignored); another checkout's cache may be reused")
    ap.add_argument("--out", default=str(REPO / ".stage" / "vllm"), help="where pack writes the parts")
    ap.add_argument("--vllm-wheel", help=f"an already downloaded {VLLM_WHEEL}")
    ap.add_argument("--part-mib", type=float, default=58.0,
                    help="largest part in MiB (a device call carries at most 64 MiB with the repo)")
    ap.add_argument("--site", default="/work/vllm-local-site", help="check-local: scratch target dir")
    args = ap.parse_args()
    if not 1 <= args.part_mib <= 62:
        sys.exit("--part-mib: expected a size between 1 and 62 MiB")
    if args.command == "check-local" and Path(args.site).resolve() in {Path(p).resolve() for p in sys.path if p and "site-packages" in p}:
        sys.exit("--site: refusing to install into a site-packages directory of this Python")
    return pack(args) if args.command == "pack" else check_local(args)


if __name__ == "__main__":
    sys.exit(main())
