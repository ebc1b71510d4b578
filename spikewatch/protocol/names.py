"""The metric vocabulary: every signal spikewatch streams, its unit, and where it comes from.

Shared by the agent (what it emits), the server (rules, Prometheus export, partial-sum combining)
and the dashboards. Importable without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Combine(StrEnum):
    """How the server turns per-rank partial sums of a sharded job into one exact global value."""

    RATIO = "ratio"  # Σ num / Σ den
    SQRT_RATIO = "sqrt_ratio"  # √(Σ num / Σ den), e.g. ‖g‖/‖√v̂‖ from Σg² and Σv̂
    SUM = "sum"
    MAX = "max"
    MIN = "min"


@dataclass(frozen=True, slots=True)
class Metric:
    """One streamed signal. `export` marks the few exported to Prometheus per active run."""

    name: str
    unit: str
    description: str
    source: str
    export: bool = False
    combine: Combine | None = None


# --- training scalars --------------------------------------------------------------------------
LOSS = "loss"
GRAD_NORM = "grad_norm"
LR = "lr"
BETA1 = "beta1"
BETA2 = "beta2"
# --- preconditioned curvature (seed 000) --------------------------------------------------------
LAMBDA_GRAD = "lambda_grad"
LAMBDA_MAX = "lambda_max"
STABILITY_RATIO = "stability_ratio"
STABILITY_RATIO_MAX = "stability_ratio_max"
STABILITY_RATIO_SECANT = "stability_ratio_secant"
LAMBDA_TWO_SECANT = "lambda_two_secant"
STABILITY_RATIO_TWO_SECANT = "stability_ratio_two_secant"
GRAD_TOP_EIG_COS = "grad_top_eig_cos"
# --- preconditioner decay (seed 000) ------------------------------------------------------------
RHO = "rho"
RHO_SAMPLED = "rho_sampled"
SQRT_V_NORM = "sqrt_v_norm"
SQRT_V_DECAY = "sqrt_v_decay"
PHASE = "phase"
INSTABILITY_RISE = "instability_rise"
INSTABILITY_RECOVERY = "instability_recovery"
# --- clean-loss swings (minibatch) ---------------------------------------------------------------
EVAL_LOSS = "eval_loss"
EVAL_LOSS_SWINGS = "eval_loss_swings"
EVAL_LOSS_SPIKES = "eval_loss_spikes"
# --- spectral alignment (seed 003) --------------------------------------------------------------
SA_MEAN = "sa_mean"
SA_SIGN_DIVERSITY = "sa_sign_diversity"
SA_HIST = "sa_hist"
# --- gradient spectrum (seed 001) ---------------------------------------------------------------
GRAD_SPIKE_SHARE = "grad_spike_share"
# --- output over-confidence (seed 004) ----------------------------------------------------------
MAX_PROB = "max_prob"
ENTROPY = "entropy"
PROB_IMPURITY = "prob_impurity"
LOGIT_NORM = "logit_norm"
# --- agent self-report --------------------------------------------------------------------------
AGENT_OVERHEAD = "agent_overhead"
AGENT_STEP_TIME = "agent_step_time_seconds"
AGENT_CADENCE = "agent_cadence"
AGENT_PREDICTION_CADENCE = "agent_prediction_cadence"
AGENT_QUEUED = "agent_queued"
AGENT_SENT = "agent_sent"
AGENT_ACKED = "agent_acked"
AGENT_SPOOLED = "agent_spooled"
AGENT_DROPPED = "agent_dropped"
GUARD_ACTIONS = "guard_actions"
GUARD_ACTIVE = "guard_active"

_S0 = "arXiv:2506.04805 (Adaptive preconditioners trigger loss spikes in Adam)"
_S1 = "Spectra (gradient spike-tail spectrum)"
_S3 = "arXiv:2510.04202 (Spectral alignment predicts loss explosion)"
_S4 = "arXiv:2502.02407 (spurious sharpness via logits)"
_OWN = "spikewatch"

CATALOGUE: tuple[Metric, ...] = (
    Metric(LOSS, "1", "training loss as logged", "user", export=True),
    Metric(GRAD_NORM, "1", "global L2 norm of the gradient", "prior art", True, Combine.SQRT_RATIO),
    Metric(LR, "1", "learning rate of parameter group 0", "optimizer", export=True),
    Metric(BETA1, "1", "Adam beta1 / SGD momentum of group 0", "optimizer"),
    Metric(BETA2, "1", "Adam beta2 of group 0", "optimizer"),
    Metric(LAMBDA_GRAD, "1/lr", "gradient-directional preconditioned curvature gᵀĤg/‖g‖²", _S0,
           combine=Combine.RATIO),
    Metric(LAMBDA_MAX, "1/lr", "largest eigenvalue of the preconditioned Hessian Ĥ", _S0),
    Metric(STABILITY_RATIO, "1", "η·λ_grad/2; ≥ 1 is beyond the edge of stability", _S0,
           export=True, combine=Combine.RATIO),
    Metric(STABILITY_RATIO_MAX, "1", "η·λ_max/2", _S0, export=True),
    Metric(STABILITY_RATIO_SECANT, "1", "the plain secant's ratio along the last update (the "
           "momentum direction), on the two-secant's sample", _S0, export=True,
           combine=Combine.RATIO),
    Metric(LAMBDA_TWO_SECANT, "1/lr", "curvature along the preconditioned gradient from two "
           "consecutive gradient differences (no extra pass, sampled coordinates)", _S0,
           combine=Combine.RATIO),
    Metric(STABILITY_RATIO_TWO_SECANT, "1", "η·(λ_two_secant + w)/2, every step; ≥ 1 is beyond "
           "the edge of stability", _S0, export=True, combine=Combine.RATIO),
    Metric(GRAD_TOP_EIG_COS, "1", "|cos| between gradient and Ĥ's top eigenvector", _S0),
    Metric(RHO, "1", "‖g‖/‖√v̂‖; ≪ 1 means v decays like β2 per step", _S0, True,
           Combine.SQRT_RATIO),
    Metric(RHO_SAMPLED, "1", "ρ on the two-secant's coordinate sample, at the same step as its "
           "ratio", _S0, True, Combine.SQRT_RATIO),
    Metric(SQRT_V_NORM, "1", "‖√v̂‖ over all parameters", _S0, combine=Combine.SQRT_RATIO),
    Metric(SQRT_V_DECAY, "1", "per-step decay of ‖√v̂‖ in units of √β2 (1 = pure β2 decay)", _S0,
           export=True),
    Metric(PHASE, "1", "five-phase label: 1 stable, 2 v-decay, 3 onset, 4 v-growth, 5 recovery",
           _S0, export=True),
    Metric(INSTABILITY_RISE, "1", "loss rise (max / min of the 50 steps before) of the run's "
           "latest instability (stability ratio ≥ 1 for 3 readings; the running one's rise so far "
           "once its crossing is over and it is 10 steps old); 1 before any", _S0, export=True),
    Metric(INSTABILITY_RECOVERY, "1", "the latest loss over the loss that instability rose from "
           "(the min of the 50 steps before it): < 1 once the run has descended past it, ≥ 1 "
           "back on its plateau", _S0, export=True),
    Metric(EVAL_LOSS, "1", "a clean loss the user logs (full data, held-out set or fixed batch)",
           "user"),
    Metric(EVAL_LOSS_SWINGS, "count", "completed 1.5× swings of eval_loss over its 50-step minimum "
           "in the last 300 steps, since its last 2× spike",
           "docs/early-warning.md (minibatch study)"),
    Metric(EVAL_LOSS_SPIKES, "count", "spikes of eval_loss (≥ 2× its 50-step minimum, or "
           "non-finite) that started in the last 1000 steps",
           "docs/early-warning.md (minibatch study)"),
    Metric(SA_MEAN, "1", "mean spectral alignment cos(x, v₁) over sampled rows", _S3),
    Metric(SA_SIGN_DIVERSITY, "1", "1 − |p₊ − p₋| of alignment signs (min over layers)", _S3,
           export=True, combine=Combine.MIN),
    Metric(SA_HIST, "count", "histogram of cos(x, v₁) over [-1, 1]", _S3),
    Metric(GRAD_SPIKE_SHARE, "1", "energy share of the top ~1.5% singular directions of G", _S1,
           export=True, combine=Combine.MAX),
    Metric(MAX_PROB, "1", "mean max-probability of the output distribution", _S4, export=True),
    Metric(ENTROPY, "nat", "mean entropy of the output distribution", _S4),
    Metric(PROB_IMPURITY, "1", "mean 1 − ‖p‖² of the output distribution", _S4),
    Metric(LOGIT_NORM, "1", "mean L2 norm of the logits", _S4),
    Metric(AGENT_OVERHEAD, "1", "agent time as a fraction of step time", _OWN, export=True),
    Metric(AGENT_STEP_TIME, "s", "wall time of one training step", _OWN, export=True),
    Metric(AGENT_CADENCE, "steps", "current cadence of each probe (per-probe layer scalar)", _OWN),
    Metric(AGENT_PREDICTION_CADENCE, "steps", "cadence of the predictor (two-secant): 1 = every "
           "step; more = stretched by the overhead budget; 0 = off", _OWN, export=True),
    Metric(AGENT_QUEUED, "1", "batches waiting in the agent's memory queue", _OWN),
    Metric(AGENT_SENT, "1", "batches sent (cumulative)", _OWN),
    Metric(AGENT_ACKED, "1", "batches acknowledged by the server (cumulative)", _OWN),
    Metric(AGENT_SPOOLED, "1", "batches written to the on-disk spool (cumulative)", _OWN),
    Metric(AGENT_DROPPED, "1", "batches dropped under back-pressure (cumulative)", _OWN),
    Metric(GUARD_ACTIONS, "1", "guard actions so far (cumulative; with attach(guard=...))", _OWN,
           export=True),
    Metric(GUARD_ACTIVE, "1", "1 while a guard action holds or releases, else 0", _OWN,
           export=True),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in CATALOGUE}
EXPORTED: tuple[str, ...] = tuple(m.name for m in CATALOGUE if m.export)


class EventType(StrEnum):
    """Discrete things that happened at a step."""

    HPARAM_CHANGE = "hparam_change"  # lr/betas/eps/weight decay changed between steps
    MOMENTUM_JUMP = "momentum_jump"  # beta1/momentum changed (seed 002); data: rescaled or not
    NONFINITE = "nonfinite"  # NaN/Inf loss or gradient
    LOSS_SPIKE = "loss_spike"  # a reactive rule (Megatron / llm-foundry / OLMo-core) fired
    PHASE_CHANGE = "phase_change"
    RESUMED = "resumed"
    PROBE_ERROR = "probe_error"  # a probe failed; the agent disabled or backed it off
    PREDICTION_DEGRADED = "prediction_degraded"  # the predictor's cadence left (or came back to)
    # every step: data cadence, previous, reason
    GUARD_ACTION = "guard_action"  # the guard acted on a predicted spike: what, why, the ratio
    GUARD_RELEASE = "guard_release"  # ... and let go: when, after how many steps
