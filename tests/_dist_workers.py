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


def local(fn, *args):
    """Run a worker as the world of one in this process (no process group), with 1 thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fn(0, 1, 0, *args)
    finally:
        torch.set_num_threads(threads)


def _join(rank: int, world: int, port: int, timeout_s: float = 60.0):
    if world > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                          LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # identical float reductions in every process
    from mulact import distributed

    return distributed.init("cpu", timeout_s=timeout_s)


class Images(torch.utils.data.Dataset):
    """Random images with labels in [0, C) and some void, and a region map (unused here)."""

    ignore_index = 255

    def __init__(self, n: int, num_classes: int, h: int = 32, w: int = 48):
        g = torch.Generator().manual_seed(123)
        self.num_classes = num_classes
        self.images = torch.randn(n, 3, h, w, generator=g)
        # blocky labels so regions hold one to a few classes, as real ones do
        self.labels = torch.randint(0, num_classes, (n, h // 4, w // 4), generator=g).repeat_interleave(
            4, 1).repeat_interleave(4, 2)
        self.labels[:, :3] = 255
        cols = -(-w // 8)
        grid = torch.arange(h)[:, None] // 8 * cols + torch.arange(w)[None] // 8
        # images differ in their number of regions (the last ones merge into fewer)
        self.regions = torch.stack([grid.clamp(max=int(grid.max()) - (i % 3)) for i in range(n)])

    def __len__(self):
        return len(self.images)

    def num_regions(self, i):
        return int(self.regions[i].max()) + 1

    def load_label(self, i):
        return self.labels[i].numpy().astype(np.uint8)

    def load_regions(self, i):
        return self.regions[i].numpy().astype(np.int32)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i], "regions": self.regions[i], "index": i}


def evaluate_worker(rank, world, port, out, n_images, batch_size):
    from mulact import distributed
    from mulact.engine.evaluate import evaluate_dataset
    _join(rank, world, port)
    model = Segmenter(5)
    data = Images(n_images, 5)
    res = evaluate_dataset(model, data, 5, "cpu", batch_size=batch_size, desc="test")
    # oracle and acquisition of one PixBal round with these weights
    from mulact.al.acquisition import acquire, score_pool
    from mulact.al.pool import RegionPool
    from mulact.al.sharding import build_oracle_sharded, scan_pool_sharded

    oracle = build_oracle_sharded(data, range(n_images), trim=1)
    pool = RegionPool(oracle.offsets, 5, valid=oracle.pixels > 0)
    first = np.flatnonzero(pool.valid)[::5]
    pool.add_round(first, *oracle.answer(first, "multi"))
    stats = scan_pool_sharded(model, data, pool, pool.images_with_unlabeled(), measure="bvsb", temperature=0.1,
                              device="cpu", batch_size=batch_size)
    scores, banned = score_pool("pixbal", pool, stats, nu=6.0, seed=0, round_index=2)
    chosen = acquire(pool, scores, banned, oracle.answer(np.arange(len(pool.valid)), "multi")[1], 40)
    # the other collectives, on the same process group
    mine = {i: np.full(3, i, np.int64) for b in distributed.shard_batches(range(7), 2) for i in b}
    merged = {}
    for part in distributed.all_gather_objects(mine):
        merged.update(part)
    total = distributed.all_reduce_sum(torch.tensor([rank + 1.0]))
    torch.save({"oracle": (oracle.offsets, oracle.bits, oracle.dominant, oracle.pixels),
                "stats": (stats.u_sum, stats.count, stats.prob_sum, stats.num_pixels, stats.forwards),
                "chosen": chosen, "confusion": res["confusion"], "miou": res["miou"], "keys": sorted(merged), "sum": float(total),
                "bcast": distributed.broadcast_object(rank * 10 + 7)}, os.path.join(out, f"{rank}.pt"))
    distributed.shutdown()


class Segmenter(torch.nn.Module):
    """A small conv net with BatchNorm and C + 1 outputs in [-1, 1], like the cosine model
    (building a real ResNet costs seconds per process on a loaded 2-core machine)."""

    def __init__(self, num_classes):
        super().__init__()
        torch.manual_seed(3)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, padding=2, dilation=2), torch.nn.ReLU(),
            torch.nn.Conv2d(16, num_classes + 1, 1))
        self.net[1].running_mean.normal_()

    def forward(self, x):
        return torch.tanh(self.net(x))


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        # no bias before BatchNorm (its gradient is rounding noise that Adam would amplify)
        self.enc = torch.nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(6)
        self.pooled_bn = torch.nn.BatchNorm2d(6)  # on (B, 6, 1, 1): ASPP's pooling branch
        self.head = torch.nn.Conv2d(6, 2, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            self.bn.weight.add_(1.0)
            self.pooled_bn.weight.add_(1.0)

    def encoder_parameters(self):
        return list(self.enc.parameters()) + list(self.bn.parameters())

    def head_parameters(self):
        return list(self.head.parameters()) + list(self.pooled_bn.parameters())

    def forward(self, x):
        h = torch.relu(self.bn(self.enc(x)))
        return self.head(h + self.pooled_bn(h.mean((2, 3), keepdim=True)))


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
