"""The UniMiSS objective (paper Sec. 3.3, Eq. 3-6): centred, sharpened cross-entropy between student and teacher
outputs of different views, the 2D loss and the 3D volume-slice loss, and the EMA of the centre.

Notation of the paper: for one image x with augmented views x_1, x_2, the student gives f_1 (view 1) and the
teacher f_2 (view 2); by symmetry the student also sees view 2 and the teacher view 1. Below, s_v is the
student's output for view v and t_v the teacher's; in 3D, s_v / t_v are the volume outputs and s'_v / t'_v the
averages of the outputs of the view's m slices run through the 2D path.

    H(s, t) = - sum_k softmax((t - C) / tau_t)_k * log softmax(s / tau_s)_k       (Eq. 3, per image)

    L_2D = H(s_1, t_2) + H(s_2, t_1)                                               (Eq. 5)

    L_3D = H(s_1, t_2)  + H(s_1, t'_2)  + H(s'_1, t_2)  + H(s'_1, t'_2)          (Eq. 6: the paper's
         + H(s_2, t_1)  + H(s_2, t'_1)  + H(s'_2, t_1)  + H(s'_2, t'_1)           H(f_1, f_2) ... H(f'_2, f'_1))

i.e. every student output of one view against every teacher output of the other view: volume-volume,
volume-slice, slice-volume and slice-slice, both ways. Both losses are averaged over the batch and halved,
as the official code computes them (its loss averages the two directions of each pair, and its 3D loss sums
the four pairs), so the 2D loss is the mean of its two terms.

The centre C (Eq. 4): C <- omega * C + (1 - omega) * mean of the step's teacher outputs (all ranks). The
official 3D step updates it after each of its four pair losses; here it is updated once per step with the
mean of all teacher outputs the step used (volumes and slice averages of both views), and every term of the
step uses the same centre.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

#: A view's outputs: (view number, logits (B, K)).
ViewOutputs = tuple[int, torch.Tensor]


def centred_cross_entropy(
    student: torch.Tensor, teacher: torch.Tensor, centre: torch.Tensor, teacher_temp: float, student_temp: float
) -> torch.Tensor:
    """Eq. 3 averaged over the batch: student and teacher logits (B, K), centre (1, K) or (K,) -> scalar.
    The teacher side carries no gradient."""
    targets = F.softmax((teacher.detach() - centre) / teacher_temp, dim=-1)
    return -(targets * F.log_softmax(student / student_temp, dim=-1)).sum(dim=-1).mean()


class UniMiSSLoss(nn.Module):
    """The cross-view loss with its centre (a buffer, so it travels with ``state_dict``).

    Args:
        out_dim: K, the heads' output width.
        teacher_temp: tau_t (paper 0.04). student_temp: tau_s (paper 0.1). centre_momentum: omega (paper 0.9).
    """

    centre: torch.Tensor

    def __init__(self, out_dim: int, teacher_temp: float = 0.04, student_temp: float = 0.1, centre_momentum: float = 0.9):
        super().__init__()
        if not (teacher_temp > 0 and student_temp > 0 and 0 <= centre_momentum <= 1):
            raise ValueError("temperatures must be positive and the centre momentum in [0, 1]")
        self.teacher_temp, self.student_temp, self.centre_momentum = teacher_temp, student_temp, centre_momentum
        self.register_buffer("centre", torch.zeros(1, out_dim))

    def cross_view(self, students: Sequence[ViewOutputs], teachers: Sequence[ViewOutputs]) -> torch.Tensor:
        """Half the sum of H(s, t) over every student output s and teacher output t of different views."""
        terms = [
            centred_cross_entropy(s, t, self.centre, self.teacher_temp, self.student_temp)
            for s_view, s in students
            for t_view, t in teachers
            if s_view != t_view
        ]
        if not terms:
            raise ValueError("no student/teacher outputs of different views: UniMiSS needs two views per image")
        return torch.stack(terms).sum() / 2

    def loss_2d(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Eq. 5 (halved). ``student``, ``teacher``: (2B, K), view 1's B rows then view 2's."""
        s1, s2 = student.chunk(2)
        t1, t2 = teacher.chunk(2)
        return self.cross_view([(1, s1), (2, s2)], [(1, t1), (2, t2)])

    def loss_3d(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Eq. 6 (halved). ``student``, ``teacher``: (4B, K) as :class:`SSLNetwork` gives for the views stacked
        [view 1; view 2] with slices: rows [volumes of view 1; volumes of view 2; slice means of view 1;
        slice means of view 2]."""
        s1, s2, s1_slices, s2_slices = student.chunk(4)
        t1, t2, t1_slices, t2_slices = teacher.chunk(4)
        return self.cross_view(
            [(1, s1), (1, s1_slices), (2, s2), (2, s2_slices)], [(1, t1), (1, t1_slices), (2, t2), (2, t2_slices)]
        )

    @torch.no_grad()
    def update_centre(self, teacher: torch.Tensor) -> None:
        """Eq. 4 with the mean of ``teacher`` (N, K) over this rank's rows and, when distributed, all ranks'."""
        total = teacher.float().sum(dim=0, keepdim=True)
        count = torch.tensor([teacher.shape[0]], dtype=torch.float32, device=teacher.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
            dist.all_reduce(count)
        self.centre.mul_(self.centre_momentum).add_(total / count, alpha=1 - self.centre_momentum)
