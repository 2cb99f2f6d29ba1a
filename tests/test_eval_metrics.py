"""Retrieval/classification metrics, template reductions and re-scoring on hand-made matrices."""

import pytest
import torch
import torch.nn.functional as F

from viclip.eval.dual_softmax import dual_softmax
from viclip.eval.metrics import ranks_from_mask, retrieval_metrics, topk_accuracy
from viclip.eval.templates import KINETICS_TEMPLATES, class_prototypes, class_scores, expand


def test_ranks_count_ties_against_the_model():
    scores = torch.tensor([[0.9, 0.5, 0.1],
                           [0.5, 0.5, 0.5],   # all tied: worst rank, whatever the order
                           [0.2, 0.7, 0.7]])  # tie with one competitor
    pos = torch.eye(3, dtype=torch.bool)
    assert ranks_from_mask(scores, pos).tolist() == [1, 3, 2]
    # The same tie in another column order gives the same rank (no dependence on sort stability).
    assert ranks_from_mask(scores[:, [2, 1, 0]], pos[:, [2, 1, 0]]).tolist() == [1, 3, 2]


def test_retrieval_several_captions_per_video():
    # 2 videos, 4 captions: captions 0,1 -> video 0; captions 2,3 -> video 1.
    text_to_video = torch.tensor([0, 0, 1, 1])
    v2t = torch.tensor([[0.1, 0.8, 0.9, 0.2],    # best correct caption (1) is 2nd behind caption 2
                        [0.3, 0.2, 0.1, 0.95]])  # best correct caption (3) is 1st
    m = retrieval_metrics(v2t.T, v2t, text_to_video)
    assert m["v2t_r1"] == 50.0 and m["v2t_r5"] == 100.0
    assert m["v2t_medr"] == 1.5 and m["v2t_meanr"] == 1.5
    # Text-to-video per caption: c0 -> [0.1, 0.3] rank 2, c1 rank 1, c2 -> [0.9, 0.1] rank 2, c3 rank 1.
    assert m["t2v_r1"] == 50.0 and m["t2v_medr"] == 1.5 and m["t2v_meanr"] == 1.5


def test_retrieval_other_correct_captions_are_not_competitors():
    text_to_video = torch.tensor([0, 0, 1])
    v2t = torch.tensor([[0.7, 0.7, 0.1], [0.0, 0.0, 1.0]])
    m = retrieval_metrics(v2t.T, v2t, text_to_video)
    assert m["v2t_r1"] == 100.0


def test_paragraph_mode_is_one_to_one():
    # Paragraph mode joins a video's captions into one text: the diagonal is the answer.
    sims = torch.tensor([[0.9, 0.2, 0.3], [0.4, 0.2, 0.5], [0.1, 0.2, 0.8]])
    m = retrieval_metrics(sims.T, sims, torch.arange(3))
    # videos: v0 rank 1; v1 -> texts [0.4, 0.2, 0.5] rank 3; v2 rank 1
    assert m["v2t_r1"] == pytest.approx(200 / 3) and m["v2t_meanr"] == pytest.approx(5 / 3)
    # texts: t0 -> videos [0.9, 0.4, 0.1] rank 1; t1 -> [0.2, 0.2, 0.2] rank 3 (all tied); t2 rank 1
    assert m["t2v_meanr"] == pytest.approx(5 / 3) and m["t2v_medr"] == 1.0 and m["t2v_r5"] == 100.0


def test_retrieval_rejects_a_video_without_caption():
    with pytest.raises(ValueError, match="no positive"):
        retrieval_metrics(torch.zeros(2, 3), torch.zeros(3, 2), torch.tensor([0, 1]))


def test_topk_accuracy_and_avg():
    scores = torch.zeros(3, 6)
    scores[0, 2] = 1.0                      # correct at rank 1
    scores[1] = torch.arange(6.0)           # label 0 scored lowest: rank 6
    scores[2] = torch.tensor([5.0, 4, 3, 2, 1, 0])  # label 4 at rank 5
    m = topk_accuracy(scores, torch.tensor([2, 0, 4]))
    assert m["top1"] == pytest.approx(100 / 3) and m["top5"] == pytest.approx(200 / 3)
    assert m["avg"] == pytest.approx(50.0)


def test_template_reductions_differ_as_documented():
    # Class 0: two prompts pointing the same way; class 1: two prompts 90 degrees apart.
    e = torch.eye(3)
    text = torch.stack([e[0], e[0], e[1], e[2]]) * 7.0  # unnormalised on purpose
    video = torch.tensor([[1.0, 1.0, 1.0]])
    sim = class_scores(video, class_prototypes(text, 2, "sim"))
    embed = class_scores(video, class_prototypes(text, 2, "embed"))
    v = F.normalize(video, dim=-1)
    t = F.normalize(text, dim=-1)
    explicit = (v @ t.T).view(1, 2, 2).mean(-1)  # the official rule, written out
    torch.testing.assert_close(sim, explicit)
    torch.testing.assert_close(embed, v @ F.normalize(t.view(2, 2, 3).mean(1), dim=-1).T)
    # Same video, opposite decisions: sim ties the classes (1/sqrt3 each), embed prefers class 1.
    assert sim[0, 0] == pytest.approx(sim[0, 1].item())
    assert embed[0, 1] > embed[0, 0]


def test_expand_is_class_major_with_official_templates():
    prompts = expand(["abseiling", "archery"], KINETICS_TEMPLATES)
    assert len(KINETICS_TEMPLATES) == 16 and len(prompts) == 32
    assert prompts[0] == "a photo of action abseiling" and prompts[16] == "a photo of action archery"
    assert prompts[27] == "Can you recognize the action of archery?"


def test_dual_softmax_demotes_a_hub():
    # Gallery item 1 is close to every query (a hub); without re-scoring it wins query 0.
    logits = torch.tensor([[5.0, 5.2, 0.0], [0.0, 6.0, 1.0], [0.0, 6.0, 5.0]])
    assert logits[0].argmax() == 1
    rescored = dual_softmax(logits)
    assert rescored[0].argmax() == 0
    torch.testing.assert_close(rescored, logits * logits.softmax(dim=0))
