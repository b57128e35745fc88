"""Train the bundled shapes text-to-video model (``vidinterp.zoo.load("shapes")``). Not run in CI.

Reproducible from ``--seed``: the clips of step ``s`` and their noise / timesteps / caption
dropout are drawn from generators seeded by ``(seed, s)``, so a run resumed from a checkpoint
sees exactly the data an uninterrupted run would. Resumable in chunks::

    python benchmarks/train_shapes.py --out runs/shapes --total-steps 6000 --chunk 1000   # repeat
    python benchmarks/train_shapes.py --out runs/shapes --samples      # frame grid PNG (EMA weights)
    python benchmarks/train_shapes.py --out runs/shapes --export zoo/weights

A new run can start from another run's EMA weights (``--init-from runs/a/checkpoint.pt
--text-layers 1``) or from exported ones (``--init-from zoo/weights/shapes.safetensors``):
text-encoder layers the source lacks start as exact identities, so the warm-started model first
computes what the source did, then learns to use word order.

Each invocation resumes from ``<out>/checkpoint.pt`` when it exists, trains at most ``--chunk``
steps (or until ``--total-steps``, or ``--max-minutes``), and checkpoints every
``--checkpoint-every`` steps and at the end. ``<out>/log.jsonl`` holds the losses.

Objective: v-prediction on the ``CogVideoXDDIMScheduler`` schedule the pipeline samples with
(zero terminal SNR), timesteps uniform in ``[0, 1000)`` (or logit-normal, ``--timestep-sampling``),
MSE (or weighted towards the objects' pixels, ``--object-weight``); AdamW with linear warm-up then
cosine decay over ``--total-steps``; gradient clipping 1.0; EMA of the weights (exported).
Batches mix one-object and two-object clips (``--single-fraction``); captions are dropped
(empty prompt) with probability ``--caption-dropout`` for classifier-free guidance.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vidinterp.datasets.shapes import clip_seed, generate_clip
from vidinterp.zoo.shapes import (
    ShapesModelConfig,
    build_shapes_pipeline,
    export_state,
    read_export,
    load_state,
    model_state,
    clip_latents,
    train_clip_config,
    velocity_loss,
    warm_start,
)

VALIDATION_SEED = 10_000_019  # held-out clip seeds use a different root than training


def make_clips(config: ShapesModelConfig, root: int, step: int, batch: int, single_fraction: float):
    """The clips of one step: the first ``round(batch * single_fraction)`` hold one object."""
    singles = int(round(batch * single_fraction))
    one, two = train_clip_config(config, (1, 1)), train_clip_config(config, (2, 2))
    return [generate_clip(one if i < singles else two, clip_seed(root, step, i)) for i in range(batch)]


def make_batch(pipe, config: ShapesModelConfig, root: int, step: int, batch: int, single_fraction: float):
    """Clips of one step: ``(latents [B, F, C, H, W], captions)``."""
    clips = make_clips(config, root, step, batch, single_fraction)
    return clip_latents(pipe, clips), [c.caption for c in clips]


def object_weights(clips, weight: float, margin: int = 2) -> torch.Tensor:
    """Loss weights ``[B, F, 1, H, W]``: ``weight`` on every pixel within ``margin`` pixels
    (Chebyshev distance) of an object, 1 elsewhere. The margin covers the outside of a
    silhouette too, where one shape's pixels differ from another's (a square's corners)."""
    masks = torch.from_numpy(np.stack([clip.masks.any(axis=0) for clip in clips])).float()  # [B, F, H, W]
    near = torch.nn.functional.max_pool2d(masks, 2 * margin + 1, stride=1, padding=margin)
    return (1 + (weight - 1) * near).unsqueeze(2)


def sample_timesteps(batch: int, num_train_timesteps: int, sampling: str, generator: torch.Generator) -> torch.Tensor:
    """Training timesteps ``[B]`` (int64): ``uniform`` in ``[0, T)``, or ``logit-normal`` (SD3's
    ``sigmoid(N(0, 1))`` scaled to ``[0, T)``, which favours mid noise over both ends)."""
    if sampling == "uniform":
        return torch.randint(0, num_train_timesteps, (batch,), generator=generator)
    fraction = torch.sigmoid(torch.randn(batch, generator=generator))
    return (fraction * num_train_timesteps).long().clamp_(0, num_train_timesteps - 1)


def encode_text(pipe, captions: list[str], config: ShapesModelConfig) -> torch.Tensor:
    """Prompt embeddings exactly as ``CogVideoXPipeline._get_t5_prompt_embeds`` computes them."""
    ids = pipe.tokenizer(captions, padding="max_length", max_length=config.max_text_length, truncation=True,
                         add_special_tokens=True, return_tensors="pt").input_ids
    return pipe.text_encoder(ids)[0]


def v_loss(pipe, latents, captions, config, generator, rotary, caption_dropout: float,
           timestep_sampling: str = "uniform", weights: torch.Tensor | None = None) -> torch.Tensor:
    batch = latents.shape[0]
    timesteps = sample_timesteps(batch, pipe.scheduler.config.num_train_timesteps, timestep_sampling, generator)
    noise = torch.randn(latents.shape, generator=generator)
    drop = torch.rand(batch, generator=generator) < caption_dropout
    captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
    return velocity_loss(pipe, latents, noise, timesteps, encode_text(pipe, captions, config), rotary, weights)


def trainable(pipe) -> list[torch.nn.Parameter]:
    return list(pipe.transformer.parameters()) + list(pipe.text_encoder.parameters())


def learning_rate(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(1.0, (step - args.warmup) / max(1, args.total_steps - args.warmup))
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def validation_loss(pipe, config, rotary, clips: int = 32) -> float:
    """Mean v-loss on fixed held-out clips at a fixed spread of timesteps (no caption dropout)."""
    latents, captions = make_batch(pipe, config, VALIDATION_SEED, 0, clips, 0.5)
    timesteps = torch.linspace(20, 980, clips).long()
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    return float(velocity_loss(pipe, latents, noise, timesteps, encode_text(pipe, captions, config), rotary))


def swap_in(pipe, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Load ``state`` into ``pipe`` and return the previous weights."""
    previous = {k: v.detach().clone() for k, v in model_state(pipe).items()}
    load_state(pipe, state)
    return previous


def sample_grid(pipe, path: Path, prompts: list[str], seed: int = 0, steps: int = 30, guidance: float = 4.0,
                scale: int = 4) -> Path:
    """Generate one clip per prompt and save a grid PNG: one row per prompt, one column per frame."""
    import imageio.v3 as iio

    rows = []
    for index, prompt in enumerate(prompts):
        generator = torch.Generator().manual_seed(seed + index)
        frames = pipe(prompt, num_frames=pipe.transformer.config.sample_frames,
                      height=pipe.transformer.config.sample_height, width=pipe.transformer.config.sample_width,
                      num_inference_steps=steps, guidance_scale=guidance, generator=generator,
                      output_type="np").frames[0]  # ShapesPipeline: the trained text length by default
        frames = (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
        pad = np.full((frames.shape[0], frames.shape[1], 2, 3), 128, np.uint8)
        rows.append(np.concatenate([np.concatenate([f, p], axis=1) for f, p in zip(frames, pad)], axis=1))
        rows.append(np.full((2, rows[-1].shape[1], 3), 128, np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.concatenate(rows, axis=0))
    (path.with_suffix(".txt")).write_text("\n".join(prompts) + "\n")
    return path


def sample_prompts(shapes: tuple[str, ...]) -> list[str]:
    """Prompts of the sample grid: each shape alone (moving, and one static), then two objects."""
    colors, directions = ("red", "blue", "yellow", "green", "white", "purple"), ("right", "left", "down", "up")
    prompts = [f"a {colors[i % 6]} {shape} moving {directions[i % 4]}" for i, shape in enumerate(shapes)]
    prompts.append(f"a white {shapes[0]}")
    prompts.append(f"a red {shapes[-1]} moving left and a blue {shapes[0]}")
    prompts.append(f"a yellow {shapes[1 % len(shapes)]} and a green {shapes[-1]} moving up")
    return prompts


def read_warm_start_source(path: Path) -> dict:
    """``config`` (a ShapesModelConfig), ``ema`` weights and ``step`` of a training checkpoint
    (``checkpoint.pt``) or of exported weights (``.safetensors``, e.g. the shipped
    ``zoo/weights/shapes.safetensors``)."""
    if path.suffix == ".safetensors":
        config, state, metadata = read_export(path)
        return {"config": config, "ema": state, "step": metadata.get("step", "unknown")}
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return {"config": ShapesModelConfig.from_dict(checkpoint["config"]), "ema": checkpoint["ema"],
            "step": checkpoint["step"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/shapes"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--total-steps", type=int, default=6000)
    parser.add_argument("--chunk", type=int, default=None, help="train at most this many steps in this call")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop (and checkpoint) after this long")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--single-fraction", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--min-lr", type=float, default=5e-5)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--ema", type=float, default=0.998)
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--timestep-sampling", choices=("uniform", "logit-normal"), default="uniform")
    parser.add_argument("--object-weight", type=float, default=1.0,
                        help="loss weight of pixels within 2 of an object (1: plain MSE); validation stays plain MSE")
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--validate-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=ShapesModelConfig.num_layers, help="transformer blocks (new runs)")
    parser.add_argument("--heads", type=int, default=ShapesModelConfig.num_heads, help="attention heads (new runs)")
    parser.add_argument("--head-dim", type=int, default=ShapesModelConfig.head_dim, help="multiple of 16 (rotary)")
    parser.add_argument("--text-layers", type=int, default=ShapesModelConfig.text_layers,
                        help="T5 encoder layers (new runs); 0: one learned embedding per word, no context mixing")
    parser.add_argument("--object-size", type=int, nargs=2, default=ShapesModelConfig.object_size,
                        metavar=("MIN", "MAX"), help="object bounding-box sizes of the clips, pixels (new runs)")
    parser.add_argument("--shapes", nargs="+", default=list(ShapesModelConfig.shapes),
                        help="object nouns of the clips (new runs)")
    parser.add_argument("--single-object-spread", type=float, default=ShapesModelConfig.single_object_spread,
                        help="position spread of one-object clips (new runs; 1: anywhere, 0: path centred)")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="new runs: start from the EMA weights of this checkpoint.pt or exported .safetensors (its architecture, with "
                             "--text-layers, --object-size, --shapes and --single-object-spread); text-encoder layers it lacks start as identity")
    parser.add_argument("--samples", action="store_true", help="only write a frame grid PNG from the EMA weights")
    parser.add_argument("--export", type=Path, default=None, help="only export the EMA weights to this directory")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    checkpoint_path = args.out / "checkpoint.pt"
    config = ShapesModelConfig(num_layers=args.layers, num_heads=args.heads, head_dim=args.head_dim,
                               text_layers=args.text_layers, object_size=tuple(args.object_size),
                               shapes=tuple(args.shapes), single_object_spread=args.single_object_spread)
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False) if checkpoint_path.is_file() else None
    if checkpoint is not None:  # a resumed run keeps the architecture it was started with
        config = ShapesModelConfig.from_dict(checkpoint["config"])
    source = None
    if checkpoint is None and args.init_from is not None:
        source = read_warm_start_source(args.init_from)
        config = dataclasses.replace(source["config"], text_layers=args.text_layers,
                                     object_size=tuple(args.object_size), shapes=tuple(args.shapes),
                                     single_object_spread=args.single_object_spread, vocabulary=None)
    pipe = build_shapes_pipeline(config, seed=args.seed)
    if source is not None:
        new = warm_start(pipe, source["ema"])
        print(f"warm start from the EMA weights of {args.init_from} (step {source['step']}); new: {new}", flush=True)
    parameters = trainable(pipe)
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.99))
    ema = {k: v.detach().clone().float() for k, v in model_state(pipe).items()}
    step = 0
    if checkpoint is not None:
        load_state(pipe, checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        ema, step = checkpoint["ema"], int(checkpoint["step"])
        print(f"resumed {checkpoint_path} at step {step}", flush=True)
    elif args.samples or args.export:
        raise SystemExit(f"no checkpoint at {checkpoint_path}")

    if args.samples or args.export:
        swap_in(pipe, ema)
        pipe.transformer.eval(), pipe.text_encoder.eval()
        if args.export:
            path = export_state(pipe, config, args.export, metadata={"step": step, "seed": args.seed})
            print(f"exported EMA weights of step {step} to {path} ({path.stat().st_size / 1e6:.2f} MB)")
        if args.samples:
            path = sample_grid(pipe, args.out / f"samples_step{step}.png", sample_prompts(config.shapes), seed=args.seed)
            print(f"wrote {path}")
        return 0

    rotary = pipe._prepare_rotary_positional_embeddings(config.height, config.width, config.num_frames, "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "log.jsonl", "a")
    stop = min(args.total_steps, step + args.chunk) if args.chunk else args.total_steps
    started, window, window_start = time.time(), [], time.time()
    pipe.transformer.train(), pipe.text_encoder.train()

    def save() -> None:
        state = {"model": model_state(pipe), "optimizer": optimizer.state_dict(), "ema": ema, "step": step,
                 "config": json.loads(config.to_json()), "args": {k: str(v) for k, v in vars(args).items()}}
        temporary = checkpoint_path.with_suffix(".tmp")
        torch.save(state, temporary)
        os.replace(temporary, checkpoint_path)

    while step < stop:
        if args.max_minutes is not None and time.time() - started > 60 * args.max_minutes:
            break
        generator = torch.Generator().manual_seed(clip_seed(args.seed, step, 1_000_003))
        clips = make_clips(config, args.seed, step, args.batch, args.single_fraction)
        # weight 1 takes plain MSE, not all-ones weights: runs without the flag reproduce old ones bit for bit
        weights = object_weights(clips, args.object_weight) if args.object_weight != 1 else None
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        loss = v_loss(pipe, clip_latents(pipe, clips), [c.caption for c in clips], config, generator, rotary,
                      args.caption_dropout, args.timestep_sampling, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        with torch.no_grad():
            for key, value in model_state(pipe).items():
                ema[key].mul_(args.ema).add_(value.detach().float(), alpha=1 - args.ema)
        step += 1
        window.append(float(loss.detach()))
        if step % 50 == 0 or step == stop:
            record = {"step": step, "loss": float(np.mean(window)), "lr": learning_rate(step - 1, args),
                      "seconds_per_step": (time.time() - window_start) / len(window), "time": time.time()}
            if step % args.validate_every == 0 or step == stop:
                pipe.transformer.eval(), pipe.text_encoder.eval()
                record["val_loss"] = validation_loss(pipe, config, rotary)
                previous = swap_in(pipe, ema)
                record["val_loss_ema"] = validation_loss(pipe, config, rotary)
                load_state(pipe, previous)
                pipe.transformer.train(), pipe.text_encoder.train()
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(json.dumps(record), flush=True)
            window, window_start = [], time.time()
        if step % args.checkpoint_every == 0:
            save()
    save()
    print(f"stopped at step {step} of {args.total_steps}; checkpoint {checkpoint_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
