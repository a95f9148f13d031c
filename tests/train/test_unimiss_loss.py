"""The UniMiSS loss (Eq. 3-6) and centre update (Eq. 4) against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from medssl_train.unimiss import UniMiSSLoss, centred_cross_entropy

TEACHER_TEMP, STUDENT_TEMP = 0.04, 0.1


def student_logits(*probabilities: float) -> list[float]:
    """Logits whose softmax at the student temperature is ``probabilities``."""
    return [STUDENT_TEMP * math.log(p) for p in probabilities]


def teacher_logits(*probabilities: float) -> list[float]:
    """Logits whose softmax at the teacher temperature (centre 0) is ``probabilities``."""
    return [TEACHER_TEMP * math.log(p) for p in probabilities]


def cross_entropy(student: tuple[float, ...], teacher: tuple[float, ...]) -> float:
    """-sum_k q_k log p_k with p the student's and q the teacher's distribution."""
    return -sum(q * math.log(p) for p, q in zip(student, teacher))


def test_centred_cross_entropy_of_known_distributions() -> None:
    student = torch.tensor([student_logits(0.25, 0.75)])
    teacher = torch.tensor([teacher_logits(1 / 3, 2 / 3)])
    value = centred_cross_entropy(student, teacher, torch.zeros(1, 2), TEACHER_TEMP, STUDENT_TEMP)
    expected = -(1 / 3 * math.log(0.25) + 2 / 3 * math.log(0.75))  # 0.6539...
    assert value.item() == pytest.approx(expected, abs=1e-6)


def test_centre_is_subtracted_from_the_teacher_before_sharpening() -> None:
    student = torch.tensor([student_logits(0.25, 0.75)])
    # teacher logits (0.1, 0.2 + 0.04 ln 4) minus the centre (0.1, 0.2) give softmax (1/5, 4/5) at tau_t
    teacher = torch.tensor([[0.1, 0.2 + TEACHER_TEMP * math.log(4)]])
    centred = centred_cross_entropy(student, teacher, torch.tensor([[0.1, 0.2]]), TEACHER_TEMP, STUDENT_TEMP)
    assert centred.item() == pytest.approx(-(0.2 * math.log(0.25) + 0.8 * math.log(0.75)), abs=1e-6)
    uncentred = centred_cross_entropy(student, teacher, torch.zeros(1, 2), TEACHER_TEMP, STUDENT_TEMP)
    assert abs(uncentred.item() - centred.item()) > 0.05


def test_batch_is_averaged_and_teacher_gets_no_gradient() -> None:
    student = torch.tensor([student_logits(0.25, 0.75), student_logits(0.5, 0.5)], requires_grad=True)
    teacher = torch.tensor([teacher_logits(1 / 3, 2 / 3), teacher_logits(0.1, 0.9)], requires_grad=True)
    value = centred_cross_entropy(student, teacher, torch.zeros(1, 2), TEACHER_TEMP, STUDENT_TEMP)
    expected = (cross_entropy((0.25, 0.75), (1 / 3, 2 / 3)) + cross_entropy((0.5, 0.5), (0.1, 0.9))) / 2
    assert value.item() == pytest.approx(expected, abs=1e-6)
    value.backward()
    assert teacher.grad is None and student.grad is not None


def test_2d_loss_is_half_of_eq5() -> None:
    # view 1: student (0.2, 0.8), teacher (0.6, 0.4); view 2: student (0.7, 0.3), teacher (0.5, 0.5)
    loss = UniMiSSLoss(2, TEACHER_TEMP, STUDENT_TEMP)
    student = torch.tensor([student_logits(0.2, 0.8), student_logits(0.7, 0.3)])
    teacher = torch.tensor([teacher_logits(0.6, 0.4), teacher_logits(0.5, 0.5)])
    h_s1_t2 = -(0.5 * math.log(0.2) + 0.5 * math.log(0.8))
    h_s2_t1 = -(0.6 * math.log(0.7) + 0.4 * math.log(0.3))
    assert loss.loss_2d(student, teacher).item() == pytest.approx((h_s1_t2 + h_s2_t1) / 2, abs=1e-6)


def test_3d_loss_is_half_of_the_eight_terms_of_eq6() -> None:
    loss = UniMiSSLoss(2, TEACHER_TEMP, STUDENT_TEMP)
    # rows: volume view 1, volume view 2, slice mean view 1, slice mean view 2
    s1, s2, s1_, s2_ = (0.2, 0.8), (0.7, 0.3), (0.4, 0.6), (0.9, 0.1)
    t1, t2, t1_, t2_ = (0.6, 0.4), (0.5, 0.5), (0.3, 0.7), (0.15, 0.85)
    student = torch.tensor([student_logits(*p) for p in (s1, s2, s1_, s2_)])
    teacher = torch.tensor([teacher_logits(*p) for p in (t1, t2, t1_, t2_)])
    h = cross_entropy
    eq6 = (h(s1, t2) + h(s1, t2_) + h(s1_, t2) + h(s1_, t2_)
           + h(s2, t1) + h(s2, t1_) + h(s2_, t1) + h(s2_, t1_))
    assert loss.loss_3d(student, teacher).item() == pytest.approx(eq6 / 2, abs=1e-6)
    # a same-view pair would change the value: the loss does not contain H(s1, t1)
    assert abs(eq6 / 2 + h(s1, t1) / 2 - loss.loss_3d(student, teacher).item()) > 0.1


def test_centre_update_is_an_ema_of_batch_means() -> None:
    loss = UniMiSSLoss(2, centre_momentum=0.9)
    loss.update_centre(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert loss.centre[0].tolist() == pytest.approx([0.2, 0.3])  # 0.9 * 0 + 0.1 * (2, 3)
    loss.update_centre(torch.tensor([[0.0, 10.0]]))
    assert loss.centre[0].tolist() == pytest.approx([0.18, 1.27])  # 0.9 * (0.2, 0.3) + 0.1 * (0, 10)
    assert "centre" in loss.state_dict()


def test_one_view_is_refused() -> None:
    loss = UniMiSSLoss(2)
    with pytest.raises(ValueError, match="two views"):
        loss.cross_view([(1, torch.zeros(1, 2))], [(1, torch.zeros(1, 2))])
