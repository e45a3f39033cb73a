"""Train Mini FLUX from scratch with rectified flow, as FLUX is trained. Seeded and resumable.

    python -m torch_ternary.mini.train --out runs/mini --steps 10000 --compile             # phase 1
    python -m torch_ternary.mini.train --out runs/mini --resume --steps 13500 --schedule-start 10000 \
        --lr 2e-4 --warmup 100 --timestep-shift 3 --compile                                # phase 2
    ...                                                  # phases 3-5 of the shipped weights: docs/mini.md
    python -m torch_ternary.mini.train --out runs/mini --device cuda --batch 256 --steps 20000 --timestep-shift 3 \
        --binding-loss 0.1 --binding-pretrain 800

Every step renders a fresh batch of the procedural world (``torch_ternary.mini.world``) with
captions from the grammar (evaluation prompts held out), encodes the captions with the tiny
CLIP and T5 encoders (trained jointly), and regresses the transformer's velocity onto
``noise - x0`` at ``x_t = (1 - t) x0 + t noise``, ``t = sigmoid(N(0, 1))`` optionally shifted
towards high noise (``--timestep-shift``, the map FLUX's scheduler applies). Captions are dropped
to the empty prompt 10 % of the time so that classifier-free guidance works at sampling time.
Forward passes run under bf16 autocast (weights, optimizer and loss stay float32). An EMA of the
weights is what gets saved. Checkpoints (safetensors + JSON, nothing pickled) every few minutes
make the run resumable with ``--resume`` (also across devices: checkpoints hold CPU tensors); a
resumed run may start a new phase (``--schedule-start``: a fresh warm-up and cosine from that
step to ``--steps``), and every phase is recorded in the weights' metadata. ``--until`` stops early
without changing the schedule. ``--category-weights`` changes how often each caption category is
drawn (uniform by default). ``--binding-loss W`` adds W times an auxiliary loss that makes T5 encode
which object each word belongs to, and ``--binding-pretrain N`` replaces T5, when a phase starts, by a
fresh one pretrained N steps on that loss alone (``torch_ternary.mini.binding``: without it the
jointly trained T5 stayed a bag of words). ``--compile`` runs the transformer through ``torch.compile`` (in place,
so checkpoints keep their names); on the CPU, attention always runs as plain matmuls, faster than the
CPU flash kernel at 76 tokens. ``--device cuda`` trains on a GPU; the data is still rendered by
numpy on the CPU (about 0.1 ms an image, far from the bottleneck).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from safetensors.torch import load_file, save_file
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..errors import UnsupportedDeviceError
from ..format.atomic import atomic_write
from .binding import BindingHeads, binding_targets_of_ids, pretrain_text_encoder
from .grammar import category_probabilities
from .model import TRANSFORMER_CONFIG, PixelSpaceVAE
from .pipeline import COMPONENTS, META_FILE, WEIGHTS_FILE, build_pipeline
from .text import MAX_TOKENS, T5_CONFIG, build_clip, build_t5, build_tokenizer, tokenize
from .world import MiniWorldError

CHECKPOINT_TENSORS = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint.json"


class Trainer:
    """Holds the three trainable models, their EMA, the optimizer and the data stream."""

    def __init__(self, args: argparse.Namespace):
        from . import data  # the procedural world's training batches (render_batch)

        self.args = args
        self.data = data
        self.device = training_device(getattr(args, "device", "cpu"))
        torch.manual_seed(args.seed)  # seeds every device's generator
        self.rng = np.random.default_rng(args.seed)
        self.models = torch.nn.ModuleDict(dict(
            transformer=FluxTransformer2DModel(**TRANSFORMER_CONFIG), text_encoder=build_clip(), text_encoder_2=build_t5()
        ))
        if getattr(args, "binding_loss", 0.0) > 0:  # training-only heads (never shipped), see .binding
            self.models["binding_heads"] = BindingHeads(T5_CONFIG["d_model"])
        self.models.to(self.device).train()
        self.last_binding_loss: torch.Tensor | None = None
        self.ema = {k: v.detach().clone() for k, v in self.models.state_dict().items()}
        self._bind_ema()
        decay, no_decay = [], []
        for name, p in self.models.named_parameters():
            (no_decay if p.dim() < 2 or "norm" in name or "embed" in name else decay).append(p)
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.99))
        self.tok_clip, self.tok_t5 = build_tokenizer(with_bos=True), build_tokenizer(with_bos=False)
        self.step = 0
        self.seconds = 0.0
        self.phases: list[dict] = []  # one entry per (re)start with new schedule settings, see note_phase
        self.vae_shift, self.vae_scaling = self._latent_statistics()
        self.vae = PixelSpaceVAE(scaling_factor=self.vae_scaling, shift_factor=self.vae_shift)
        self.img_ids = FluxPipeline._prepare_latent_image_ids(1, 8, 8, self.device, torch.float32)
        self.txt_ids = torch.zeros(MAX_TOKENS, 3, device=self.device)

    def _bind_ema(self) -> None:
        """Pair every EMA tensor with the live tensor it follows, once: the optimizer and ``load_state_dict``
        update the live tensors in place, so the pairs hold for the whole run (rebound when ``self.ema`` is replaced)."""
        state = self.models.state_dict()
        floats = [k for k, v in state.items() if v.dtype.is_floating_point]
        self._ema_floats = ([self.ema[k] for k in floats], [state[k] for k in floats])
        self._ema_others = [(self.ema[k], v) for k, v in state.items() if not v.dtype.is_floating_point]

    def _latent_statistics(self) -> tuple[float, float]:
        """Shift and scale that give the pixel latents zero mean and unit variance (fixed data, seed 1234)."""
        images, _ = self.data.render_batch(2048, np.random.default_rng(1234))
        x = torch.from_numpy(images).float() / 127.5 - 1
        return float(x.mean()), float(1.0 / x.std())

    # ------------------------------------------------------------------ one step
    def batch(self) -> tuple[torch.Tensor, list[str]]:
        images, captions = self.data.render_batch(self.args.batch, self.rng, getattr(self.args, "category_weights", None))
        drop = self.rng.random(len(captions)) < self.args.caption_dropout
        captions = ["" if d else c for d, c in zip(drop, captions)]
        x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1  # [B, 3, 32, 32] in [-1, 1]
        return x, captions

    def encode_text(self, captions: list[str], models, t5_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = models["text_encoder"](tokenize(self.tok_clip, captions).to(self.device)).pooler_output
        ids = tokenize(self.tok_t5, captions) if t5_ids is None else t5_ids
        seq = models["text_encoder_2"](ids.to(self.device))[0]
        return pooled, seq

    def loss(self, x: torch.Tensor, captions: list[str]) -> torch.Tensor:
        b = x.shape[0]
        latents = FluxPipeline._pack_latents(self.vae.encode(x), b, 12, 16, 16)  # [B, 64, 48]
        t = shifted_timesteps(torch.sigmoid(torch.randn(b, device=self.device)), self.args.timestep_shift)
        noise = torch.randn_like(latents)
        x_t = (1 - t[:, None, None]) * latents + t[:, None, None] * noise
        t5_ids = tokenize(self.tok_t5, captions)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.args.bf16):
            pooled, seq = self.encode_text(captions, self.models, t5_ids)
            pred = self.models["transformer"](hidden_states=x_t, timestep=t, pooled_projections=pooled,
                                              encoder_hidden_states=seq, txt_ids=self.txt_ids, img_ids=self.img_ids,
                                              return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), noise - latents)
        if "binding_heads" in self.models:
            targets = binding_targets_of_ids(self.tok_t5, t5_ids)
            binding = self.models["binding_heads"](seq.float(), targets.to(self.device))
            self.last_binding_loss = binding.detach()  # read when logged: no device sync every step
            loss = loss + self.args.binding_loss * binding
        return loss

    def lr_at(self, step: int) -> float:
        """Linear warm-up then cosine decay to ``final_lr_fraction``, both counted from ``--schedule-start``."""
        a = self.args
        step = max(0, step - a.schedule_start)
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        progress = (step - a.warmup) / max(1, a.steps - a.schedule_start - a.warmup)
        return a.lr * (a.final_lr_fraction + (1 - a.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))

    def train_step(self) -> float:
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        x, captions = self.batch()
        with _attention_backend(self.device):
            loss = self.loss(x, captions)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.models.parameters(), 1.0)
        self.opt.step()
        decay = min(self.args.ema, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_(*self._ema_floats, 1 - decay)
            for ema, live in self._ema_others:
                ema.copy_(live)
        self.step += 1
        return float(loss.detach())

    # ------------------------------------------------------------------ outputs
    def ema_pipeline(self):
        models = dict(transformer=FluxTransformer2DModel(**TRANSFORMER_CONFIG), text_encoder=build_clip(),
                      text_encoder_2=build_t5())
        for name, module in models.items():
            prefix = name + "."
            module.load_state_dict({k[len(prefix):]: v for k, v in self.ema.items() if k.startswith(prefix)})
            module.eval()
        return build_pipeline(**models, vae_scaling=self.vae_scaling, vae_shift=self.vae_shift,
                              sampling=dict(true_cfg_scale=self.args.cfg))

    def note_phase(self) -> bool:
        """Record the schedule this (re)start trains with, when it differs from the last recorded one
        (returns whether it did: a new phase starts here)."""
        rec = _phase_record(self.args, self.step)
        last = _phase_record(argparse.Namespace(**self.phases[-1]), self.step) if self.phases else None  # old records lack new keys
        if last != rec:
            self.phases.append(rec)
            return True
        return False

    def pretrain_text_encoder(self, steps: int) -> float:
        """Replace T5 by a fresh one pretrained ``steps`` steps on the binding loss alone (see
        :func:`.binding.pretrain_text_encoder`); its EMA restarts from the result and its optimizer
        moments are dropped. Seeded by ``--seed`` and the current step. Returns the final binding loss."""
        if "binding_heads" not in self.models:
            raise ValueError("--binding-pretrain needs --binding-loss > 0 (the heads it trains)")
        torch.manual_seed(self.args.seed + self.step)
        t5, heads = build_t5().to(self.device), BindingHeads(T5_CONFIG["d_model"]).to(self.device)
        loss = pretrain_text_encoder(t5, heads, self.tok_t5, steps, np.random.default_rng([self.args.seed, self.step]),
                                     batch=self.args.batch,
                                     category_weights=getattr(self.args, "category_weights", None))
        for name, module in (("text_encoder_2", t5), ("binding_heads", heads)):
            for p in self.models[name].parameters():
                self.opt.state.pop(p, None)
            self.models[name].load_state_dict(module.state_dict())
            for k, v in self.models[name].state_dict().items():
                self.ema[f"{name}.{k}"].copy_(v)
        self.models.train()
        return loss

    def save_weights(self, out: Path) -> None:
        """The EMA weights as float16 safetensors plus the metadata JSON (what ships as package data)."""
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.to("cpu", torch.float16).contiguous() for k, v in self.ema.items()
                   if v.dtype.is_floating_point and k.partition(".")[0] in COMPONENTS}
        atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp)))
        meta = {"vae_scaling": self.vae_scaling, "vae_shift": self.vae_shift,
                "sampling": {"num_inference_steps": 20, "true_cfg_scale": self.args.cfg, "scheduler_shift": 1.0},
                "training": {"steps": self.step, "batch": self.args.batch, "seed": self.args.seed, "lr": self.args.lr,
                             "seconds": round(self.seconds), "bf16_autocast": self.args.bf16, "phases": self.phases}}
        atomic_write(out / META_FILE, lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))

    def save_checkpoint(self, out: Path) -> None:
        tensors = {f"model.{k}": v for k, v in self.models.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.items()})
        names = {id(p): n for n, p in self.models.named_parameters()}
        for group in self.opt.param_groups:
            for p in group["params"]:
                for key, value in self.opt.state.get(p, {}).items():
                    tensors[f"opt.{names[id(p)]}.{key}"] = value if value.dim() else value.reshape(1)
        tensors["rng.torch"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        state = {"step": self.step, "seconds": self.seconds, "numpy_rng": self.rng.bit_generator.state, "phases": self.phases,
                 "vae_shift": self.vae_shift, "vae_scaling": self.vae_scaling,
                 "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()}}
        seen: set[int] = set()  # tied weights (T5's shared embedding) are stored as separate copies
        for k, v in tensors.items():
            tensors[k] = (v.clone() if v.data_ptr() in seen else v.contiguous()).cpu()
            seen.add(v.data_ptr())
        atomic_write(out / CHECKPOINT_TENSORS, lambda tmp: save_file(tensors, str(tmp)))
        atomic_write(out / CHECKPOINT_STATE, lambda tmp: tmp.write_text(json.dumps(state)))

    def load_checkpoint(self, out: Path) -> None:
        tensors = load_file(str(out / CHECKPOINT_TENSORS))
        state = json.loads((out / CHECKPOINT_STATE).read_text())
        saved = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        # Binding heads may be new in this phase (absent from the checkpoint) or dropped (present, unused).
        extra = [k for k in saved if k.startswith("binding_heads.") and k not in self.models.state_dict()]
        missing, unexpected = self.models.load_state_dict({k: v for k, v in saved.items() if k not in extra}, strict=False)
        if unexpected or any(not k.startswith("binding_heads.") for k in missing):
            raise RuntimeError(f"checkpoint does not match the models: missing {missing}, unexpected {unexpected}")
        self.ema = {k[4:]: v.to(self.device) for k, v in tensors.items() if k.startswith("ema.") and k[4:] not in extra}
        for k, v in self.models.state_dict().items():  # new heads: the EMA starts from their initialization
            self.ema.setdefault(k, v.detach().clone())
        self._bind_ema()
        for name, p in self.models.named_parameters():
            st = {key.split(".")[-1]: v for key, v in tensors.items() if key.startswith(f"opt.{name}.")}
            if st:
                st["step"] = st["step"].reshape(())  # AdamW keeps its step count on the CPU
                self.opt.state[p] = {k: v if k == "step" else v.to(self.device) for k, v in st.items()}
        torch.set_rng_state(tensors["rng.torch"])
        if self.device.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.rng.bit_generator.state = state["numpy_rng"]
        self.step, self.seconds = state["step"], state["seconds"]
        self.phases = state.get("phases") or [_phase_record(argparse.Namespace(**state["args"]), 0)]
        self.vae_shift, self.vae_scaling = state["vae_shift"], state["vae_scaling"]
        self.vae = PixelSpaceVAE(scaling_factor=self.vae_scaling, shift_factor=self.vae_shift)


def _attention_backend(device: torch.device):
    """On the CPU, attention through plain matmuls: with 76 tokens it is faster than the CPU flash kernel
    (whose backward took a quarter of a step); elsewhere the default choice."""
    return sdpa_kernel(SDPBackend.MATH) if device.type == "cpu" else nullcontext()


def parse_category_weights(text: str | None) -> dict[str, float] | None:
    """``"position=3,color_attr=3"`` -> ``{"position": 3.0, "color_attr": 3.0}`` (categories not named weigh 1);
    ``None`` or ``""`` -> ``None`` (uniform). Raises ``argparse.ArgumentTypeError`` on a malformed entry,
    an unknown category or a bad weight."""
    if not text:
        return None
    weights = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError(f"expected CATEGORY=WEIGHT, got {item!r}")
            weights[name.strip()] = float(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"bad --category-weights entry {item!r}: {exc}") from exc
    try:
        category_probabilities(weights)
    except MiniWorldError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return weights


def shifted_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """``t``: float ``[B]`` in (0, 1) -> ``shift * t / (1 + (shift - 1) * t)``, the map FLUX's scheduler applies.

    A shift above 1 moves training towards high noise, where a sample's layout is decided
    (``shift=3`` sends 14 % of the steps above t = 0.9 instead of 1.4 % for the plain logit-normal).
    """
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)


def _phase_record(args: argparse.Namespace, from_step: int) -> dict:
    """The schedule settings of a phase starting at ``from_step`` (defaults for arguments older checkpoints lack)."""
    keys = ("steps", "lr", "warmup", "final_lr_fraction", "schedule_start", "timestep_shift", "caption_dropout", "batch",
            "category_weights", "binding_loss", "binding_pretrain")
    defaults = {"schedule_start": 0, "timestep_shift": 1.0, "category_weights": None, "binding_loss": 0.0, "binding_pretrain": 0}
    return {"from_step": from_step, **{k: getattr(args, k, defaults.get(k)) for k in keys}}


def training_device(device: str | torch.device) -> torch.device:
    """The device to train on: ``"cpu"`` or an available CUDA device (``UnsupportedDeviceError`` otherwise)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UnsupportedDeviceError(f"unknown training device {device!r}: use 'cpu' or 'cuda'") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UnsupportedDeviceError(f"--device {device} asked for CUDA, but torch sees no CUDA device here")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type != "cpu":
        raise UnsupportedDeviceError(f"Mini FLUX trains on 'cpu' or 'cuda', not {dev.type!r}")
    return dev


class ThreadTuner:
    """Picks the faster CPU thread count while other processes come and go.

    On a small shared machine two OpenMP threads are twice as fast when the cores are free and many
    times slower when another process holds one of them. Every ``probe_every`` steps the tuner runs
    ``probe_len`` steps with the other count and keeps whichever had the lower median step time.
    """

    def __init__(self, choices=(1, 2), probe_every: int = 300, probe_len: int = 15):
        self.choices, self.probe_every, self.probe_len = choices, probe_every, probe_len
        self.current = torch.get_num_threads() if torch.get_num_threads() in choices else choices[-1]
        self.times: dict[int, list[float]] = {c: [] for c in choices}
        self.count = 0
        torch.set_num_threads(self.current)

    def record(self, seconds: float) -> None:
        self.times[self.current] = (self.times[self.current] + [seconds])[-self.probe_len:]
        self.count += 1
        phase = self.count % self.probe_every
        if phase == 0:  # start a probe of the other count
            self._use([c for c in self.choices if c != self.current][0])
        elif phase == self.probe_len:  # probe over: keep the faster
            medians = {c: float(np.median(t)) for c, t in self.times.items() if t}
            self._use(min(medians, key=medians.get))

    def _use(self, n: int) -> None:
        self.current = n
        torch.set_num_threads(n)


def quick_score(trainer: Trainer, n_prompts: int) -> dict:
    from .grammar import evaluation_prompts
    from .scoring import score

    prompts = evaluation_prompts()[:: max(1, len(evaluation_prompts()) // n_prompts)][:n_prompts]
    return score(trainer.ema_pipeline(), prompts, [0])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train Mini FLUX (rectified flow) on the procedural world.")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, log, final weights")
    p.add_argument("--steps", type=int, default=15000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--final-lr-fraction", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--schedule-start", type=int, default=0,
                   help="step the warm-up + cosine schedule starts from (a new phase of a resumed run)")
    p.add_argument("--timestep-shift", type=float, default=1.0,
                   help="train on shift*t/(1+(shift-1)*t) of the logit-normal t (more high-noise steps above 1)")
    p.add_argument("--category-weights", type=parse_category_weights, default=None,
                   help="relative caption-category frequencies, e.g. 'position=3,color_attr=3' (others 1; default uniform)")
    p.add_argument("--binding-loss", type=float, default=0.0,
                   help="weight of the auxiliary loss that teaches T5 which object each word belongs to (see .binding; 0: off)")
    p.add_argument("--binding-pretrain", type=int, default=0,
                   help="when a new phase starts: replace T5 by a fresh one pretrained this many steps on the binding loss alone")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the transformer (CPU: 1.3-1.5x faster steps after ~40 s of compilation)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--cfg", type=float, default=4.0, help="classifier-free guidance scale stored for sampling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="train the forward pass in float32")
    p.add_argument("--checkpoint-minutes", type=float, default=10.0)
    p.add_argument("--eval-every", type=int, default=1000, help="steps between quick scores (0: never)")
    p.add_argument("--eval-prompts", type=int, default=36)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--until", type=int, default=None,
                   help="stop (checkpoint and weights) at this step without shortening the --steps schedule")
    p.add_argument("--device", default="cpu", help="'cpu' or 'cuda' (quick scores still sample on the CPU)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: switch between 1 and 2 by measured speed, see ThreadTuner)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = training_device(args.device)  # fail before any work
    if not 0 <= args.schedule_start <= args.steps or args.timestep_shift <= 0:
        raise SystemExit("--schedule-start must lie in [0, --steps] and --timestep-shift must be positive")
    stop = args.steps if args.until is None else min(args.until, args.steps)
    tuner = None
    if args.threads:
        torch.set_num_threads(args.threads)
    elif device.type == "cpu":
        tuner = ThreadTuner()
    args.out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(args)
    if args.resume and (args.out / CHECKPOINT_STATE).exists():
        trainer.load_checkpoint(args.out)
        print(f"resumed at step {trainer.step}", flush=True)
    if trainer.note_phase() and args.binding_pretrain:
        loss = trainer.pretrain_text_encoder(args.binding_pretrain)
        print(f"T5 pretrained on the binding loss: {args.binding_pretrain} steps, loss {loss:.4f}", flush=True)
    if args.compile:
        trainer.models["transformer"].compile()  # in place: parameter names (checkpoints, EMA) unchanged
    log = (args.out / "log.jsonl").open("a")
    last_ckpt = time.time()
    losses: list[float] = []
    while trainer.step < stop:
        t0 = time.time()
        losses.append(trainer.train_step())
        trainer.seconds += time.time() - t0
        if tuner is not None:
            tuner.record(time.time() - t0)
        if trainer.step % 50 == 0:
            rec = {"step": trainer.step, "loss": float(np.mean(losses)), "lr": trainer.lr_at(trainer.step),
                   "minutes": round(trainer.seconds / 60, 2), "threads": torch.get_num_threads()}
            if trainer.last_binding_loss is not None:
                rec["binding_loss"] = float(trainer.last_binding_loss)
            losses = []
            if args.eval_every and trainer.step % args.eval_every == 0:
                rec["quick_score"] = quick_score(trainer, args.eval_prompts)
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if time.time() - last_ckpt > 60 * args.checkpoint_minutes:
            trainer.save_checkpoint(args.out)
            last_ckpt = time.time()
    trainer.save_checkpoint(args.out)
    trainer.save_weights(args.out)
    print(f"done: {trainer.step} steps in {trainer.seconds / 60:.1f} min; weights in {args.out}", flush=True)


if __name__ == "__main__":
    main()
