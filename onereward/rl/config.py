"""params.yaml `train_policy`: every knob of the RL stage, typed and documented."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from onereward.rl.sharding import PARALLEL
from onereward.tasks import DIMENSIONS, TASKS, rl_task_weights

ALGORITHMS = ("reference_ema", "dynamic")
REWARD_ORDERS = ("first", "both")


@dataclass(frozen=True)
class LoraSpec:
    """PEFT LoRA on the transformer (used when ``finetune: lora``)."""

    rank: int = 8
    """LoRA rank r."""
    alpha: float = 8.0
    """LoRA scaling numerator (scale = alpha / rank)."""
    target_modules: tuple[str, ...] = (
        "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
        "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp",
    )
    """Linear layers (name suffixes) that get adapters: attention and MLPs of both block kinds."""


@dataclass(frozen=True)
class TrainPolicyConfig:
    """OneReward Alg. 1 / Alg. 2 (arXiv 2508.21066, Sec. 3.3)."""

    algorithm: str = "reference_ema"
    """'reference_ema': Alg. 1, frozen base as reference plus an EMA copy (three models);
    'dynamic': Alg. 2, the EMA model is the reference (two models)."""
    seed: int = 0
    """Seeds task/condition sampling, noises e1/e2 and t (derived per step and rank, so a
    resumed run draws exactly what an uninterrupted one draws)."""
    steps: int = 300
    """Optimizer steps (iterations)."""
    batch_size: int = 4
    """Conditions per step and process (paper: 8)."""
    lr: float = 1e-4
    """AdamW learning rate, constant after warm-up (paper: 1e-5 on FLUX.1-Fill-dev)."""
    warmup_steps: int = 10
    """Linear learning-rate warm-up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping (global L2 norm)."""
    reward_cap: float = 0.9
    """lambda: loss_d = max(0, lambda - r_d); rewards above it give no gradient (anti reward hacking)."""
    dimension_weights: dict[str, dict[str, float]] = field(default_factory=dict)
    """Weight of each dimension's capped loss, by task then dimension (for example
    ``{extend: {aesthetics: 2.0}}``): a sample's loss and reward are the weighted means over its
    task's dimensions. Dimensions left out weigh 1; 0 drops one from the reward. Empty: the
    paper's plain mean."""
    reward_orders: str = "first"
    """'first': r_d = P(Yes | policy, reference), the paper's Alg. 1; 'both': the mean of that and
    P(No | reference, policy), the order-symmetric score Table 1 measures the judge with."""
    anchor_weight: float = 0.0
    """beta: adds beta * mean squared distance between the policy's one-step x0 latent and the
    reference's (Alg. 1: the frozen base; Alg. 2: the EMA) from the same x_t, the flow-matching
    form of the KL penalty peers add (Flow-GRPO's beta). 0: the paper's loss, no anchor."""
    ema_decay: float = 0.95
    """EMA rate: ema <- decay * ema + (1 - decay) * policy, after every step."""
    num_inference_steps: int = 8
    """Length of the flow-matching schedule for the reference and the policy rollout."""
    t_range: tuple[int, int] = (2, 6)
    """[t1, t2]: the policy denoises without gradient for t ~ U{t1..t2} steps of that schedule,
    then predicts x0 in one step with gradient at schedule index t."""
    task_weights: dict[str, float] = field(default_factory=dict)
    """RL task-sampling weights by task name, normalised to sum to one; tasks left out are not
    sampled. Empty: the registry's (paper: fill 0.5, extend 0.25, removal 0.25)."""
    guidance_scale: float = 1.0
    """FLUX guidance-embedding value during rollouts."""
    true_cfg: float = 1.0
    """True CFG scale during rollouts (1.0: off; >1 batches a negative-prompt pass)."""
    negative_prompt: str = "nsfw"
    """Negative prompt when ``true_cfg`` > 1."""
    reference_seeds: int = 1
    """Noise seeds e1 per condition for the reference; Alg. 1 caches the reference image by
    (condition, seed), so after one pass over the data the reference costs nothing."""
    finetune: str = "full"
    """'full' or 'lora'."""
    lora: LoraSpec = field(default_factory=LoraSpec)
    """LoRA settings (when ``finetune: lora``)."""
    parallel: str = "ddp"
    """How several processes (``accelerate launch``) share the work: 'ddp', every process a
    whole replica; 'fsdp', full fine-tuning with the transformer, its optimiser state, the EMA
    and the reference sharded over the processes (FSDP2, ``onereward.rl.sharding``)."""
    processes: int = 1
    """Processes on this machine when no launcher started the stage (``accelerate launch`` decides
    itself, ``onereward.launch``): each draws its own ``batch_size`` conditions, as under a launcher."""
    ema_device: str = "accelerator"
    """Where the EMA and (full fine-tuning) the frozen reference live: 'accelerator' or 'cpu'
    (off the accelerator; each use copies them over for the call, each step's EMA update copies
    the trained tensors back). Both hold only trained tensors; under LoRA the reference is the
    base with the adapters off and holds nothing."""
    prompt_cache_size: int = 1024
    """Prompt embeddings kept (on the CPU, least recently used out first); each is computed
    once while cached (FLUX.1-Fill-dev: 4 MB a prompt)."""
    offload_text_encoders: bool = False
    """Keep CLIP and T5 on the CPU, moved to the accelerator only to encode uncached prompts."""
    gradient_checkpointing: bool = True
    """Recompute activations of the transformer, the VAE decoder and the judge in backward."""
    checkpoint_every: int = 50
    """Steps between resumable checkpoints (weights, optimizer, EMA, RNG, reference cache)."""
    keep_checkpoints: int = 2
    """Most recent checkpoints kept on disk."""
    val_every: int = 25
    """Steps between validation rewards (also at step 0 and at the end)."""
    val_size: int = 24
    """Validation conditions (a fixed, seeded subset of the val split)."""
    judge: str = "data/models/judge"
    """The trained judge (output of train_judge): a model or adapter directory, see Judge.load."""
    shards: str = "data/shards"
    """Shard root written by the shard stage (train and val splits)."""
    max_conditions: int = 0
    """Cap on train conditions held in memory (0: all)."""

    def __post_init__(self):
        if self.processes < 1:
            raise ValueError(f"train_policy.processes must be at least 1, got {self.processes}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"train_policy.algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.finetune not in ("full", "lora"):
            raise ValueError(f"train_policy.finetune must be 'full' or 'lora', got {self.finetune!r}")
        if self.reward_orders not in REWARD_ORDERS:
            raise ValueError(f"train_policy.reward_orders must be one of {REWARD_ORDERS}, got {self.reward_orders!r}")
        if self.parallel not in PARALLEL:
            raise ValueError(f"train_policy.parallel must be one of {PARALLEL}, got {self.parallel!r}")
        if self.parallel == "fsdp" and self.finetune != "full":
            raise ValueError("train_policy.parallel: fsdp shards full fine-tuning; LoRA fits one GPU per process "
                             "(use parallel: ddp)")
        t1, t2 = self.t_range
        if not 0 <= t1 <= t2 < self.num_inference_steps:
            raise ValueError(f"train_policy.t_range {self.t_range} must satisfy 0 <= t1 <= t2 < num_inference_steps")
        if not 1 <= self.reference_seeds <= 14:  # seeds key*16 + 14/15 are the validation noises
            raise ValueError("train_policy.reference_seeds must be in [1, 14]")
        unknown = sorted(set(self.task_weights) - set(TASKS))
        if unknown or any(w < 0 for w in self.task_weights.values()) or (self.task_weights and not sum(self.task_weights.values()) > 0):
            raise ValueError(f"train_policy.task_weights must map tasks of {sorted(TASKS)} to non-negative weights "
                             f"with a positive sum, got {self.task_weights!r}")
        for task, weights in self.dimension_weights.items():
            if task not in TASKS:
                raise ValueError(f"train_policy.dimension_weights: unknown task {task!r}; known: {sorted(TASKS)}")
            dims = TASKS[task].dimensions
            always = [d for d in dims if not DIMENSIONS[d].uses_prompt]  # scored on every input
            if set(weights) - set(dims) or any(w < 0 for w in weights.values()) \
                    or not any(weights.get(d, 1.0) > 0 for d in always):
                raise ValueError(f"train_policy.dimension_weights.{task} must map {task}'s dimensions {list(dims)} to "
                                 f"non-negative weights, one of {always} (scored without a prompt too) above 0; "
                                 f"got {weights!r}")
        if self.ema_device not in ("accelerator", "cpu"):
            raise ValueError(f"train_policy.ema_device must be 'accelerator' or 'cpu', got {self.ema_device!r}")
        if self.prompt_cache_size < max(self.batch_size, 1) + 1:  # a batch's prompts and the negative one
            raise ValueError(f"train_policy.prompt_cache_size must be at least batch_size + 1, got {self.prompt_cache_size}")
        if self.anchor_weight < 0:
            raise ValueError(f"train_policy.anchor_weight must be >= 0, got {self.anchor_weight}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("train_policy.ema_decay must be in [0, 1)")

    def reward_weights(self, task: str) -> dict[str, float]:
        """Dimension -> weight of its loss for ``task`` (1 where ``dimension_weights`` is silent)."""
        return {d: float(self.dimension_weights.get(task, {}).get(d, 1.0)) for d in TASKS[task].dimensions}

    def sampling_weights(self) -> dict[str, float]:
        """Task -> probability of sampling it in an iteration."""
        if not self.task_weights:
            return rl_task_weights()
        total = sum(self.task_weights.values())
        return {t: w / total for t, w in self.task_weights.items()}

    def to_dict(self) -> dict:
        return asdict(self)
