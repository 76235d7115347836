"""DistributedDataParallel over our module: two processes, one GPU each, NCCL.

Each rank runs ModelNew (wrapped in DDP) on its half of a batch; after backward, DDP's
averaged gradients must equal those of the reference nn.ConvTranspose3d run on the whole
batch in one process (loss = mean over the batch, so the halves average to the whole).
Prints DDP-OK when every rank agrees. Needs two CUDA devices.

    python scripts/ddp_check.py
"""

import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ARGS = (8, 6, 3, 2, 1, 1, 2, True)  # ModelNew: Cin, Cout, kernel, stride, padding, out_pad, groups, bias
WORLD = 2


def worker(rank: int, init_file: str) -> None:
    import model_new as mn
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    ours = mn.ModelNew(*ARGS).cuda(rank)
    torch.manual_seed(0)
    ref = nn.ConvTranspose3d(8, 6, 3, 2, 1, 1, 2, True).cuda(rank)
    gen = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(4, 8, 5, 6, 7, generator=gen).cuda(rank)
    ddp = nn.parallel.DistributedDataParallel(ours, device_ids=[rank])
    half = x[rank * 2:(rank + 1) * 2]
    ddp(half).square().mean().backward()
    ref(x).square().mean().backward()
    for name, a, b in (("weight", ours.conv_transpose3d.weight.grad, ref.weight.grad),
                       ("bias", ours.conv_transpose3d.bias.grad, ref.bias.grad)):
        assert a.device == torch.device("cuda", rank)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=f"rank {rank} {name}")
    dist.barrier()
    dist.destroy_process_group()


def main() -> int:
    if torch.cuda.device_count() < WORLD:
        print(f"needs {WORLD} CUDA devices, found {torch.cuda.device_count()}")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(os.path.join(tmp, "rendezvous"),), nprocs=WORLD, join=True)
    print("DDP-OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
