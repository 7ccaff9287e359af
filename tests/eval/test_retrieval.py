"""Image-text retrieval: recall@k against a brute-force reference, hand-made cases with known answers, the
official script's text->image counting slip (not reproduced), caption-file layouts, and the whole pipeline."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from toklip.core.errors import ConfigError
from toklip.eval.retrieval import read_captions, retrieval, retrieval_metrics


def brute_force(img, txt, t2i, ks):
    """Sort every query's full score list and read off the position of the first correct item."""
    sims = txt @ img.T  # [T, I]
    t2i = list(t2i)
    n_img, n_txt = sims.shape[1], sims.shape[0]
    txt_rank = []
    for j in range(n_txt):
        order = sorted(range(n_img), key=lambda i: -float(sims[j, i]))
        txt_rank.append(order.index(t2i[j]))
    img_rank = []
    for i in range(n_img):
        order = sorted(range(n_txt), key=lambda j: -float(sims[j, i]))
        mine = [pos for pos, j in enumerate(order) if t2i[j] == i]
        img_rank.append(min(mine) if mine else n_txt)
    out = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = sum(r < k for r in img_rank) / n_img
        out[f"text_to_image_R@{k}"] = sum(r < k for r in txt_rank) / n_txt
    return out


def random_case(n_img=23, dim=6, seed=0):
    """Several captions per image (1..4, uneven), captions in shuffled order, weakly aligned features."""
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n_img, dim, generator=g), dim=-1)
    counts = torch.randint(1, 5, (n_img,), generator=g).tolist()
    t2i = [i for i, c in enumerate(counts) for _ in range(c)]
    perm = torch.randperm(len(t2i), generator=g).tolist()
    t2i = [t2i[p] for p in perm]
    txt = F.normalize(img[t2i] + 1.3 * torch.randn(len(t2i), dim, generator=g), dim=-1)
    return img, txt, t2i


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 1024])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_brute_force_for_any_chunk(chunk, seed):
    img, txt, t2i = random_case(seed=seed)
    assert len(img) % 2 and len(img) % 3 and len(img) % 5 and len(img) % 7  # images do not split evenly
    ks = (1, 2, 3, 5, 10)
    got = retrieval_metrics(img, txt, t2i, ks=ks, chunk=chunk)
    want = brute_force(img, txt, t2i, ks)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    # not saturated: the case actually tells rankings apart
    assert 0 < got["text_to_image_R@1"] < got["text_to_image_R@5"] < 1
    assert 0 < got["image_to_text_R@1"] < 1


def staircase():
    """12 images (identity features, so scores = the text features), one caption each.

    Caption t scores its own image 0.5 and the first a[t] other images 0.9, everything else 0.1. So caption t's
    image is at rank a[t]; image i's caption is beaten by every caption that put image i among its 0.9s."""
    a = [0, 0, 0, 0, 1, 3, 4, 6, 9, 10, 11, 11]
    n = len(a)
    scores = torch.full((n, n), 0.1)
    for t, k in enumerate(a):
        others = [i for i in range(n) if i != t][:k]
        scores[t, others] = 0.9
        scores[t, t] = 0.5
    return torch.eye(n), scores, list(range(n))


def test_hand_made_exact_recalls():
    img, txt, t2i = staircase()
    r = retrieval_metrics(img, txt, t2i, chunk=5)
    # text->image ranks are a = 0,0,0,0,1,3,4,6,9,10,11,11
    assert r["text_to_image_R@1"] == pytest.approx(4 / 12)
    assert r["text_to_image_R@5"] == pytest.approx(7 / 12)
    assert r["text_to_image_R@10"] == pytest.approx(9 / 12)
    # image->text ranks (captions with 0.9 in each column) are 8,7,7,6,5,5,4,4,3,3,2,1
    assert r["image_to_text_R@1"] == 0.0
    assert r["image_to_text_R@5"] == pytest.approx(6 / 12)
    assert r["image_to_text_R@10"] == 1.0
    assert r["text_to_image_mean"] == pytest.approx((4 + 7 + 9) / 36)
    assert r["image_to_text_mean"] == pytest.approx((0 + 6 + 12) / 36)
    assert r["mean"] == pytest.approx((r["text_to_image_mean"] + r["image_to_text_mean"]) / 2)


def test_image_query_uses_its_best_caption_and_counts_once():
    # image 0's captions rank 3rd and 1st -> rank 0; image 1's rank 2nd and 3rd -> rank 1
    img = torch.eye(3)
    txt = torch.tensor([
        [0.2, 0.1, 0.0],  # caption 0 of image 0 (image 0 sees: 0.2)
        [0.9, 0.0, 0.0],  # caption 1 of image 0 (0.9: best for image 0)
        [0.5, 0.4, 0.0],  # caption 0 of image 1 (0.4)
        [0.0, 0.3, 0.0],  # caption 1 of image 1 (0.3)
        [0.0, 0.8, 0.7],  # caption 0 of image 2 (0.7; beats image 1's captions too)
    ])
    r = retrieval_metrics(img, txt, [0, 0, 1, 1, 2], ks=(1, 2))
    assert r["image_to_text_R@1"] == pytest.approx(2 / 3)  # images 0 and 2 at rank 0, image 1 at rank 1
    assert r["image_to_text_R@2"] == 1.0  # 3 of 3 images, although 5 captions hit
    # perfect alignment with 5 captions per image: every recall is exactly 1, never above
    feats = torch.eye(4)
    perfect = retrieval_metrics(feats, feats.repeat_interleave(5, dim=0), [i for i in range(4) for _ in range(5)])
    assert all(v == 1.0 for k, v in perfect.items() if "R@" in k)


def official_slip_text_to_image(sims_t_by_i, t2i, k):
    """The official itm_eval's text->image recall: hits in the top 10, as a [hits, 2] nonzero() index, and
    BOTH columns (caption row and rank) compared with k."""
    top = sims_t_by_i.topk(10, dim=1).indices
    hits = (top == torch.tensor(t2i)[:, None]).nonzero()
    return float((hits < k).sum()) / len(t2i)


def test_the_official_text_to_image_slip_is_not_reproduced():
    img, txt, t2i = staircase()
    sims = txt @ img.T
    # the slip counts caption 0 once more (row index 0 < 1), and rows 0..4 once more at k=5
    assert official_slip_text_to_image(sims, t2i, 1) == pytest.approx(5 / 12)
    assert official_slip_text_to_image(sims, t2i, 5) == pytest.approx(12 / 12)
    r = retrieval_metrics(img, txt, t2i)
    assert r["text_to_image_R@1"] == pytest.approx(4 / 12)
    assert r["text_to_image_R@5"] == pytest.approx(7 / 12)
    # on a perfect tiny set the slip even exceeds 100%
    eye = torch.eye(3)
    assert official_slip_text_to_image(torch.cat([eye, torch.zeros(3, 9)], 1), [0, 1, 2], 1) > 1
    assert retrieval_metrics(eye, eye, [0, 1, 2])["text_to_image_R@1"] == 1.0


def test_bad_txt2img():
    img, txt, t2i = random_case(n_img=5)
    with pytest.raises(ConfigError, match="txt2img"):
        retrieval_metrics(img, txt, t2i[:-1])
    with pytest.raises(ConfigError, match="txt2img"):
        retrieval_metrics(img, txt, [5] + t2i[1:])


# ---------------------------------------------------------------------------------------------- caption files
def test_read_albef_list(tmp_path):
    p = tmp_path / "coco_karpathy_test.json"
    p.write_text(json.dumps([
        {"image": "val2014/a.jpg", "caption": ["one", "  ", "two"]},
        {"image": "val2014/b.jpg", "caption": "single caption"},
    ]))
    assert read_captions(p) == [("val2014/a.jpg", ["one", "two"]), ("val2014/b.jpg", ["single caption"])]


def test_read_official_json_lines(tmp_path):
    p = tmp_path / "coco_test.json"
    p.write_text('{"filename": "COCO_val2014_1.jpg", "caption": ["x", "y"]}\n'
                 '{"filename": "COCO_val2014_2.jpg", "caption": ["z"]}\n\n')
    assert read_captions(p) == [("COCO_val2014_1.jpg", ["x", "y"]), ("COCO_val2014_2.jpg", ["z"])]


def test_read_karpathy_with_split(tmp_path):
    p = tmp_path / "dataset_coco.json"
    p.write_text(json.dumps({"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "a.jpg", "split": "test", "sentences": [{"raw": "A a."}, {"raw": "B"}]},
        {"filepath": "val2014", "filename": "b.jpg", "split": "val", "sentences": [{"raw": "C"}]},
        {"filepath": "train2014", "filename": "c.jpg", "split": "restval", "sentences": [{"raw": "D"}]},
        {"filename": "d.jpg", "split": "test", "sentences": [{"raw": "E"}]},
    ]}))
    assert read_captions(p) == [("val2014/a.jpg", ["A a.", "B"]), ("d.jpg", ["E"])]
    assert read_captions(p, split="val") == [("val2014/b.jpg", ["C"])]
    assert len(read_captions(p, split="")) == 4
    with pytest.raises(ConfigError, match="no images in split 'train'"):
        read_captions(p, split="train")


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    ('{"a": 1}\n{oops\n', "line 2"),
    ('{"something": []}', "expected a list"),
    (json.dumps([{"image": "a.jpg"}]), "entry 0 needs 'image'"),
    (json.dumps([{"image": "a.jpg", "caption": ["ok"]}, ["not", "a", "dict"]]), "entry 1"),
    (json.dumps([{"image": "a.jpg", "caption": 3}]), "'caption' must be"),
    (json.dumps([{"image": "a.jpg", "caption": ["", " "]}]), "1 image\\(s\\) have no caption, e.g. a.jpg"),
    (json.dumps([]), "lists no images"),
    (json.dumps({"images": [{"split": "test", "sentences": []}]}), "images\\[0\\] needs 'filename'"),
])
def test_malformed_caption_files(tmp_path, content, match):
    p = tmp_path / "caps.json"
    p.write_text(content)
    with pytest.raises(ConfigError, match=match):
        read_captions(p)


def test_missing_caption_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_captions(tmp_path / "nope.json")


# ---------------------------------------------------------------------------------------------- end to end
def test_retrieval_end_to_end(model, coco_folder):
    captions, _ = coco_folder
    with pytest.warns(UserWarning, match="001_green.png"):
        res = retrieval(model, captions, batch_size=2, workers=0, progress=False)
    assert res["images"] == 4 and res["evaluated_images"] == 3 and res["skipped"] == 1 and res["captions"] == 9
    for k in (1, 5, 10):
        assert 0 <= res[f"image_to_text_R@{k}"] <= 1 and 0 <= res[f"text_to_image_R@{k}"] <= 1
    assert res["image_to_text_R@5"] == 1.0  # 3 images, 9 captions: an image's best caption is always in the top 5
    assert res["text_to_image_R@5"] == 1.0  # and every caption's image is among the only 3


def test_retrieval_perfect_when_the_model_knows(model, coco_folder, knows_colors):
    """Captions must stay paired with their images when an image in the middle is skipped."""
    captions, root = coco_folder
    knows_colors(model)
    with pytest.warns(UserWarning):
        res = retrieval(model, captions, root, batch_size=3, workers=0, progress=False)
    assert res["skipped"] == 1
    assert res["image_to_text_R@1"] == 1.0 and res["text_to_image_R@1"] == 1.0
