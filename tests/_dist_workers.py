"""Worker functions of the multi-process (gloo, CPU) tests, run by torch.multiprocessing.

Each worker sets the torchrun environment itself (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*),
joins through :func:`mulact.distributed.init` exactly as ``mulact-train`` does under torchrun,
and writes its result to ``out/<rank>.pt``. A world of 1 runs the same code without a process
group, so single-process references go through the very same path.
"""
import os
import socket
import time

import numpy as np
import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, world: int, *args, port: int | None = None):
    """Run ``fn(rank, world, port, *args)`` in ``world`` fresh processes and wait for them."""
    import torch.multiprocessing as mp

    port = port or free_port()
    mp.start_processes(fn, args=(world, port, *args), nprocs=world, join=True, start_method="spawn")


def _join(rank: int, world: int, port: int, timeout_s: float = 60.0):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # identical float reductions in every process
    from mulact import distributed

    return distributed.init("cpu", timeout_s=timeout_s)


class Images(torch.utils.data.Dataset):
    """Random images with labels in [0, C) and some void, and a region map (unused here)."""

    def __init__(self, n: int, num_classes: int, h: int = 32, w: int = 48):
        g = torch.Generator().manual_seed(123)
        self.images = torch.randn(n, 3, h, w, generator=g)
        self.labels = torch.randint(0, num_classes, (n, h, w), generator=g)
        self.labels[:, :3] = 255
        self.regions = (torch.arange(h)[:, None] // 8 * 8 + torch.arange(w)[None] // 8).expand(n, h, w)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i], "regions": self.regions[i], "index": i}


def evaluate_worker(rank, world, port, out, n_images, batch_size):
    from mulact import distributed
    from mulact.engine.evaluate import evaluate_dataset
    from mulact.model import build_model

    _join(rank, world, port)
    model = build_model(5, "resnet18", None, 16, seed=3)
    res = evaluate_dataset(model, Images(n_images, 5), 5, "cpu", batch_size=batch_size, desc="test")
    torch.save({"confusion": res["confusion"], "miou": res["miou"]}, os.path.join(out, f"{rank}.pt"))
    distributed.shutdown()


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.enc = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.head = torch.nn.Conv2d(6, 2, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def encoder_parameters(self):
        return self.enc.parameters()

    def head_parameters(self):
        return self.head.parameters()

    def forward(self, x):
        return self.head(torch.relu(self.enc(x)))


class Augmented(torch.utils.data.Dataset):
    """Items keyed by (index, seed): the image plus seeded noise (a stand-in augmentation)."""

    def __init__(self, n=10):
        g = torch.Generator().manual_seed(5)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.y = torch.randn(n, 2, 8, 8, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, key):
        i, seed = key
        noise = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(seed % 2**62)) * 0.1
        return {"x": self.x[i] + noise, "y": self.y[i]}


def train_worker(rank, world, port, out, iterations, crash_after, batch_size):
    """Train TinyNet with the real train_model; ``crash_after``: raise (every rank) once that
    many iterations have run, after their checkpoints, as a killed job would leave them."""
    from mulact import distributed
    from mulact.engine.train import ResumableBatchSampler, TrainSettings, train_model

    _join(rank, world, port)
    data = Augmented()

    def loader_fn(start):
        sampler = ResumableBatchSampler(range(len(data)), batch_size, iterations, seed=11, start=start)

        def batches():
            for k, keys in enumerate(sampler, start=start):
                if crash_after is not None and k >= crash_after:
                    raise KeyboardInterrupt("simulated kill")
                items = [data[key] for key in keys]
                yield {"x": torch.stack([it["x"] for it in items]), "y": torch.stack([it["y"] for it in items])}
        return batches()

    def step(net, batch, progress):
        loss = torch.nn.functional.mse_loss(net(batch["x"]), batch["y"])
        return loss, {}

    model = TinyNet()
    settings = TrainSettings(iterations=iterations, lr=1e-2, encoder_lr_mult=0.5, seed=4, checkpoint_interval=1,
                             desc="ddp test")
    try:
        summary = train_model(model, loader_fn, step, settings, os.path.join(out, "ckpt.pt"))
    except KeyboardInterrupt:
        distributed.shutdown()
        return
    torch.save({"state": model.state_dict(), "summary": summary}, os.path.join(out, f"{rank}.pt"))
    distributed.shutdown()


def dying_worker(rank, world, port, out, timeout_s):
    """Rank 1 leaves right after joining; rank 0 must fail at its next collective, not hang."""
    from mulact import distributed

    _join(rank, world, port, timeout_s=timeout_s)
    if rank == 1:
        os._exit(0)
    t0 = time.time()
    try:
        distributed.barrier("test barrier")
        msg = "no error"
    except distributed.DistributedError as err:
        msg = str(err)
    with open(os.path.join(out, "rank0.txt"), "w") as fh:
        fh.write(f"{time.time() - t0:.1f}\n{msg}")
    os._exit(0)  # the process group cannot be torn down cleanly with a peer gone


def gather_worker(rank, world, port, out):
    from mulact import distributed

    _join(rank, world, port)
    mine = {i: np.full(3, i, np.int64) for b in distributed.shard_batches(range(7), 2) for i in b}
    merged = {}
    for part in distributed.all_gather_objects(mine):
        merged.update(part)
    total = distributed.all_reduce_sum(torch.tensor([rank + 1.0]))
    torch.save({"keys": sorted(merged), "sum": float(total), "bcast": distributed.broadcast_object(rank * 10 + 7)},
               os.path.join(out, f"{rank}.pt"))
    distributed.shutdown()
