"""Device, seeds and distributed plumbing shared by training and inference (precision is in
precision.py)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from maskgit_cli.errors import ConfigError, MaskgitError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda:N' is checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MaskgitError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise MaskgitError(
                "--device cuda was asked for but no CUDA GPU is visible; use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MaskgitError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    return device


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The CPU generator for one training step: a function of (seed, step, rank) only, so a
    resumed run draws exactly what an uninterrupted one would."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + rank * 104_729) % 2**63)


def image_generator(seed: int, index: int) -> torch.Generator:
    """Each image's own generator: results do not depend on the batch size or batch position."""
    return torch.Generator().manual_seed((seed * 1_000_003 + index) % 2**63)


SEED_LIMIT = 2**63


def check_seed(seed: int, flag: str = "--seed") -> int:
    """Seeds are whole numbers in [0, 2^63): what every generator here accepts."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"{flag} must be a whole number from 0 to 2^63 - 1, got {seed}")
    return seed


def dist_info() -> tuple[int, int]:
    """(rank, world_size); (0, 1) when not launched by torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def leave_distributed() -> None:
    """After a finished run, every rank leaves the process group together. A rank left to the
    interpreter's exit while another still holds the group (rank 0 hosts its store) can die with
    SIGABRT inside gloo. Not after a failure: the ranks are not at the same point then."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def init_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU,
    nccl on CUDA, one GPU per local rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device
