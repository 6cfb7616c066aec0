#!/usr/bin/env python3
"""Import smoke test of the staged vLLM (the offline-engine path of a dense Llama).

Used in two places, with the same module list:
  * on the GPU machine by `bench/vllm_stage.sh install` (PYTHONPATH=/tmp/vllm-site): every module
    must import, the CUDA kernels (_C_stable_libtorch, _vllm_fa3_C) must load, and the script prints
    vllm.__version__ and torch.cuda.get_device_name();
  * here (no GPU) by `bench/vllm_stage.py check-local` with --no-cuda: native extensions cannot load
    without CUDA, so an ImportError that comes from loading a shared object is tolerated and listed,
    but a missing Python module (ModuleNotFoundError naming a package) is always a failure.

It also lists every third-party distribution that the imports pulled in and where it was found
(the staged site, or the machine's own site-packages). With --base-packages FILE (one distribution
name per line: what the GPU machine already has), a distribution that came from neither the staged
site nor that list fails the test. (check-local runs this under `python3 -S` with a folder of links
to only those distributions of this machine, so optional imports fall back as they would there.)

Usage:  python3 bench/vllm_smoke.py [--no-cuda] [--site DIR] [--base-packages FILE]
Exit status 0 when everything needed imports.
"""

import argparse
import importlib
import importlib.metadata
import os
import re
import sys
import sysconfig
import traceback

# What `vllm.LLM(...).generate(...)` imports on a CUDA machine for a dense Llama: the API objects,
# the engine core in-process and behind ZMQ, both executors, the GPU worker and model runners, the
# model, the FlashAttention backend and the backend registry (CUSTOM), the sampler, torch.compile
# integration, structured output and tokenizer modules that are imported eagerly, and the platform.
MODULES = [
    "vllm",
    "vllm.entrypoints.llm",
    "vllm.sampling_params",
    "vllm.inputs",
    "vllm.platforms",
    "vllm.platforms.cuda",
    "vllm._custom_ops",
    "vllm.envs",
    "vllm.config",
    "vllm.engine.arg_utils",
    "vllm.v1.engine.llm_engine",
    "vllm.v1.engine.core",
    "vllm.v1.engine.core_client",
    "vllm.v1.engine.input_processor",
    "vllm.v1.engine.output_processor",
    "vllm.v1.engine.detokenizer",
    "vllm.v1.engine.utils",
    "vllm.v1.executor.abstract",
    "vllm.v1.executor.uniproc_executor",
    "vllm.v1.executor.multiproc_executor",
    "vllm.v1.worker.gpu_worker",
    "vllm.v1.worker.gpu_model_runner",
    "vllm.v1.worker.gpu.model_runner",
    "vllm.v1.worker.gpu_input_batch",
    "vllm.v1.worker.block_table",
    "vllm.v1.core.sched.scheduler",
    "vllm.v1.core.kv_cache_manager",
    "vllm.v1.core.kv_cache_utils",
    "vllm.v1.kv_cache_interface",
    "vllm.v1.serial_utils",
    "vllm.v1.cudagraph_dispatcher",
    "vllm.model_executor.models.llama",
    "vllm.model_executor.models.registry",
    "vllm.model_executor.model_loader",
    "vllm.model_executor.model_loader.dummy_loader",
    "vllm.model_executor.layers.linear",
    "vllm.model_executor.layers.layernorm",
    "vllm.model_executor.layers.rotary_embedding",
    "vllm.model_executor.layers.vocab_parallel_embedding",
    "vllm.model_executor.layers.logits_processor",
    "vllm.model_executor.layers.attention",
    "vllm.model_executor.warmup.kernel_warmup",
    "vllm.v1.attention.backend",
    "vllm.v1.attention.selector",
    "vllm.v1.attention.backends.registry",
    "vllm.v1.attention.backends.flash_attn",
    "vllm.v1.attention.backends.fa_utils",
    "vllm.v1.attention.backends.utils",
    "vllm.vllm_flash_attn",
    "vllm.v1.sample.sampler",
    "vllm.v1.sample.logits_processor",
    "vllm.v1.spec_decode.ngram_proposer",
    "vllm.compilation.backends",
    "vllm.compilation.decorators",
    "vllm.compilation.wrapper",
    "vllm.compilation.cuda_graph",
    "vllm.compilation.piecewise_backend",
    "vllm.compilation.compiler_interface",
    "vllm.compilation.passes.pass_manager",
    "vllm.distributed",
    "vllm.distributed.parallel_state",
    "vllm.distributed.device_communicators.cuda_communicator",
    "vllm.distributed.device_communicators.pynccl",
    "vllm.distributed.device_communicators.custom_all_reduce",
    "vllm.v1.structured_output",
    "vllm.v1.structured_output.backend_xgrammar",
    "vllm.v1.structured_output.backend_guidance",
    "vllm.v1.structured_output.backend_outlines",
    "vllm.v1.structured_output.backend_lm_format_enforcer",
    "vllm.tokenizers",
    "vllm.tokenizers.hf",
    "vllm.transformers_utils.config",
    "vllm.utils.hashing",
    "vllm.plugins",
    "vllm.usage.usage_lib",
    "vllm.tracing",
    "vllm.v1.metrics.loggers",
]

# Native extensions of the trimmed tree that must load on the GPU machine.
NATIVE_REQUIRED = ["vllm._C_stable_libtorch", "vllm.vllm_flash_attn._vllm_fa3_C"]

_NATIVE_ERROR = re.compile(r"\.so\b|cannot open shared object|undefined symbol|libcu|libtorch_cuda|"
                           r"CUDA|ELF|DLL")


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def import_all(no_cuda):
    """Import MODULES; returns (failures, tolerated) as lists of (module, message)."""
    failures, tolerated = [], []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            missing = (e.name or "").split(".")[0]
            if missing and missing != "vllm":
                failures.append((name, f"missing Python package '{missing}': {e}"))
            elif no_cuda and _NATIVE_ERROR.search(str(e)):
                tolerated.append((name, str(e)))
            else:
                failures.append((name, f"{type(e).__name__}: {e}"))
        except Exception as e:  # noqa: BLE001 - every failure is reported by name
            msg = f"{type(e).__name__}: {e}"
            if no_cuda and isinstance(e, (ImportError, OSError, RuntimeError)) and _NATIVE_ERROR.search(msg):
                tolerated.append((name, msg))
            else:
                failures.append((name, msg + "\n" + traceback.format_exc(limit=-4)))
    return failures, tolerated


def third_party_report(site, base_packages):
    """Map every imported top-level module to its distribution and origin."""
    stdlib = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")}
    top_to_dists = importlib.metadata.packages_distributions()
    site = os.path.realpath(site) if site else None
    seen = {}
    for modname, mod in list(sys.modules.items()):
        if "." in modname or mod is None or modname in sys.builtin_module_names:
            continue
        path = getattr(mod, "__file__", None) or next(iter(getattr(mod, "__path__", []) or []), None)
        if not path:
            continue
        path = os.path.realpath(path)
        if any(path.startswith(s + os.sep) and "site-packages" not in path for s in stdlib):
            continue
        dists = top_to_dists.get(modname, [modname])
        for dist in dists:
            where = "staged" if site and path.startswith(site + os.sep) else os.path.dirname(
                path if os.path.isdir(path) else os.path.dirname(path))
            try:
                version = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                version = "?"
            seen[norm(dist)] = (dist, version, where, modname)
    missing = []
    if base_packages is not None:
        for key, (dist, version, where, modname) in sorted(seen.items()):
            if modname not in top_to_dists or modname.startswith("__"):
                continue  # a loose extension module of a package already listed, or __main__
            if where != "staged" and key not in base_packages and key != "vllm":
                missing.append(f"{dist} {version} (module '{modname}', found at {where})")
    return seen, missing


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-cuda", action="store_true",
                    help="machine without CUDA: tolerate native-extension load failures (listed)")
    ap.add_argument("--site", default=os.environ.get("VLLM_STAGE_SITE"),
                    help="the staged site dir (for the origin report); must be on PYTHONPATH")
    ap.add_argument("--base-packages", help="file of distribution names the GPU machine already has")
    ap.add_argument("--quiet", action="store_true", help="do not list the third-party distributions")
    args = ap.parse_args()

    base = None
    if args.base_packages:
        with open(args.base_packages) as f:
            base = {norm(line.split("#")[0].split("==")[0].strip()) for line in f
                    if line.split("#")[0].strip()}

    failures, tolerated = import_all(args.no_cuda)
    seen, missing = third_party_report(args.site, base)

    if not args.quiet:
        print("third-party distributions imported (name version origin):")
        for key in sorted(seen):
            dist, version, where, _ = seen[key]
            print(f"  {dist:40s} {version:16s} {where}")
    for name, msg in tolerated:
        print(f"tolerated without CUDA: {name}: {msg.splitlines()[0]}")

    if not args.no_cuda:
        import torch

        if not torch.cuda.is_available():
            failures.append(("torch.cuda", "no CUDA device visible (use --no-cuda on a CPU machine)"))
        else:
            for name in NATIVE_REQUIRED:
                try:
                    importlib.import_module(name)
                except Exception as e:  # noqa: BLE001
                    failures.append((name, f"native kernel does not load: {type(e).__name__}: {e}"))
            from vllm.platforms import current_platform
            from vllm.vllm_flash_attn import flash_attn_interface as fai

            if not current_platform.is_cuda():
                failures.append(("vllm.platforms", f"current_platform is {current_platform!r}, not CUDA"))
            if not fai.FA3_AVAILABLE:
                failures.append(("vllm.vllm_flash_attn", f"FA3 unavailable: {fai.FA3_UNAVAILABLE_REASON}"))
            print("device:", torch.cuda.get_device_name(), "torch", torch.__version__)

    import vllm

    print("vllm", vllm.__version__, "from", os.path.dirname(vllm.__file__))
    print(f"imported {len(MODULES) - len(failures) - len(tolerated)}/{len(MODULES)} modules,"
          f" {len(tolerated)} tolerated (no CUDA), {len(failures)} failed,"
          f" {len(missing)} distributions missing on the GPU machine")
    for name, msg in failures:
        print(f"FAILED {name}: {msg}")
    for m in missing:
        print(f"MISSING on the GPU machine (not staged, not in --base-packages): {m}")
    return 1 if failures or missing else 0


if __name__ == "__main__":
    sys.exit(main())
