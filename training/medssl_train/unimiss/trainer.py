"""One UniMiSS optimiser step and everything it needs: student (DDP-wrapped when distributed), momentum teacher,
loss with its centre, AdamW and the step schedules. The loop in :mod:`.pretrain` and ``bench/train_step.py``
both drive it.

    trainer = UniMiSSTrainer(card, config, context)
    loss = trainer.step(step, domain=3, views=volumes)      # views (2B, 1, D, H, W): first views, then second
"""

from __future__ import annotations

import torch
from torch import nn

from medssl_train.distributed import DistributedContext, unwrap, wrap_ddp
from medssl_train.schedules import WarmupCosine
from medssl_train.unimiss.config import PretrainConfig
from medssl_train.unimiss.head import DINOHead, SSLNetwork
from medssl_train.unimiss.loss import UniMiSSLoss
from medssl_train.unimiss.teacher import ema_update, make_teacher
from medssl_zoo import MedsslError, ModelCard
from medssl_zoo.layers import branch_key
from medssl_zoo.registry import build_model


def is_3d_parameter(name: str) -> bool:
    """Whether a parameter belongs to the MiT's 3D branch only (frozen during 2D steps)."""
    return branch_key(3) in name.split(".")


def build_networks(card: ModelCard, config: PretrainConfig) -> tuple[SSLNetwork, SSLNetwork]:
    """Student (MiT of ``card`` + DINO head, initialised from the current torch seed) and its teacher copy."""
    backbone = build_model(card)
    head = DINOHead(backbone.config.decoder_dims[-1], config.out_dim, config.hidden_dim, config.bottleneck_dim)
    student = SSLNetwork(backbone, head)
    return student, make_teacher(student)


def _parameter_groups(network: nn.Module) -> list[dict[str, object]]:
    """Weight decay on weights; none on biases and other 1-D parameters (norms), as the official code."""
    decayed, plain = [], []
    for name, parameter in network.named_parameters():
        (plain if name.endswith(".bias") or parameter.ndim == 1 else decayed).append(parameter)
    return [{"params": decayed}, {"params": plain, "weight_decay": 0.0}]


@torch.no_grad()
def clip_each_gradient(parameters: list[nn.Parameter], max_norm: float) -> None:
    """Scale each parameter's gradient down to norm ``max_norm`` where it is larger (DINO's ``clip_gradients``)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads or max_norm <= 0:
        return
    norms = torch._foreach_norm(grads)
    scales = [torch.clamp(max_norm / (norm + 1e-6), max=1.0) for norm in norms]
    torch._foreach_mul_(grads, scales)


def _set_3d_trainable(network: nn.Module, trainable: bool) -> None:
    for name, parameter in network.named_parameters():
        if is_3d_parameter(name):
            parameter.requires_grad_(trainable)


class UniMiSSTrainer:
    """The networks, loss, optimiser and schedules of a run on this rank.

    The student and teacher start from ``torch.manual_seed(config.seed)`` (the same on every rank). The
    learning rate is ``config.learning_rate x batch_size x world_size / 256`` at the end of the warm-up.
    """

    def __init__(self, card: ModelCard, config: PretrainConfig, context: DistributedContext | None = None) -> None:
        context = context or DistributedContext()
        if card.kwargs.get("task", "embed") != "embed" or card.architecture != "mit":
            raise ValueError(f"card {card.name!r}: UniMiSS pre-trains a MiT with task 'embed'; got {card.architecture} "
                             f"task {card.kwargs.get('task')!r}")
        self.config, self.device = config, context.device
        torch.manual_seed(config.seed)
        self.student, self.teacher = build_networks(card, config)
        self.student.to(self.device).train()
        self.teacher.to(self.device).train()
        self.criterion = UniMiSSLoss(config.out_dim, config.teacher_temp, config.student_temp, config.centre_momentum)
        self.criterion.to(self.device)
        self.optimiser = torch.optim.AdamW(_parameter_groups(self.student), lr=0.0)
        peak = config.learning_rate * config.batch_size * context.world_size / 256
        self.learning_rate = WarmupCosine(peak, config.min_learning_rate, config.steps, config.warmup_steps)
        self.weight_decay = WarmupCosine(config.weight_decay, config.weight_decay_end, config.steps)
        self.momentum = WarmupCosine(config.teacher_momentum, 1.0, config.steps)
        self.trained = wrap_ddp(self.student, context)
        self.parameters = list(self.student.parameters())
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda" and config.bf16)

    def step(self, step: int, domain: int, views: torch.Tensor) -> torch.Tensor:
        """Optimiser step ``step`` (0-based, picks the schedules' values) on a ``domain`` (2 or 3) batch of view
        pairs ``views`` (2B, C, *S), on this trainer's device. Returns the loss (detached)."""
        config = self.config
        _set_3d_trainable(self.student, domain == 3)
        for group in self.optimiser.param_groups:
            group["lr"] = self.learning_rate(step)
        self.optimiser.param_groups[0]["weight_decay"] = self.weight_decay(step)
        with self.autocast:
            student_out = self.trained(views, with_slices=domain == 3).float()
            with torch.no_grad():
                teacher_out = self.teacher(views, with_slices=domain == 3).float()
        loss_of = self.criterion.loss_2d if domain == 2 else self.criterion.loss_3d
        loss = loss_of(student_out, teacher_out)
        if not torch.isfinite(loss):
            raise MedsslError(f"the UniMiSS loss became {loss.item()} at step {step} ({domain}D); lower the learning "
                              f"rate (now {self.learning_rate(step):.3g}) or raise warmup_steps")
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        clip_each_gradient(self.parameters, config.clip_grad)
        if step < config.freeze_last_layer_steps:
            self.student.head.last_layer.weight.grad = None
        self.optimiser.step()
        _set_3d_trainable(self.student, True)
        ema_update(self.teacher, self.student, self.momentum(step))
        self.criterion.update_centre(teacher_out)
        return loss.detach()

    def state_dict(self) -> dict[str, object]:
        """Student, teacher, loss centre and optimiser state."""
        return {"student": unwrap(self.student).state_dict(), "teacher": self.teacher.state_dict(),
                "loss": self.criterion.state_dict(), "optimiser": self.optimiser.state_dict()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore what :meth:`state_dict` gave."""
        self.student.load_state_dict(state["student"])  # type: ignore[arg-type]
        self.teacher.load_state_dict(state["teacher"])  # type: ignore[arg-type]
        self.criterion.load_state_dict(state["loss"])  # type: ignore[arg-type]
        self.optimiser.load_state_dict(state["optimiser"])  # type: ignore[arg-type]
