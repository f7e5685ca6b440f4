"""Compile MISA's fused HMC kernel (--fused-hmc) to GPU machine code on any machine, GPU or not, and report its
resources: Triton lowers it for the chosen architecture and runs ptxas (shipped in Triton's wheel), which needs no
GPU. It checks that the kernel compiles, for the configuration the script launches, and shows what each block size
costs in registers, spills and shared memory before any GPU time is spent.

    python benchmarks/compile_fused_hmc.py                         # the script's launch: H 256, sm_90 (H100/H200)
    python benchmarks/compile_fused_hmc.py --block-units 64 --num-warps 8 --tf32

Run it without TRITON_INTERPRET (under the interpreter Triton compiles nothing).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import tyro

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Args:
    arch: int = 90
    """CUDA compute capability to compile for, as major*10 + minor (90: H100 and H200)"""
    hidden_dim: int = 256
    """the critics' width (the script's --hidden-dim)"""
    act_dim: int = 6
    """action size (padded to at least 16 in the kernel)"""
    block_chains: Optional[int] = None
    """chains per program (default: fused_hmc_chain's block_chains, as the script launches it)"""
    block_units: Optional[int] = None
    """units of the second hidden layer per inner step (default: fused_hmc_chain's block_units)"""
    num_warps: Optional[int] = None
    """warps per program (default: fused_hmc_chain's num_warps)"""
    tf32: bool = False
    """TF32 tensor-core matrix products (the script's --tf32) instead of full-precision FP32"""


def main(args: Args) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget

    if triton.knobs.runtime.interpret:  # Triton's own reading of TRITON_INTERPRET
        sys.exit("error: unset TRITON_INTERPRET: under Triton's interpreter nothing is compiled")

    spec = importlib.util.spec_from_file_location("misa_continuous", ROOT / "misa_continuous.py")
    misa = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = misa
    spec.loader.exec_module(misa)
    launch = inspect.signature(misa.fused_hmc_chain).parameters  # the script's launch configuration by default
    args = replace(args, **{k: launch[k].default for k in ("block_chains", "block_units", "num_warps")
                            if getattr(args, k) is None})
    kernel = misa._misa_hmc_chain_kernel
    params = inspect.signature(kernel.fn).parameters
    constexprs = dict(H=args.hidden_dim, AP=max(16, triton.next_power_of_2(args.act_dim)), BM=args.block_chains,
                      BN=min(args.block_units, args.hidden_dim), PREC="tf32" if args.tf32 else "ieee")
    signature = {name: "constexpr" if name in constexprs else "*fp32" if name.endswith("_ptr") else "i32"
                 for name in params}
    started = time.time()
    compiled = triton.compile(triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                              target=GPUTarget("cuda", args.arch, 32), options=dict(num_warps=args.num_warps))
    seconds = time.time() - started
    with tempfile.TemporaryDirectory() as tmp:  # ptxas -v reports registers and spills
        ptx = Path(tmp) / "kernel.ptx"
        ptx.write_text(compiled.asm["ptx"])
        ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
        arch = f"sm_{args.arch}a" if args.arch >= 90 else f"sm_{args.arch}"
        report = subprocess.run([str(ptxas), "-v", f"-arch={arch}", str(ptx), "-o", str(Path(tmp) / "kernel.cubin")],
                                capture_output=True, text=True, check=True).stderr

    def number(pattern: str) -> int:
        match = re.search(pattern, report)
        return int(match.group(1)) if match else 0

    result = {"triton": triton.__version__, "arch": f"sm_{args.arch}", **{k: v for k, v in vars(args).items()
                                                                          if k != "arch"},
              "compile_s": round(seconds, 1), "registers": number(r"Used (\d+) registers"),
              "spill_store_bytes": number(r"(\d+) bytes spill stores"), "shared_bytes": compiled.metadata.shared,
              "cubin_bytes": len(compiled.asm["cubin"])}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
