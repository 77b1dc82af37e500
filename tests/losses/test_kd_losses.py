"""KD loss maths: against naive per-token references, chunked == plain, sparse == dense at k = V,
the official preset == a literal copy of the README snippet, vocab slicing, bf16, and invariants."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from clinkd.losses import (
    KDLossConfig,
    align_teacher_vocab,
    combine_losses,
    distillation_loss,
    kd_divergence,
    sparse_kd_divergence,
    topk_logprobs,
)

B, L, V = 2, 9, 11
IGNORE = -100

DIVERGENCE_CASES = [
    ("forward", 0.5),
    ("reverse", 0.5),
    ("jsd", 0.3),
    ("jsd", 0.0),
    ("jsd", 1.0),
]


def make_batch(seed: int, vocab: int = V, teacher_vocab: int | None = None, dtype=torch.float32):
    """Random student/teacher logits and labels with prompt, padding and a final answer token."""
    g = torch.Generator().manual_seed(seed)
    student = (3 * torch.randn(B, L, vocab, generator=g)).to(dtype)
    teacher = (3 * torch.randn(B, L, teacher_vocab or vocab, generator=g)).to(dtype)
    labels = torch.randint(0, vocab, (B, L), generator=g)
    labels[0, :3] = IGNORE  # prompt
    labels[0, 6] = IGNORE  # a hole inside the answer
    labels[1, :5] = IGNORE  # prompt; row 1 keeps its last position labelled
    labels[0, -1] = IGNORE  # padding
    return student, teacher, labels


def scored_positions(labels: torch.Tensor, shift: bool):
    """(b, t) pairs whose logit is scored, written out without masks."""
    rows = []
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            target = t + 1 if shift else t
            if target < labels.shape[1] and labels[b, target] != IGNORE:
                rows.append((b, t))
    return rows


def naive_divergence(p_s: torch.Tensor, p_t: torch.Tensor, divergence: str, beta: float) -> torch.Tensor:
    def kl(p, q):
        return (p * (p.log() - q.log())).sum()

    if divergence == "forward" or (divergence == "jsd" and beta == 0):
        return kl(p_t, p_s)
    if divergence == "reverse" or (divergence == "jsd" and beta == 1):
        return kl(p_s, p_t)
    m = beta * p_t + (1 - beta) * p_s
    return beta * kl(p_t, m) + (1 - beta) * kl(p_s, m)


def naive_kd(student, teacher, labels, *, T, divergence, beta, reduction, shift, t_squared):
    """Reference KD term: loop over tokens, torch.softmax + log in float64."""
    total, n = torch.zeros((), dtype=torch.float64), 0
    vocab = student.shape[-1]
    for b, t in scored_positions(labels, shift):
        p_s = torch.softmax(student[b, t].double() / T, -1)
        p_t = torch.softmax(teacher[b, t, :vocab].double() / T, -1)
        total = total + naive_divergence(p_s, p_t, divergence, beta)
        n += 1
    scale = T**2 if t_squared else 1.0
    return scale * total / (n if reduction == "mean" and n else 1), n


# --- dense loss against the naive reference --------------------------------------------------------


@pytest.mark.parametrize(("divergence", "beta"), DIVERGENCE_CASES)
@pytest.mark.parametrize("temperature", [0.5, 2.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shift", [True, False])
def test_dense_kd_matches_naive_reference(divergence, beta, temperature, reduction, shift):
    student, teacher, labels = make_batch(1)
    cfg = KDLossConfig(
        temperature=temperature,
        divergence=divergence,
        jsd_beta=beta,
        reduction=reduction,
        shift_labels=shift,
        use_ce=False,
    )
    out = distillation_loss(student, labels, None, cfg, teacher_logits=teacher)
    expected, n = naive_kd(
        student, teacher, labels, T=temperature, divergence=divergence, beta=beta,
        reduction=reduction, shift=shift, t_squared=True,
    )
    assert out["n_tokens"] == n
    assert out["loss"].dtype == torch.float32
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6, abs=1e-6)


def test_shift_selects_positions_before_each_answer_token():
    _, _, labels = make_batch(1)
    # Row 0 answers at 3, 4, 5, 7; row 1 at 5..8. Shifted: the logit one step earlier.
    assert scored_positions(labels, True) == [(0, 2), (0, 3), (0, 4), (0, 6), (1, 4), (1, 5), (1, 6), (1, 7)]
    student, teacher, _ = make_batch(1)
    for shift in (True, False):
        cfg = KDLossConfig(shift_labels=shift)
        _, n = kd_divergence(student, teacher, labels, cfg)
        assert n == len(scored_positions(labels, shift))


def test_t_squared_scales_by_temperature_squared():
    student, teacher, labels = make_batch(2)
    cfg = KDLossConfig(temperature=3.0, t_squared=False)
    plain, _ = kd_divergence(student, teacher, labels, cfg)
    scaled, _ = kd_divergence(student, teacher, labels, replace(cfg, t_squared=True))
    assert scaled.item() == pytest.approx(9.0 * plain.item(), rel=1e-6)


def test_forward_kl_gradient_is_student_minus_teacher_probabilities():
    """d/dz_s [T² · mean_n KL(p_t‖p_s)] = T · (p_s − p_t) / N on scored rows, 0 elsewhere."""
    student, teacher, labels = make_batch(3)
    student.requires_grad_(True)
    T = 2.0
    cfg = KDLossConfig(temperature=T, use_ce=False)
    distillation_loss(student, labels, None, cfg, teacher_logits=teacher)["loss"].backward()
    rows = scored_positions(labels, True)
    expected = torch.zeros_like(student)
    for b, t in rows:
        expected[b, t] = T * (torch.softmax(student[b, t].detach() / T, -1) - torch.softmax(teacher[b, t] / T, -1))
    torch.testing.assert_close(student.grad, expected / len(rows), rtol=1e-5, atol=1e-7)


# --- chunked == plain ----------------------------------------------------------------------------


def loss_and_grad(student, labels, cfg, **teacher):
    student = student.detach().clone().requires_grad_(True)
    loss = distillation_loss(student, labels, None, cfg, **teacher)["loss"]
    loss.backward()
    return loss.detach(), student.grad


@pytest.mark.parametrize(("divergence", "beta"), [("forward", 0.5), ("reverse", 0.5), ("jsd", 0.4)])
@pytest.mark.parametrize("chunk_size", [1, 3, 5, 7, 8, 100])
def test_chunked_dense_equals_plain_in_value_and_gradient(divergence, beta, chunk_size):
    student, teacher, labels = make_batch(4)  # N = 8 shifted answer tokens
    plain = KDLossConfig(divergence=divergence, jsd_beta=beta, use_ce=False)
    chunked = replace(plain, chunk_size=chunk_size)
    loss_p, grad_p = loss_and_grad(student, labels, plain, teacher_logits=teacher)
    loss_c, grad_c = loss_and_grad(student, labels, chunked, teacher_logits=teacher)
    torch.testing.assert_close(loss_c, loss_p, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad_c, grad_p, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("tail", ["renormalize", "residual"])
@pytest.mark.parametrize("chunk_size", [1, 3, 5])
def test_chunked_sparse_equals_plain_in_value_and_gradient(tail, chunk_size):
    student, teacher, labels = make_batch(5)
    plain = KDLossConfig(sparse_tail=tail, use_ce=False)
    topk = topk_logprobs(teacher, labels, 4, plain)
    loss_p, grad_p = loss_and_grad(student, labels, plain, topk=topk)
    loss_c, grad_c = loss_and_grad(student, labels, replace(plain, chunk_size=chunk_size), topk=topk)
    torch.testing.assert_close(loss_c, loss_p, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad_c, grad_p, rtol=1e-6, atol=1e-7)


def fp32_bytes_saved_for_backward(student, labels, cfg, **teacher) -> int:
    """Bytes of distinct fp32 storages autograd keeps for the backward pass of the KD loss."""
    storages: dict[int, int] = {}

    def pack(tensor):
        if tensor.dtype == torch.float32:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        distillation_loss(student, labels, None, cfg, **teacher)
    return sum(storages.values())


# "renormalize" is left out: it gathers the k ids before upcasting, so it never holds [N, V] in fp32.
@pytest.mark.parametrize(
    ("divergence", "tail"),
    [("forward", None), ("reverse", None), ("jsd", None), ("forward", "residual"), ("jsd", "residual")],
)
def test_chunking_keeps_at_most_one_chunk_of_fp32_for_backward(divergence, tail):
    """bf16 rows in, fp32 maths inside: chunked, no [N, V] fp32 tensor survives until backward."""
    student, teacher, labels = make_batch(23, vocab=50)
    student = student.bfloat16().requires_grad_(True)
    cfg = KDLossConfig(divergence=divergence, sparse_tail=tail or "residual", use_ce=False)
    if tail is None:
        source = {"teacher_logits": teacher.bfloat16()}
    else:
        source = {"topk": topk_logprobs(teacher, labels, 5, cfg)}
    n_rows = len(scored_positions(labels, True))
    assert fp32_bytes_saved_for_backward(student, labels, cfg, **source) >= n_rows * 50 * 4
    assert fp32_bytes_saved_for_backward(student, labels, replace(cfg, chunk_size=3), **source) <= 3 * 50 * 4


def test_chunked_without_autograd_gives_the_same_value():
    student, teacher, labels = make_batch(6)
    cfg = KDLossConfig(chunk_size=3)
    with torch.no_grad():
        chunked, _ = kd_divergence(student, teacher, labels, cfg)
    plain, _ = kd_divergence(student, teacher, labels, replace(cfg, chunk_size=None))
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-6)


# --- sparse (cached top-k) teacher ---------------------------------------------------------------


def test_topk_logprobs_are_the_teachers_top_tempered_logprobs_on_answer_rows():
    student, teacher, labels = make_batch(7, teacher_vocab=V + 4)
    cfg = KDLossConfig(temperature=0.7, chunk_size=3)
    indices, logprobs = topk_logprobs(teacher, labels, 5, cfg, student_vocab_size=V)
    rows = scored_positions(labels, True)
    assert indices.shape == logprobs.shape == (len(rows), 5)
    assert indices.dtype == torch.long and logprobs.dtype == torch.float32
    for i, (b, t) in enumerate(rows):
        full = torch.log_softmax(teacher[b, t, :V] / 0.7, -1)
        expected_values, expected_ids = full.sort(descending=True)
        assert indices[i].tolist() == expected_ids[:5].tolist()
        torch.testing.assert_close(logprobs[i], expected_values[:5], rtol=0, atol=1e-6)


@pytest.mark.parametrize(("divergence", "beta"), DIVERGENCE_CASES)
@pytest.mark.parametrize("tail", ["renormalize", "residual"])
def test_sparse_with_k_equal_vocab_equals_dense(divergence, beta, tail):
    student, teacher, labels = make_batch(8, teacher_vocab=V + 2)
    cfg = KDLossConfig(temperature=1.5, divergence=divergence, jsd_beta=beta, sparse_tail=tail, use_ce=False)
    topk = topk_logprobs(teacher, labels, V, cfg, student_vocab_size=V)
    loss_s, grad_s = loss_and_grad(student, labels, cfg, topk=topk)
    loss_d, grad_d = loss_and_grad(student, labels, cfg, teacher_logits=teacher)
    torch.testing.assert_close(loss_s, loss_d, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad_s, grad_d, rtol=1e-5, atol=1e-7)


def naive_sparse_kd(student, teacher, labels, k, *, T, divergence, beta, tail):
    """Reference sparse KD (mean, T²): top-k ids of the teacher, then the tail rule, per token."""
    total, rows = torch.zeros((), dtype=torch.float64), scored_positions(labels, True)
    for b, t in rows:
        p_s = torch.softmax(student[b, t].double() / T, -1)
        p_t = torch.softmax(teacher[b, t].double() / T, -1)
        ids = p_t.argsort(descending=True)[:k]
        if tail == "renormalize":
            q_s, q_t = p_s[ids] / p_s[ids].sum(), p_t[ids] / p_t[ids].sum()
        else:
            q_s = torch.cat([p_s[ids], (1 - p_s[ids].sum()).reshape(1)])
            q_t = torch.cat([p_t[ids], (1 - p_t[ids].sum()).reshape(1)])
        total = total + naive_divergence(q_s, q_t, divergence, beta)
    return T**2 * total / len(rows)


@pytest.mark.parametrize(("divergence", "beta"), [("forward", 0.5), ("reverse", 0.5), ("jsd", 0.3)])
@pytest.mark.parametrize("tail", ["renormalize", "residual"])
@pytest.mark.parametrize("k", [1, 3])
def test_sparse_tail_rules_match_naive_reference(divergence, beta, tail, k):
    student, teacher, labels = make_batch(9)
    cfg = KDLossConfig(temperature=2.0, divergence=divergence, jsd_beta=beta, sparse_tail=tail, use_ce=False)
    loss = distillation_loss(student, labels, None, cfg, topk=topk_logprobs(teacher, labels, k, cfg))["loss"]
    expected = naive_sparse_kd(student, teacher, labels, k, T=2.0, divergence=divergence, beta=beta, tail=tail)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)


def test_renormalized_k1_is_zero_and_residual_k1_is_not():
    student, teacher, labels = make_batch(10)
    renorm = KDLossConfig(sparse_tail="renormalize")
    topk = topk_logprobs(teacher, labels, 1, renorm)
    assert sparse_kd_divergence(student, labels, *topk, renorm)[0].item() == pytest.approx(0.0, abs=1e-6)
    assert sparse_kd_divergence(student, labels, *topk, replace(renorm, sparse_tail="residual"))[0].item() > 0.1


def test_sparse_rejects_misaligned_or_out_of_vocab_cache():
    student, teacher, labels = make_batch(11)
    cfg = KDLossConfig()
    indices, logprobs = topk_logprobs(teacher, labels, 3, cfg)
    with pytest.raises(ValueError, match=r"N = 8 answer tokens; got indices \(7, 3\)"):
        sparse_kd_divergence(student, labels, indices[:-1], logprobs[:-1], cfg)
    with pytest.raises(ValueError, match=r"vocabulary \[0, 11\)"):
        sparse_kd_divergence(student, labels, indices + V, logprobs, cfg)
    with pytest.raises(ValueError, match=r"top-k size must be in \[1, 11\]"):
        topk_logprobs(teacher, labels, V + 1, cfg)


# --- the official snippet, literally -------------------------------------------------------------


def compute_fkl(logits, teacher_logits, target, padding_id, reduction="sum", temp=1.0):
    """The widely copied definition the README's call signature matches (copied verbatim)."""
    logits = logits / temp
    teacher_logits = teacher_logits / temp

    log_probs = torch.log_softmax(logits, -1, dtype=torch.float32)
    teacher_probs = torch.softmax(teacher_logits, -1, dtype=torch.float32)
    teacher_log_probs = torch.log_softmax(teacher_logits, -1, dtype=torch.float32)
    kl = teacher_probs * (teacher_log_probs - log_probs)
    kl = kl.sum(-1)
    if reduction == "sum":
        pad_mask = target.eq(padding_id)
        kl = kl.masked_fill_(pad_mask, 0.0)
        kl = kl.sum()
    return kl


def official_readme_loss(logits, teacher_logits, labels, loss, if_use_entropy):
    """The README's ``PseudoKDTrainer.compute_loss`` body after the two forwards."""
    if logits.shape[-1] != teacher_logits.shape[-1]:
        teacher_logits = teacher_logits[:, :, : logits.shape[-1]]
    kl = compute_fkl(logits, teacher_logits, labels, padding_id=-100, temp=0.5)
    return (0.5 * kl + loss) / 1.5 if if_use_entropy else kl


@pytest.mark.parametrize("use_ce", [False, True])
@pytest.mark.parametrize("seed", [12, 13])
def test_official_preset_reproduces_the_readme_snippet(use_ce, seed):
    student, teacher, labels = make_batch(seed, teacher_vocab=V + 3)
    ce = torch.tensor(2.345)
    expected = official_readme_loss(student, teacher, labels, ce, use_ce)
    out = distillation_loss(student, labels, ce, KDLossConfig.clinkd_official(use_ce=use_ce), teacher_logits=teacher)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["teacher_vocab_sliced"] is True
    chunked = distillation_loss(
        student, labels, ce, KDLossConfig.clinkd_official(use_ce=use_ce, chunk_size=2), teacher_logits=teacher
    )
    assert chunked["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_presets_state_their_choices():
    official = KDLossConfig.clinkd_official()
    assert (official.temperature, official.t_squared, official.reduction) == (0.5, False, "sum")
    assert (official.shift_labels, official.divergence, official.alpha) == (False, "forward", 0.5)
    assert official.use_ce is False and KDLossConfig.clinkd_official(use_ce=True).use_ce is True
    paper = KDLossConfig.paper()
    assert (paper.t_squared, paper.reduction, paper.shift_labels, paper.use_ce) == (True, "mean", True, True)
    assert (paper.divergence, paper.alpha) == ("forward", 0.5)
    assert KDLossConfig.paper(temperature=4.0).temperature == 4.0


# --- vocabulary alignment ------------------------------------------------------------------------


def test_wider_teacher_is_sliced_to_the_student_vocabulary():
    student, teacher, labels = make_batch(14, teacher_vocab=V + 5)
    cfg = KDLossConfig()
    wide = distillation_loss(student, labels, torch.tensor(1.0), cfg, teacher_logits=teacher)
    same = distillation_loss(student, labels, torch.tensor(1.0), cfg, teacher_logits=teacher[..., :V].clone())
    assert wide["teacher_vocab_sliced"] is True and same["teacher_vocab_sliced"] is False
    assert wide["loss"].item() == same["loss"].item()
    assert align_teacher_vocab(teacher, V)[0].shape[-1] == V


def test_narrower_teacher_is_an_error_naming_both_sizes():
    student, teacher, labels = make_batch(15, teacher_vocab=V - 1)
    with pytest.raises(ValueError, match=r"teacher vocabulary \(10\) is narrower than the student's \(11\)"):
        distillation_loss(student, labels, None, KDLossConfig(use_ce=False), teacher_logits=teacher)
    with pytest.raises(ValueError, match=r"\(10\).*\(11\)"):
        topk_logprobs(teacher, labels, 2, KDLossConfig(), student_vocab_size=V)


def test_shape_errors_name_the_shapes():
    student, teacher, labels = make_batch(16)
    with pytest.raises(ValueError, match=r"teacher_logits must be \[B, L, V\].*\(2, 8, 11\)"):
        kd_divergence(student, teacher[:, :-1], labels, KDLossConfig())
    with pytest.raises(ValueError, match=r"student_logits must be \[B, L, V\]"):
        kd_divergence(student, teacher, labels[:, :-1], KDLossConfig())


# --- dtypes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_bf16_inputs_give_the_fp32_answer(chunk_size):
    student, teacher, labels = make_batch(17)
    cfg = KDLossConfig(chunk_size=chunk_size, use_ce=False)
    student_bf16 = student.bfloat16().requires_grad_(True)
    out = distillation_loss(student_bf16, labels, None, cfg, teacher_logits=teacher.bfloat16())
    out["loss"].backward()
    assert out["loss"].dtype == torch.float32 and student_bf16.grad.dtype == torch.bfloat16
    # Exactly the fp32 computation on the bf16-rounded values ...
    upcast = distillation_loss(
        student_bf16.detach().float(), labels, None, cfg, teacher_logits=teacher.bfloat16().float()
    )
    assert out["loss"].item() == pytest.approx(upcast["loss"].item(), rel=1e-6)
    # ... which differs from the fp32 originals only by bf16 input rounding (2^-9 relative per logit).
    original = distillation_loss(student, labels, None, cfg, teacher_logits=teacher)
    assert out["loss"].item() == pytest.approx(original["loss"].item(), rel=5e-3)


# --- invariants and the combination --------------------------------------------------------------


@pytest.mark.parametrize(("divergence", "beta"), DIVERGENCE_CASES)
def test_identical_student_and_teacher_give_zero(divergence, beta):
    student, _, labels = make_batch(18)
    cfg = KDLossConfig(divergence=divergence, jsd_beta=beta, reduction="sum")
    total, _ = kd_divergence(student, student.clone(), labels, cfg)
    assert abs(total.item()) < 1e-5
    for tail in ("renormalize", "residual"):
        sparse_cfg = replace(cfg, sparse_tail=tail)
        topk = topk_logprobs(student, labels, 4, sparse_cfg)
        assert abs(sparse_kd_divergence(student, labels, *topk, sparse_cfg)[0].item()) < 1e-5


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("divergence", "beta"), DIVERGENCE_CASES)
def test_kd_is_non_negative_per_token(seed, divergence, beta):
    student, teacher, labels = make_batch(100 + seed)
    labels[:] = 1  # every position scored
    cfg = KDLossConfig(divergence=divergence, jsd_beta=beta, temperature=0.5 + seed, shift_labels=False)
    for b in range(B):
        for t in range(L):
            one = torch.full_like(labels, IGNORE)
            one[b, t] = 1
            assert kd_divergence(student, teacher, one, cfg)[0].item() >= 0


def test_jsd_lies_between_zero_and_log2_and_is_symmetric_at_half():
    student, teacher, labels = make_batch(19)
    cfg = KDLossConfig(divergence="jsd", jsd_beta=0.5, t_squared=False)
    forward, n = kd_divergence(student, teacher, labels, cfg)
    backward, _ = kd_divergence(teacher, student, labels, cfg)
    assert 0 < forward.item() / n < math.log(2)
    assert forward.item() == pytest.approx(backward.item(), rel=1e-6)


def test_combination_is_the_papers_weighted_mean():
    kd_total, ce = torch.tensor(6.0), torch.tensor(1.5)
    out = combine_losses(kd_total, 4, ce, KDLossConfig(alpha=0.5))
    assert out["kd"].item() == pytest.approx(1.5)
    assert out["loss"].item() == pytest.approx((1.5 + 0.5 * 1.5) / 1.5)
    pure = combine_losses(kd_total, 4, ce, KDLossConfig(use_ce=False, reduction="sum"))
    assert pure["loss"].item() == 6.0 and pure["ce"] is ce
    with pytest.raises(ValueError, match="use_ce is True but ce_loss is None"):
        combine_losses(kd_total, 4, None, KDLossConfig())


def test_no_answer_tokens_give_zero_with_a_graph():
    student, teacher, labels = make_batch(20)
    labels[:] = IGNORE
    student.requires_grad_(True)
    out = distillation_loss(student, labels, None, KDLossConfig(use_ce=False, chunk_size=2), teacher_logits=teacher)
    assert out["n_tokens"] == 0 and out["loss"].item() == 0.0
    out["loss"].backward()
    assert torch.count_nonzero(student.grad) == 0


def test_exactly_one_teacher_source():
    student, teacher, labels = make_batch(21)
    cfg = KDLossConfig(use_ce=False)
    with pytest.raises(ValueError, match="exactly one of teacher_logits and topk"):
        distillation_loss(student, labels, None, cfg)
    with pytest.raises(ValueError, match="exactly one of teacher_logits and topk"):
        topk = topk_logprobs(teacher, labels, 2, cfg)
        distillation_loss(student, labels, None, cfg, teacher_logits=teacher, topk=topk)


def test_teacher_receives_no_gradient():
    student, teacher, labels = make_batch(22)
    teacher.requires_grad_(True)
    distillation_loss(student.requires_grad_(True), labels, None, KDLossConfig(use_ce=False), teacher_logits=teacher)[
        "loss"
    ].backward()
    assert teacher.grad is None and student.grad is not None


@pytest.mark.parametrize(
    ("field", "value"),
    [("alpha", -0.1), ("temperature", 0.0), ("jsd_beta", 1.5), ("chunk_size", 0), ("divergence", "tvd"),
     ("reduction", "batchmean"), ("sparse_tail", "uniform")],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"KDLossConfig\n{field}\n"):
        KDLossConfig(**{field: value})
